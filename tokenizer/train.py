"""Train a BPE tokenizer on a stream of texts, deterministically, with exactly the configured merges.

The `tokenizers` trainer numbers the characters it first meets at the end of a word in hash-map
order, and breaks ties between equally frequent pairs by id, so two runs on the same text can
differ. We fix every base symbol before training: one streaming pass counts the characters (as
normalised), the most frequent `max_alphabet` form the alphabet (ties by code point), and the
trainer gets them, and their `</w>` forms, with fixed ids. The second pass trains; memory is the
trainer's word counts, not the corpus.

The trainer stops at a vocabulary size, and a merge can recreate an existing token, so it may
learn a few merges more than asked: BPE is greedy, so the first `merges` of them are exactly what a
shorter run learns, and we keep those.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable

from tokenizers import pre_tokenizers, trainers

from tokenizer.bpe import SUFFIX, UNK, BPETokenizer, TokenizerError, empty
from tokenizer.config import TokenizerConfig

log = logging.getLogger(__name__)

BATCH = 1000


def train(cfg: TokenizerConfig, texts: Callable[[], Iterable[str]]) -> BPETokenizer:
    """Train on `texts()` (called twice: one pass for the alphabet, one for the merges)."""
    base = _base_vocab(cfg, texts())
    tok = empty(cfg.style)
    alphabet = [s for s in base if len(s) == 1]
    trainer = trainers.BpeTrainer(
        vocab_size=len(base) + cfg.merges,
        min_frequency=cfg.min_frequency,
        special_tokens=[s for s in base if len(s) != 1],  # <unk> and the `</w>` forms, ids fixed in this order
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
        **({"end_of_word_suffix": SUFFIX} if cfg.style == "gpt1" else {}),
    )
    log.info("tokenizer: learning %d merges over %d base symbols", cfg.merges, len(base))
    tok.train_from_iterator(_batches(texts()), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) for m in model["merges"]]
    if len(merges) < cfg.merges:
        raise TokenizerError(
            f"the corpus supports only {len(merges):,} merges of pairs seen at least {cfg.min_frequency} times; "
            f"tokenizer.merges is {cfg.merges:,}: lower it, lower tokenizer.min_frequency, or add text"
        )
    return BPETokenizer.from_bpe(cfg.style, _vocab(base, merges[: cfg.merges]), merges[: cfg.merges])


def _base_vocab(cfg: TokenizerConfig, texts: Iterable[str]) -> list[str]:
    """The symbols every word is spelled with before any merge, in id order."""
    if cfg.style == "bytelevel":
        for _ in texts:  # the byte alphabet is fixed, but an empty corpus is still an error
            break
        else:
            raise TokenizerError("the training corpus is empty")
        return sorted(pre_tokenizers.ByteLevel.alphabet())
    raw: Counter[str] = Counter()
    for text in texts:
        raw.update(text)
    # Normalising each distinct character rather than every text is 3x faster, and exact for NFC
    # text (the cleaning stage's ftfy gives NFC). Alone, a newline is stripped as outer whitespace.
    normalizer, counts = empty("gpt1").normalizer, Counter()
    for char, n in raw.items():
        for c in normalizer.normalize_str(char) or char:
            counts[c] += n
    chars = [c for c in counts if c == "\n" or not c.isspace()]
    if not chars:
        raise TokenizerError("the training corpus is empty")
    alphabet = sorted(sorted(chars, key=lambda c: (-counts[c], c))[: cfg.max_alphabet])
    if len(chars) > cfg.max_alphabet:
        log.info("tokenizer: %d rare characters become %s", len(chars) - cfg.max_alphabet, UNK)
    return [UNK, *(c + SUFFIX for c in alphabet), *alphabet]


def _vocab(base: list[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Base symbols, then each merge's new token in merge order."""
    vocab = {s: i for i, s in enumerate(base)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab


def _batches(texts: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
