"""The shards stage: tokenize the clean documents on Ray actors, pack them into token shards.

1. tokenize: each document file of the data stage (`train/part-NNNNN.parquet`, `val/...`) is
   encoded by a pool of Ray actors (the tokenizer loaded once per actor), every document followed
   by the end-of-document token, into `<run>/shards/cache/<key>.bin`, where `key` hashes the file's
   content and `tokenizer.json`. A rebuild re-encodes only the files whose text or tokenizer
   changed, and a killed build keeps every file it finished.
2. pack: per split, the cached streams are concatenated in file order and cut into shards of
   `shard_tokens` tokens (`train/shard-NNNNN.bin`, the last one shorter), listed with their token
   and document counts and sha256 in `index.json`. Packing only copies bytes, so it is redone
   whole; the output depends on the inputs alone, never on the number of workers.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.config import ShardsConfig
from pipeline.documents import READ_BATCH, doc_files
from pipeline.parallel import parallel_map
from pipeline.runner import StageError, read_manifest, sha256_file, write_json_atomic
from pipeline.shard_format import (
    HEADER_BYTES,
    INDEX,
    VERSION,
    ShardFormatError,
    ShardWriter,
    itemsize_for,
    open_tokens,
    read_header,
    read_index,
)
from tokenizer.bpe import BPETokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
STREAMS = "streams.json"  # in each build folder: the cached streams it was packed from
COPY_TOKENS = 1 << 24  # tokens copied per write while packing: bounds memory, whatever the shard size


def run_shards(cfg: ShardsConfig, data_dir: Path, tokenizer_dir: Path, out: Path) -> dict[str, Any]:
    """Build every split's shards into `out`; returns the manifest summary."""
    tok = BPETokenizer.load(tokenizer_dir)
    tok_sha = sha256_file(tokenizer_dir / "tokenizer.json")
    data_files = {f["path"]: f["sha256"] for f in (read_manifest(data_dir) or {}).get("files", [])}
    cache = out.parent / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cache) as clean_cache:
        summary = _build(cfg, data_dir, tokenizer_dir, out, cache, tok, tok_sha, data_files)
        write_json_atomic(out / STREAMS, sorted(Path(f).name for f in summary.pop("streams")))
        clean_cache()
    return summary


def _build(cfg: ShardsConfig, data_dir: Path, tokenizer_dir: Path, out: Path, cache: Path, tok: BPETokenizer,
           tok_sha: str, data_files: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    streams: dict[str, list[Path]] = {}
    todo = []
    for split in SPLITS:
        streams[split] = []
        for doc_file in doc_files(data_dir / split):
            digest = data_files.get(f"{split}/{doc_file.name}") or sha256_file(doc_file)
            stream = cache / f"{hashlib.sha256(f'{digest}:{tok_sha}:{VERSION}'.encode()).hexdigest()[:32]}.bin"
            streams[split].append(stream)
            if not stream.exists():
                todo.append({"doc_file": str(doc_file), "stream": str(stream)})
    if not any(streams.values()):
        raise StageError(f"{data_dir}: no documents to tokenize")
    reused = sum(map(len, streams.values())) - len(todo)
    log.info("shards: %d document files to encode, %d already in the cache", len(todo), reused)
    results = parallel_map(todo, Encoder, cfg.num_workers, "shards: tokenize", init={"tokenizer": str(tokenizer_dir)})
    failed = [r["error"] for r in results if r["error"]]
    if failed:
        raise StageError("\n".join(failed))

    layout = {split: _layout(files, out / split, cfg.shard_tokens) for split, files in streams.items()}
    items = [item for split in SPLITS for item in layout[split]]
    packed = iter(parallel_map(items, _shard_writer(tok.vocab_size, tok.specials.eod), cfg.num_workers,
                               "shards: pack"))  # fmt: skip
    splits = {split: _listing(out / split, [next(packed) for _ in layout[split]]) for split in SPLITS}
    index = {
        "format": VERSION,
        "seq_len": cfg.seq_len,
        "dtype": f"uint{8 * itemsize_for(tok.vocab_size)}",
        "vocab_size": tok.vocab_size,
        "eod": tok.specials.eod,
        "tokenizer": {"dir": str(Path(tokenizer_dir).resolve()), "sha256": tok_sha},
        "splits": splits,
    }
    write_json_atomic(out / INDEX, index)
    totals = {s: {k: v for k, v in info.items() if k != "shards"} for s, info in splits.items()}
    log.info("shards: %s", ", ".join(f"{s} {t['tokens']:,} tokens in {t['files']} shards" for s, t in totals.items()))
    return {"index": {k: v for k, v in index.items() if k != "splits"}, "splits": totals,
            "encoded": {"files": len(todo), "reused": reused},
            "streams": [str(f) for files in streams.values() for f in files]}  # fmt: skip


class Encoder:
    """A Ray actor's work: one document file to one token stream (documents end with eod)."""

    def __init__(self, tokenizer: str):
        os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core per actor, as Ray schedules it
        self.tok = BPETokenizer.load(tokenizer)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        try:
            self.encode(Path(item["doc_file"]), Path(item["stream"]))
        except (OSError, ValueError) as e:
            return {"error": f"{item['doc_file']}: {type(e).__name__}: {e}"}
        return {"error": None}

    def encode(self, doc_file: Path, stream: Path) -> None:
        eod = self.tok.specials.eod
        writer = ShardWriter(stream, self.tok.vocab_size)
        for batch in pq.ParquetFile(doc_file).iter_batches(READ_BATCH, columns=["text"]):
            ids = self.tok.encode_batch(batch.column(0).to_pylist())
            ends = np.cumsum([len(doc) for doc in ids])
            flat = np.fromiter(chain.from_iterable(ids), dtype=np.uint32, count=int(ends[-1]) if len(ids) else 0)
            writer.write(np.insert(flat, ends, eod))
        writer.close()


def _layout(streams: list[Path], folder: Path, shard_tokens: int) -> list[dict[str, Any]]:
    """One item per shard of a split: its file and the [stream, start, end) token ranges it holds,
    from the streams' headers alone."""
    starts = np.cumsum([0, *(read_header(s).tokens for s in streams)]).tolist()
    items = []
    for begin in range(0, starts[-1], shard_tokens):
        end, i, pieces = min(begin + shard_tokens, starts[-1]), bisect.bisect_right(starts, begin) - 1, []
        while i < len(streams) and starts[i] < end:
            lo, hi = max(begin, starts[i]) - starts[i], min(end, starts[i + 1]) - starts[i]
            if hi > lo:
                pieces.append([str(streams[i]), lo, hi])
            i += 1
        items.append({"path": str(folder / f"shard-{len(items):05d}.bin"), "pieces": json.dumps(pieces)})
    return items


def _shard_writer(vocab_size: int, eod: int):
    def run(item: dict[str, Any]) -> dict[str, Any]:
        writer, documents = ShardWriter(Path(item["path"]), vocab_size), 0
        for stream, lo, hi in json.loads(item["pieces"]):
            for piece in _slices(open_tokens(Path(stream))[lo:hi]):
                piece = np.asarray(piece)
                writer.write(piece)
                documents += int(np.count_nonzero(piece == eod))
        writer.close()
        return {"file": writer.path.name, "tokens": writer.tokens, "documents": documents,
                "sha256": sha256_file(writer.path)}  # fmt: skip

    return run


def _listing(folder: Path, shards: list[dict[str, Any]]) -> dict[str, Any]:
    listed = [{"file": f"{folder.name}/{s['file']}", "tokens": s["tokens"], "documents": s["documents"],
               "sha256": s["sha256"]} for s in shards]  # fmt: skip
    return {"tokens": sum(s["tokens"] for s in listed), "documents": sum(s["documents"] for s in listed),
            "files": len(listed), "shards": listed}  # fmt: skip


@contextmanager
def _cache_lock(cache: Path) -> Iterator[Any]:
    """Hold the cache shared while building; yield a function that removes the streams no build
    folder lists, once no other build holds the cache (without locks, it removes them regardless)."""
    with open(cache / ".lock", "w") as f:
        with suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_SH)

        def clean() -> None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("shards: another build is using %s; its unused streams stay", cache)
                return
            except OSError:
                pass
            keep = {".lock"}.union(*(json.loads(f.read_text()) for f in cache.parent.glob(f"*/{STREAMS}")))
            stale = [p for p in cache.iterdir() if p.name not in keep]
            for path in stale:
                path.unlink(missing_ok=True)
            if stale:
                log.info("shards: removed %d cached streams no build uses", len(stale))

        yield clean


def _slices(tokens: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(tokens), COPY_TOKENS):
        yield tokens[start : start + COPY_TOKENS]


# Checking and inspecting a shards folder ----------------------------------------------------------


def verify(folder: Path) -> list[str]:
    """Every fault of a shards folder, one line each (empty when sound): headers, sizes, checksums,
    token ids below the vocabulary size."""
    index = read_index(folder)
    faults = []
    for split, info in index["splits"].items():
        for shard in info["shards"]:
            path = Path(folder) / shard["file"]
            try:
                _check(path, shard, index["vocab_size"])
            except FileNotFoundError:
                faults.append(f"{path}: missing ({split} shard listed in {INDEX})")
            except ShardFormatError as e:
                faults.append(str(e))
    return faults


def _check(path: Path, shard: dict[str, Any], vocab_size: int) -> None:
    header = read_header(path)
    if header.vocab_size != vocab_size:
        raise ShardFormatError(f"{path}: vocabulary {header.vocab_size} in the header, {vocab_size} in {INDEX}")
    if header.tokens != shard["tokens"]:
        raise ShardFormatError(f"{path}: {header.tokens:,} tokens in the header, {shard['tokens']:,} in {INDEX}")
    tokens = open_tokens(path)  # checks the size against the header
    with open(path, "rb") as f:
        digest, top = hashlib.sha256(f.read(HEADER_BYTES)), 0  # the file's own header bytes, padding included
    for piece in _slices(tokens):
        digest.update(np.ascontiguousarray(piece).tobytes())
        top = max(top, int(piece.max()))
    if digest.hexdigest() != shard["sha256"]:
        raise ShardFormatError(f"{path}: sha256 differs from {INDEX} (the file changed after it was written)")
    if top >= vocab_size:
        raise ShardFormatError(f"{path}: token id {top} is not below the vocabulary size {vocab_size}")


def inspect(folder: Path, sample_tokens: int = 200) -> dict[str, Any]:
    """Per split: tokens, documents, a histogram of document lengths (powers of two), and the first
    `sample_tokens` tokens of its first shard."""
    index = read_index(folder)
    report = {}
    for split, info in index["splits"].items():
        lengths: list[np.ndarray] = []
        carry = 0  # tokens of a document that began in an earlier shard
        for shard in info["shards"]:
            tokens = open_tokens(Path(folder) / shard["file"])
            ends = np.flatnonzero(tokens == index["eod"])
            if len(ends):
                lengths.append(np.diff(ends, prepend=-1) + np.r_[carry, np.zeros(len(ends) - 1, dtype=int)])
                carry = len(tokens) - 1 - int(ends[-1])
            else:
                carry += len(tokens)
        sizes = np.concatenate(lengths) if lengths else np.zeros(0, dtype=int)
        edges = 2 ** np.arange(0, max(1, int(np.ceil(np.log2(max(2, sizes.max(initial=1))))) + 1))
        counts, _ = np.histogram(sizes, bins=edges)
        first = open_tokens(Path(folder) / info["shards"][0]["file"])[:sample_tokens] if info["shards"] else []
        report[split] = {
            "tokens": info["tokens"], "documents": info["documents"], "shards": info["files"],
            "length_histogram": [(int(lo), int(hi), int(n)) for lo, hi, n in zip(edges[:-1], edges[1:], counts)],
            "mean_length": float(sizes.mean()) if len(sizes) else 0.0,
            "sample": [int(t) for t in first],
        }  # fmt: skip
    return report
