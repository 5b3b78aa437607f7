"""The data side at corpus size: data, tokenizer and shards stages on 100 MB to 1 GB of text.

    python -m bench.scale [--sizes 100,400] [--workers 1,2] [--merges 40000] [--max-bytes N] [--runs loop,data,...]

Input: the built-in corpus repeated until it reaches each size, every copy of a document with a
word in seven replaced (differently in each copy), so that neither exact nor near-dedup simply
drops the copies. The replacements are words each copy invents (the start of one real word and
the end of another, a pool of INVENTED per copy), so the vocabulary grows with the corpus, as a
real one does, and a 1 GB corpus has the pairs for 40,000 merges. Each size runs (`--runs`
picks some): the plain one-process loop that reads, cleans and hashes
(bench.data's baseline); the data stage (default rules, near-dedup on) with each worker count;
the tokenizer stage once (it trains in one process); bare `tokenizers` `encode_batch_fast` over the
kept documents; and the shards stage with each worker count from an empty cache. For every run:
wall time, MB/s per core, Mtok/s, and the peak RSS of the driver and of the largest Ray worker,
sampled every 100 ms. Every run has a fresh process of its own, with its own local Ray (whose
start-up is excluded): memory a process has freed is rarely given back to the system, so a
driver or worker that ran before would report its old peak.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from tokenizers import Tokenizer

from bench.data import baseline
from pipeline.builtin import builtin_units, read_builtin
from pipeline.config import DataConfig, ShardsConfig, SourceConfig
from pipeline.data_stage import run_data
from pipeline.documents import doc_files, read_texts
from pipeline.parallel import ensure_ray
from pipeline.shards import run_shards
from pipeline.tokenizer_stage import run_tokenizer
from tokenizer.config import TokenizerConfig

FILE_BYTES = 8_000_000  # one partition per 8 MB file
ENCODE_BATCH = 2000
INVENTED = 3000  # new words per copy of the corpus (about 9 MB)
RUNS = ("loop", "data", "tokenizer", "encode", "shards")


def write_corpus(root: Path, megabytes: int) -> int:
    """JSON-lines files of about `megabytes` in all; returns the bytes written."""
    texts = [d.text for d in read_builtin("builtin", builtin_units()) if d.reason is None and len(d.text) > 500]
    vocab = sorted({w for t in texts for w in t.split() if w.isalpha() and len(w) > 2})
    written, copy, out = 0, 0, None
    while written < megabytes * 1e6:
        rng = random.Random(copy)
        invented = [invent(rng, vocab) for _ in range(INVENTED)]
        for text in texts:
            words = text.split(" ")
            for i in range(copy % 7, len(words), 7):
                if copy:
                    words[i] = rng.choice(invented)
            line = json.dumps({"text": " ".join(words)}) + "\n"
            if out is None or out.tell() > FILE_BYTES:
                out = open(root / f"part-{written // FILE_BYTES:05d}.jsonl", "w")  # noqa: SIM115
            out.write(line)
            written += len(line)
        copy += 1
    return written


def invent(rng: random.Random, vocab: list[str]) -> str:
    """A word that is no real one: the start of one word of `vocab` and the end of another."""
    head, tail = rng.choice(vocab), rng.choice(vocab)
    return head[: rng.randint(2, len(head))] + tail[rng.randint(1, len(tail) - 1) :]


@contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Peak RSS of this process and of the largest Ray worker while the block runs."""
    peaks = {"driver": 0, "worker": 0}
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        while not stop.is_set():
            peaks["driver"] = max(peaks["driver"], me.memory_info().rss)
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                if " ".join(proc.info["cmdline"] or []).startswith("ray::") and proc.info["memory_info"]:
                    peaks["worker"] = max(peaks["worker"], proc.info["memory_info"].rss)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, dict[str, int]]:
    """`fn(*args)` in a fresh process with a local Ray of its own: (result, seconds, peak RSS)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_timed, (fn, *args))


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, dict[str, int]]:
    import ray

    ensure_ray()
    try:
        with peak_rss() as peaks:
            start = time.perf_counter()
            result = fn(*args)
            took = time.perf_counter() - start
        return result, took, peaks
    finally:
        ray.shutdown()


def bare_encode(tokenizer: Path, data: Path) -> int:
    """Tokens (with one end-of-document each) from `encode_batch_fast` over the train split."""
    bare = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    texts, tokens = read_texts(doc_files(data / "train")), 0
    while batch := [t for _, t in zip(range(ENCODE_BATCH), texts)]:
        tokens += sum(len(e.ids) + 1 for e in bare.encode_batch_fast(batch, add_special_tokens=False))
    return tokens


def output_digest(data: Path) -> str:
    """A hash of the data stage's kept text, split by split and file by file, in order."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for path in doc_files(data / split):
            digest.update(f"{split}/{path.name}\n".encode())
            for text in read_texts([path]):
                digest.update(text.encode() + b"\0")
    return digest.hexdigest()


def row(size: str, run: str, took: float, mb: float, cores: int, peaks: dict, vs: float, mtok: float | None) -> str:
    rate = f"{mtok / took:8.2f}" if mtok else f"{'':>8}"
    return (f"{size:>7} {run:>16} {took:8.1f} {mb / took / cores:9.2f} {rate} {vs:7.2f} "
            f"{peaks['driver'] / 2**20:9.0f} {peaks['worker'] / 2**20:9.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 400])
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--merges", type=int, default=40_000)
    parser.add_argument("--max-bytes", type=int, help="tokenizer.max_bytes: train the tokenizer on a sample")
    parser.add_argument("--runs", type=lambda s: s.split(","), default=list(RUNS),
                        help=f"comma-separated, of {','.join(RUNS)}; each needs the data stage's output")  # fmt: skip
    args = parser.parse_args()
    if unknown := set(args.runs) - set(RUNS):
        parser.error(f"unknown runs: {', '.join(sorted(unknown))} (choose from {', '.join(RUNS)})")
    print(f"{'input':>7} {'run':>16} {'wall s':>8} {'MB/s/core':>9} {'Mtok/s':>8} {'vs base':>7} "
          f"{'driver MB':>9} {'worker MB':>9}")  # fmt: skip
    for megabytes in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tok = TokenizerConfig(merges=args.merges, max_bytes=args.max_bytes)
            bench_size(Path(tmp), megabytes, args.workers, tok, args.runs)


def bench_size(root: Path, megabytes: int, worker_counts: list[int], tok: TokenizerConfig, runs: list[str]) -> None:
    """Every run of `runs` on one corpus size. What a run needs runs whether asked for or not: the
    data stage (its last worker count) for every run after the loop, the tokenizer for encode and
    shards."""
    (root / "in").mkdir()
    mb = write_corpus(root / "in", megabytes) / 1e6
    size = f"{mb:.0f} MB"
    cfg = DataConfig(sources=[SourceConfig(name="bench", paths=[str(root / "in" / "*.jsonl")])], dedup={"near": True},
                     partition_bytes=FILE_BYTES)  # a partition per file, as the baseline reads them  # fmt: skip
    base = None
    if "loop" in runs:
        _, base, peaks = timed(baseline, sorted((root / "in").glob("*.jsonl")), cfg)
        print(row(size, "loop", base, mb, 1, peaks, 1.0, None), flush=True)
    outputs = set()
    for workers in worker_counts if "data" in runs else worker_counts[-1:]:
        data = root / f"data{workers}"
        summary, took, peaks = timed(run_data, cfg.model_copy(update={"num_workers": workers}), data)
        vs = base / (took * workers) if base else float("nan")
        print(row(size, f"data x{workers}", took, mb, workers, peaks, vs, None), flush=True)
        outputs.add((json.dumps(summary["counts"], sort_keys=True), output_digest(data)))
    assert len(outputs) == 1, "the data stage's output differs between worker counts"
    counts = summary["counts"]
    rejected = sum(counts["rejected"].values())
    print(f"{size:>7} {counts['kept']:,} of {counts['in']:,} documents kept, {rejected:,} rejected, "
          f"{counts['duplicates']:,} duplicates; the same output from every worker count", flush=True)  # fmt: skip
    if not {"tokenizer", "encode", "shards"} & set(runs):
        return
    result, took, peaks = timed(run_tokenizer, tok, data, root / "tok")
    if "tokenizer" in runs:
        label = f"tokenizer {tok.merges // 1000}k"
        if tok.max_bytes:  # trained on a sample
            label = f"tok {tok.merges // 1000}k of {tok.max_bytes / 1e6:.0f}MB"
        print(row(size, label, took, mb, 1, peaks, 1.0, None), flush=True)
        meta = result["tokenizer"]
        print(f"{size:>7} {meta['merges']:,} merges learned, vocabulary {meta['vocab_size']:,}", flush=True)
    if not {"encode", "shards"} & set(runs):
        return
    tokens, base, peaks = timed(bare_encode, root / "tok", data)
    print(row(size, "encode_batch", base, mb, psutil.cpu_count(), peaks, 1.0, tokens / 1e6), flush=True)
    for workers in worker_counts if "shards" in runs else []:
        shutil.rmtree(root / "shards", ignore_errors=True)  # the cache lives next to the output: start without it
        shards = ShardsConfig(num_workers=workers)
        result, took, peaks = timed(run_shards, shards, data, root / "tok", root / "shards" / "build")
        assert result["splits"]["train"]["tokens"] == tokens
        print(row(size, f"shards x{workers}", took, mb, workers, peaks, base / took, tokens / 1e6), flush=True)
    print(f"{size:>7} {tokens:,} train tokens", flush=True)


if __name__ == "__main__":
    main()
