"""The paper's traversal-style input transforms: every task becomes token sequences the pretrained
model reads left to right, framed by the tokenizer's start, delimiter and extract tokens.

    classification   [start] text [extract]
    entailment       [start] premise [delim] hypothesis [extract]
    similarity       [start] a [delim] b [extract]  and  [start] b [delim] a [extract]
    multiple choice  [start] context [delim] choice_i [extract], one sequence per choice

Too long an input is cut longest part first, so the extract token always stays: a first part
(text, premise, context) loses tokens from its start, keeping what sits next to the second part
(e.g. RACE's question), and a second part loses tokens from its end.

An example's sequences go into one row of a batch, their common beginning once (a multiple-choice
context is read once, not once per choice), then the rest of each; attention within the row
(`training.model.segment_bias`) gives every token the state it has in its own sequence, and the
LM loss counts a shared token once per sequence that holds it, so scores and losses are those of
the sequences padded one by one. Rows are padded on the right; attention is causal, so padding
never changes the states before it, and the LM loss ignores it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from eval.tasks import Example, Kind
from tokenizer.bpe import BPETokenizer


class Batch(NamedTuple):
    tokens: torch.Tensor  # (B, T) ids: one row per example, padded
    positions: torch.Tensor  # (B, T) each token's position in its own sequence
    segments: torch.Tensor | None  # (B, T) 0 shared, s + 1 the rest of sequence s; None when S = 1
    extract: torch.Tensor  # (B, S) where in the row each sequence's extract token is
    lm_targets: torch.Tensor  # (B, T) next token, -1 where there is none (padding, extract tokens)
    lm_weights: torch.Tensor  # (B, T) sequences that hold the (token, next token) pair: S when shared
    labels: torch.Tensor  # (B,) class or choice index (long), or score (float)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t if t is None else t.to(device) for t in self))

    def inputs(self, lm: bool = False) -> tuple[torch.Tensor | None, ...]:
        """The task model's arguments; with `lm`, the auxiliary LM loss's targets too."""
        head = (self.tokens, self.positions, self.segments, self.extract)
        return (*head, self.lm_targets, self.lm_weights) if lm else head


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
        # One cut of the context, against the longest answer: every choice reads the same context
        # (so a row holds it once), and only an answer longer than what is left is cut.
        answers = [tok.encode(choice) for choice in example.choices]
        context, _ = _fit(text, max(answers, key=len), max_len - 3)
        return [[sp.start, *context, sp.delimiter, *answer[: max_len - 3 - len(context)], sp.extract]
                for answer in answers]  # fmt: skip
    assert example.pair is not None, f"{kind} needs a pair"
    first, second = _fit(text, tok.encode(example.pair), max_len - 3)
    seqs = [[sp.start, *first, sp.delimiter, *second, sp.extract]]
    if kind == "similarity":  # no natural order: both, summed by the head
        seqs.append([sp.start, *second, sp.delimiter, *first, sp.extract])
    return seqs


def shared(seqs: list[list[int]]) -> int:
    """How many first tokens the sequences share, short of the last one they share: each shared
    token then has one next token, the same in every sequence. All but the extract token for one."""
    common = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column):
            break
        common += 1
    return max(common - 1, 0)


class Row(NamedTuple):
    """One example's row, built once and padded into every batch that holds it."""

    fields: np.ndarray  # (5, L) int32: tokens, positions, segments, next tokens, weights
    extract: np.ndarray  # (S,) where in the row each sequence's extract token is


def row(seqs: list[list[int]]) -> Row:
    """An example's sequences as one row: their shared beginning, then the rest of each."""
    n = shared(seqs)
    tokens, positions, segments = seqs[0][:n], list(range(n)), [0] * n
    targets, weights, extract = seqs[0][1 : n + 1], [len(seqs)] * n, []
    for s, seq in enumerate(seqs):
        rest = seq[n:]
        tokens += rest
        positions += range(n, len(seq))
        segments += [s + 1] * len(rest)
        targets += [*rest[1:], -1]  # the extract token has no next token
        weights += [1] * (len(rest) - 1) + [0]
        extract.append(len(tokens) - 1)
    return Row(np.array([tokens, positions, segments, targets, weights], dtype=np.int32), np.array(extract))


def sequences(r: Row) -> list[list[int]]:
    """The sequences a row holds, each its shared beginning and its own segment: `row`'s inverse."""
    tokens, segments = r.fields[0], r.fields[2]
    return [tokens[(segments == 0) | (segments == s + 1)].tolist() for s in range(len(r.extract))]


def collate(encoded: list[list[list[int]]], labels: list[float], pad: int, regression: bool) -> Batch:
    """One row per example (the sequences' shared beginning, then the rest of each), padded to the longest."""
    return collate_rows([row(seqs) for seqs in encoded], labels, pad, regression)


def collate_rows(rows: list[Row], labels: list[float], pad: int, regression: bool) -> Batch:
    """`collate` for rows already built."""
    n_seq = len(rows[0].extract)
    assert all(len(r.extract) == n_seq for r in rows), "every example of a task has the same number of sequences"
    fields = np.empty((5, len(rows), max(r.fields.shape[1] for r in rows)), dtype=np.int32)
    fields[:] = np.array([pad, 0, -1, -1, 0], dtype=np.int32)[:, None, None]  # each field's padding
    for b, r in enumerate(rows):
        fields[:, b, : r.fields.shape[1]] = r.fields
    tokens, positions, segments, targets, weights = torch.from_numpy(fields).long()
    extract = torch.from_numpy(np.stack([r.extract for r in rows])).long()
    dtype = torch.float if regression else torch.long
    return Batch(tokens, positions, segments if n_seq > 1 else None, extract, targets, weights.float(),
                 torch.tensor(labels, dtype=dtype))  # fmt: skip
