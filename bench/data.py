"""Data stage throughput against a plain single-process loop over the same input and steps.

    python bench/data.py [--scale 1 2] [--workers 1 2]

Input: the built-in corpus written out as JSON lines, repeated `scale` times (each copy in its
own files, so later copies are exact duplicates). The baseline reads, cleans and hashes every
document in one Python loop, writing nothing. The stage does the same on Ray Data plus dedup,
split and Parquet output. Ray's start-up is excluded (it is paid once per run). Peak RSS is the
largest single Ray worker seen while the stage ran, sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from pipeline.builtin import builtin_units, read_builtin
from pipeline.clean import build_steps, clean
from pipeline.config import DataConfig, SourceConfig
from pipeline.data_stage import run_data
from pipeline.dedup import MinHasher, exact_hash
from pipeline.parallel import ensure_ray
from pipeline.readers import read_file

FILES_PER_COPY = 8


def write_input(root: Path, scale: int) -> tuple[list[Path], int]:
    texts = [d.text for d in read_builtin("builtin", builtin_units()) if d.reason is None]
    files, size = [], 0
    for copy in range(scale):
        for part in range(FILES_PER_COPY):
            path = root / f"copy{copy}-part{part}.jsonl"
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[part::FILES_PER_COPY]))
            files.append(path)
            size += path.stat().st_size
    return files, size


def baseline(files: list[Path], cfg: DataConfig) -> int:
    source, steps, minhash, stats = cfg.sources[0], build_steps(cfg.clean), MinHasher(cfg.dedup), Counter()
    docs = 0
    for path in files:
        for doc in read_file(str(path), source, cfg.clean.invalid_utf8, cfg.clean.max_chars, stats):
            docs += 1
            doc = clean(doc, steps, stats)
            if doc.reason is None:
                exact_hash(doc.text)
                minhash.band_hashes(doc.text)
    return docs


def peak_worker_rss(stop: threading.Event, out: list[int]) -> None:
    peak = 0
    while not stop.is_set():
        for proc in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::") and proc.info["memory_info"]:
                peak = max(peak, proc.info["memory_info"].rss)
        time.sleep(0.05)
    out.append(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    ensure_ray()
    print(f"{'input':>12} {'run':>12} {'docs/s':>9} {'MB/s':>7} {'vs loop':>8} {'peak RSS':>9}")
    for scale in args.scale:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            files, size = write_input(root, scale)
            source = SourceConfig(name="bench", paths=[str(root / "*.jsonl")])
            cfg = DataConfig(sources=[source], dedup={"near": True})
            t0 = time.perf_counter()
            docs = baseline(files, cfg)
            base = time.perf_counter() - t0
            label = f"{size / 1e6:.1f} MB"
            print(f"{label:>12} {'loop':>12} {docs / base:9.0f} {size / 1e6 / base:7.2f} {1.0:8.2f} {'':>9}")
            for workers in args.workers:
                stop, peak = threading.Event(), []
                sampler = threading.Thread(target=peak_worker_rss, args=(stop, peak))
                sampler.start()
                t0 = time.perf_counter()
                run_data(cfg.model_copy(update={"num_workers": workers}), root / f"out{workers}")
                took = time.perf_counter() - t0
                stop.set()
                sampler.join()
                print(f"{label:>12} {f'ray x{workers}':>12} {docs / took:9.0f} {size / 1e6 / took:7.2f} "
                      f"{base / took:8.2f} {peak[0] / 2**20:7.0f}MB")  # fmt: skip


if __name__ == "__main__":
    main()
