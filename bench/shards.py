"""Shard build throughput against the bare tokenizer, and the training reader's throughput.

    python -m bench.shards [--scale 4] [--workers 1 2] [--merges 8000]

Input: the built-in corpus (Python's own documentation) as data-stage Parquet files, repeated
`scale` times, and a gpt1-style tokenizer trained on it. Baseline: the bare `tokenizers` batch
encode (all cores) of the same documents, ids as Python lists, nothing written. Then our per-file
encoder in this process (Parquet in, token stream out, no Ray), and the whole
shards stage (Ray actors encode, streams cached, shards packed, sha256 computed) from an empty
cache; Ray's start-up is excluded (paid once per run). Reader: random 64 x 512 batches through
`TokenWindows` and `Sampler`, against what one H100 consumes training GPT-1 (~500K tokens/s).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from pipeline.builtin import builtin_units, read_builtin
from pipeline.config import ShardsConfig
from pipeline.documents import DOCS_SCHEMA
from pipeline.parallel import ensure_ray
from pipeline.shards import Encoder, run_shards
from tokenizer.config import TokenizerConfig
from tokenizer.train import train
from training.data import Sampler, TokenWindows

FILES_PER_COPY = 8
GPU_TOKENS_PER_S = 500_000


def write_docs(data_dir: Path, texts: list[str], scale: int) -> None:
    for copy in range(scale):
        for part in range(FILES_PER_COPY):
            rows = [{"id": f"{copy}-{i}", "text": t, "source": "builtin", "meta": "{}"}
                    for i, t in enumerate(texts[part::FILES_PER_COPY])]  # fmt: skip
            name = f"part-{copy * FILES_PER_COPY + part:05d}.parquet"
            (data_dir / "train").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=DOCS_SCHEMA), data_dir / "train" / name)


def reader_rate(folder: Path, seconds: float = 3.0) -> float:
    windows = TokenWindows(folder, "train", seq_len=512)
    sampler = Sampler(len(windows), 64, seed=0)
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        windows.batch(sampler.next_batch())
        batches += 1
    return batches * 64 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--merges", type=int, default=8000)
    args = parser.parse_args()
    texts = [d.text for d in read_builtin("builtin", builtin_units()) if d.reason is None]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_docs(root / "data", texts, args.scale)
        train(TokenizerConfig(merges=args.merges), lambda: iter(texts)).save(root / "tok")
        every = texts * args.scale
        size = sum(len(t.encode()) for t in every)
        bare = Tokenizer.from_file(str(root / "tok" / "tokenizer.json"))
        start = time.perf_counter()
        tokens = sum(len(e.ids) + 1 for e in bare.encode_batch_fast(every, add_special_tokens=False))
        base = time.perf_counter() - start
        print(f"input: {len(every):,} documents, {size / 1e6:.1f} MB, {tokens:,} tokens (with end-of-document)")
        print(f"{'run':>22} {'Mtok/s':>8} {'vs bare':>8}")
        print(f"{'bare encode_batch':>22} {tokens / base / 1e6:8.2f} {1.0:8.2f}")
        start = time.perf_counter()
        encoder = Encoder(str(root / "tok"))
        for i, doc_file in enumerate(sorted((root / "data" / "train").iterdir())):
            encoder.encode(doc_file, root / f"stream-{i}.bin")
        ours_here = time.perf_counter() - start
        print(f"{'our encoder, no Ray':>22} {tokens / ours_here / 1e6:8.2f} {base / ours_here:8.2f}")
        ensure_ray()
        for workers in args.workers:
            out = root / "shards" / "build"
            shutil.rmtree(root / "shards", ignore_errors=True)
            start = time.perf_counter()
            summary = run_shards(ShardsConfig(num_workers=workers, shard_tokens=2_000_000), root / "data",
                                 root / "tok", out)  # fmt: skip
            took = time.perf_counter() - start
            assert summary["splits"]["train"]["tokens"] == tokens
            print(f"{f'shards stage x{workers}':>22} {tokens / took / 1e6:8.2f} {base / took:8.2f}")
        rate = reader_rate(root / "shards" / "build")
        print(f"\nreader: {rate:,.0f} sequences/s = {rate * 512 / 1e6:.1f}M tokens/s, "
              f"{rate * 512 / GPU_TOKENS_PER_S:,.0f}x one H100's GPT-1 appetite (single process)")  # fmt: skip


if __name__ == "__main__":
    main()
