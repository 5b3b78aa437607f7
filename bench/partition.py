"""Where a data-stage partition's time goes: reading, each cleaning step, hashing, Parquet, Ray.

    python -m bench.partition [--megabytes 8]

Input: bench.scale's varied text, in the partitions the stage cuts it into (default rules,
near-dedup on). Each part
is timed on its own over the same documents: reading and parsing, every cleaning step, the exact
hash and the MinHash bands of the kept documents; then pass 1 as the stage runs it (the same
work plus the Parquet and keys files), and the whole stage on Ray with one worker, pass by pass.
Last, the one step that sees the whole corpus in one process, connected components over the
near-duplicate edges, on a synthetic graph of `--edges` edges.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.scale import write_corpus
from pipeline import data_stage
from pipeline.clean import build_steps
from pipeline.config import DataConfig, SourceConfig
from pipeline.dedup import EDGE, MinHasher, earliest_in_components, exact_hash
from pipeline.parallel import ensure_ray
from pipeline.sources import plan, read_partition


def profile(root: Path, megabytes: int) -> None:
    (root / "in").mkdir()
    size = write_corpus(root / "in", megabytes) / 1e6
    cfg = DataConfig(sources=[SourceConfig(name="bench", paths=[str(root / "in" / "*.jsonl")])], dedup={"near": True},
                     num_workers=1)  # fmt: skip
    parts = plan(cfg)
    seconds: dict[str, float] = defaultdict(float)
    stats: Counter = Counter()

    start = time.perf_counter()
    docs = [doc for part in parts for doc in read_partition(part, cfg, stats)]
    seconds["read and parse JSON lines"] = time.perf_counter() - start
    for step in build_steps(cfg.clean):
        start = time.perf_counter()
        for doc in docs:
            if doc.reason is None:
                step(doc, stats)
        seconds[f"step {step.name}"] = time.perf_counter() - start
    kept = [doc.text for doc in docs if doc.reason is None]
    minhash = MinHasher(cfg.dedup)
    for name, fn in (("exact hash", exact_hash), ("MinHash bands", minhash.band_hashes)):
        start = time.perf_counter()
        for text in kept:
            fn(text)
        seconds[name] = time.perf_counter() - start

    (root / "work").mkdir()
    start = time.perf_counter()
    for part in parts:
        data_stage._clean_partition(part, cfg, data_stage._part_path(root / "work", part))
    pass_one = time.perf_counter() - start

    ensure_ray()
    passes: dict[str, float] = {}
    run = data_stage.parallel_map

    def timed_map(items, fn, workers, desc, *args, **kwargs):
        begin = time.perf_counter()
        result = run(items, fn, workers, desc, *args, **kwargs)
        passes[f"Ray pass {desc} ({len(items)} tasks)"] = time.perf_counter() - begin
        return result

    data_stage.parallel_map = timed_map
    start = time.perf_counter()
    data_stage.run_data(cfg, root / "out")
    stage = time.perf_counter() - start

    summed = sum(seconds.values())
    print(f"# python -m bench.partition --megabytes {megabytes}: {size:.1f} MB in {len(parts)} partitions, "
          f"{len(docs):,} documents, {len(kept):,} kept")  # fmt: skip
    print(f"{'part':<40} {'s':>7} {'share':>6}")
    for name, took in seconds.items():
        print(f"{name:<40} {took:7.2f} {took / summed:6.1%}")
    print(f"{'sum of the parts':<40} {summed:7.2f}")
    print(f"{'pass 1 in one process (+ Parquet, keys)':<40} {pass_one:7.2f} {pass_one / summed - 1:+6.1%}")
    for name, took in passes.items():
        print(f"{name:<40} {took:7.2f}")
    print(f"{'whole stage, 1 worker':<40} {stage:7.2f} {stage / pass_one - 1:+6.1%} over pass 1")


def components(n_edges: int) -> None:
    """Near-duplicate groups as LSH finds them: a first document and a geometric number of later
    copies (mean 2) within 100,000 places after it, each linked to it by 1 to 4 band edges, among
    25 × as many documents as edges (so that groups sometimes share a document and merge)."""
    rng = np.random.default_rng(0)
    firsts = np.sort(rng.choice(25 * n_edges, n_edges // 5, replace=False))
    sizes = rng.geometric(0.5, len(firsts))
    later = firsts.repeat(sizes) + rng.integers(1, 100_000, int(sizes.sum()))
    bands = rng.integers(1, 5, len(later))
    edges = np.empty(int(bands.sum()), EDGE)
    edges["later"], edges["first"] = later.repeat(bands), firsts.repeat(sizes).repeat(bands)
    tracemalloc.start()
    start = time.perf_counter()
    members, _ = earliest_in_components(edges)
    took = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(
        f"components of {len(edges):,} edges ({len(members):,} duplicates): {took:.1f} s, "
        f"{len(edges) / took / 1e6:.2f} M edges/s, peak {peak / 2**20:,.0f} MB ({peak / len(edges):.0f} B an edge)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=8)
    parser.add_argument("--edges", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        profile(Path(tmp), args.megabytes)
    components(args.edges)


if __name__ == "__main__":
    main()
