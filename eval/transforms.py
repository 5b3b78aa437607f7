"""The paper's traversal-style input transforms: every task becomes token sequences the pretrained
model reads left to right, framed by the tokenizer's start, delimiter and extract tokens.

    classification   [start] text [extract]
    entailment       [start] premise [delim] hypothesis [extract]
    similarity       [start] a [delim] b [extract]  and  [start] b [delim] a [extract]
    multiple choice  [start] context [delim] choice_i [extract], one sequence per choice

Too long an input is cut longest part first, so the extract token always stays: a first part
(text, premise, context) loses tokens from its start, keeping what sits next to the second part
(e.g. RACE's question), and a second part loses tokens from its end. Batches are padded on the
right; attention is causal, so padding never changes the states before it, and the LM loss
ignores it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from eval.tasks import Example, Kind
from tokenizer.bpe import BPETokenizer


class Batch(NamedTuple):
    tokens: torch.Tensor  # (B, S, T) ids, S sequences per example, padded
    extract: torch.Tensor  # (B, S) position of each sequence's extract token
    lm_targets: torch.Tensor  # (B, S, T) next token, -1 where there is none (padding, the last token)
    labels: torch.Tensor  # (B,) class or choice index (long), or score (float)


def _fit(first: list[int], second: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer part down to the other's length, then both evenly, until they fit `budget`."""
    a, b = len(first), len(second)
    excess = a + b - budget
    if excess > 0:
        gap = min(excess, abs(a - b))
        a, b = (a - gap, b) if a >= b else (a, b - gap)
        rest = excess - gap
        a, b = a - (rest + 1) // 2, b - rest // 2
    return first[len(first) - a :], second[:b]


def encode(example: Example, kind: Kind, tok: BPETokenizer, max_len: int) -> list[list[int]]:
    """The token sequences of one example (1, 2 for similarity, or one per choice)."""
    sp = tok.specials
    text = tok.encode(example.text)
    if kind == "classification":
        (text, _) = _fit(text, [], max_len - 2)
        return [[sp.start, *text, sp.extract]]
    if kind == "multiple_choice":
        seqs = []
        for choice in example.choices:
            context, answer = _fit(text, tok.encode(choice), max_len - 3)
            seqs.append([sp.start, *context, sp.delimiter, *answer, sp.extract])
        return seqs
    assert example.pair is not None, f"{kind} needs a pair"
    first, second = _fit(text, tok.encode(example.pair), max_len - 3)
    seqs = [[sp.start, *first, sp.delimiter, *second, sp.extract]]
    if kind == "similarity":  # no natural order: both, summed by the head
        seqs.append([sp.start, *second, sp.delimiter, *first, sp.extract])
    return seqs


def collate(encoded: list[list[list[int]]], labels: list[float], pad: int, regression: bool) -> Batch:
    """Pad a list of examples' sequences into one batch."""
    n_seq = max(len(seqs) for seqs in encoded)
    length = max(len(s) for seqs in encoded for s in seqs)
    tokens = torch.full((len(encoded), n_seq, length), pad, dtype=torch.long)
    targets = torch.full((len(encoded), n_seq, length), -1, dtype=torch.long)
    extract = torch.zeros((len(encoded), n_seq), dtype=torch.long)
    for b, seqs in enumerate(encoded):
        assert len(seqs) == n_seq, "every example of a task has the same number of sequences"
        for s, seq in enumerate(seqs):
            tokens[b, s, : len(seq)] = torch.tensor(seq)
            targets[b, s, : len(seq) - 1] = torch.tensor(seq[1:])
            extract[b, s] = len(seq) - 1
    dtype = torch.float if regression else torch.long
    return Batch(tokens, extract, targets, torch.tensor(labels, dtype=dtype))
