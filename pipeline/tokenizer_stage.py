"""The tokenizer stage: train BPE on the data stage's train split, measure it on the val split."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

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
        tok = train(cfg, lambda: read_texts(train_files, desc=next(passes)))
    seconds = time.perf_counter() - started
    tok.save(out)
    stats = corpus_stats(tok, read_texts(val_files), max_bytes=STATS_MAX_BYTES) if val_files else None
    log.info("tokenizer: %d merges, vocab %d, %.1fs", tok.merges, tok.vocab_size, seconds)
    return {"tokenizer": tok.meta, "train_seconds": round(seconds, 3), "stats": {"val": stats}}
