"""How well a tokenizer fits a corpus: tokens per word, bytes per token, unknown-token rate."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from tokenizer.bpe import BPETokenizer

BATCH = 512


def corpus_stats(tok: BPETokenizer, texts: Iterable[str], max_bytes: int | None = None) -> dict[str, float | int]:
    """Encode `texts` (stopping after `max_bytes` of UTF-8 when given) and summarise.

    Words are whitespace-separated runs of the raw text, so the figure compares across styles.
    """
    docs = words = size = tokens = unknown = 0
    it = iter(texts)
    while batch := list(islice(it, BATCH)):
        for text, ids in zip(batch, tok.encode_batch(batch)):
            docs += 1
            words += len(text.split())
            size += len(text.encode())
            tokens += len(ids)
            if tok.unk_id is not None:
                unknown += ids.count(tok.unk_id)
        if max_bytes is not None and size >= max_bytes:
            break
    return {
        "documents": docs,
        "words": words,
        "bytes": size,
        "tokens": tokens,
        "unknown": unknown,
        "tokens_per_word": tokens / words if words else 0.0,
        "bytes_per_token": size / tokens if tokens else 0.0,
        "unknown_rate": unknown / tokens if tokens else 0.0,
    }
