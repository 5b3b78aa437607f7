"""The tokenizer stage: train BPE on the data stage's train split, measure it on the val split."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.documents import doc_files, read_texts
from tokenizer.bpe import BPETokenizer, TokenizerError
from tokenizer.config import TokenizerConfig
from tokenizer.stats import corpus_stats
from tokenizer.train import train

log = logging.getLogger(__name__)

STATS_MAX_BYTES = 100_000_000  # enough for stable ratios; keeps the stage's tail short on big corpora


def run_tokenizer(cfg: TokenizerConfig, data_dir: Path, out: Path) -> dict[str, Any]:
    """Train (or take `cfg.path`'s tokenizer) into `out`; returns the manifest summary (tokenizer
    ids, timings, val-split stats)."""
    train_files, val_files = doc_files(data_dir / "train"), doc_files(data_dir / "val")
    if not train_files:
        raise TokenizerError(f"{data_dir / 'train'}: no training documents to learn a tokenizer from")
    started = time.perf_counter()
    if cfg.path:
        tok = BPETokenizer.load(cfg.path)
        log.info("tokenizer: using %s (%s style, %d merges); style and merges settings do not apply",
                 cfg.path, tok.style, tok.merges)  # fmt: skip
    else:
        passes = iter(("tokenizer: alphabet", "tokenizer: merges"))
        keep = sample_fraction(train_files, cfg.max_bytes)
        if keep < 1.0:
            log.info("tokenizer: training on %.2f%% of the train split's documents (max_bytes %s)", 100 * keep,
                     f"{cfg.max_bytes:,}")  # fmt: skip
        tok = train(cfg, lambda: sampled(read_texts(train_files, desc=next(passes)), keep))
    seconds = time.perf_counter() - started
    tok.save(out)
    stats = corpus_stats(tok, read_texts(val_files), max_bytes=STATS_MAX_BYTES) if val_files else None
    log.info("tokenizer: %d merges, vocab %d, %.1fs", tok.merges, tok.vocab_size, seconds)
    summary = {"tokenizer": tok.meta, "train_seconds": round(seconds, 3), "stats": {"val": stats}}
    if not cfg.path:
        summary["sample"] = {"fraction": round(keep, 6), "max_bytes": cfg.max_bytes}
    return summary


def sample_fraction(files: list[Path], max_bytes: int | None) -> float:
    """The share of documents to keep so that about `max_bytes` of text remain, from the text
    column's uncompressed size in each file's Parquet metadata (nothing is read)."""
    if max_bytes is None:
        return 1.0
    total = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        text = meta.schema.to_arrow_schema().get_field_index("text")
        total += sum(meta.row_group(g).column(text).total_uncompressed_size for g in range(meta.num_row_groups))
    return min(1.0, max_bytes / total) if total else 1.0


def sampled(texts: Iterator[str], keep: float) -> Iterator[str]:
    """The texts whose hash falls under `keep`: a sample that depends only on each text, so both
    training passes (and every rerun) see the same documents."""
    if keep >= 1.0:
        yield from texts
        return
    bound = int(keep * 2**64)
    for text in texts:
        digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"tok-sample").digest()
        if int.from_bytes(digest, "little") < bound:
            yield text
