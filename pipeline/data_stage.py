"""The data stage: read, clean, deduplicate and split every source into Parquet, on Ray.

Three passes, each a Ray Data map over numbered items, so the output is the same whatever the
number of workers:

1. clean: each partition (a file, URL, hub shard) is read, cleaned and hashed into
   `work/part-NNNNN-<identity>.parquet` (atomic; a rerun after a kill skips the partitions already
   done, and only those: the name carries the digest of the input the partition read);
2. index: hash columns are scanned in order to find exact duplicates (bucketed by hash) and
   near-duplicates (one task per MinHash band); only hashes and ids are held in memory;
3. write: each partition's documents go to `train/`, `val/` or `rejects/` (with the reason).

Every document read is counted once: in = kept + duplicates + rejected, per source and in total.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.clean import build_steps, clean
from pipeline.config import DataConfig
from pipeline.dedup import MinHasher, earliest_of_groups, exact_hash, first_seen
from pipeline.documents import DOCS_SCHEMA, REJECTS_SCHEMA
from pipeline.parallel import parallel_map, worker_count
from pipeline.sources import DataError, Partition, plan, read_partition

log = logging.getLogger(__name__)

ROWS_PER_GROUP = 1024
SPLIT_BUCKETS = 1_000_000
ROW_BITS = 32  # order = partition << ROW_BITS | row


def run_data(cfg: DataConfig, out: Path) -> dict[str, Any]:
    """Run the whole stage into `out`; returns the manifest summary (counts, step stats, sources)."""
    partitions = plan(cfg)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log.info("data: %d partitions from %d sources", len(partitions), len(cfg.sources))

    cleaned = parallel_map([{"p": p.index} for p in partitions], _cleaner(partitions, cfg, work), cfg.num_workers,
                           "clean")  # fmt: skip
    failed = [r["error"] for r in cleaned if r["error"]]
    if failed:
        raise DataError("\n".join(failed))
    quotas = _quotas(partitions, [r["rows"] for r in cleaned])
    parts = [str(_part_path(work, p)) for p in partitions]

    duplicates = _find_duplicates(parts, quotas, cfg)
    by_partition: dict[int, list[list[Any]]] = {}
    for order, (kind, first) in sorted(duplicates.items()):
        by_partition.setdefault(order >> ROW_BITS, []).append([order, kind, first])
    items = [{"p": p.index, "quota": quotas[p.index], "dups": json.dumps(by_partition.get(p.index, []))}
             for p in partitions]  # fmt: skip
    written = parallel_map(items, _writer(parts, cfg.val_fraction, out), cfg.num_workers, "write")

    summary = _summarise(partitions, cleaned, written, cfg)
    shutil.rmtree(work)
    return summary


def _part_path(work: Path, part: Partition) -> Path:
    return work / f"part-{part.index:05d}-{part.identity}.parquet"


# Pass 1: read, clean, hash -----------------------------------------------------------------------


def _cleaner(partitions: list[Partition], cfg: DataConfig, work: Path):
    def run(item: dict[str, Any]) -> dict[str, Any]:
        part = partitions[item["p"]]
        path = _part_path(work, part)
        try:
            if not path.exists():
                _clean_partition(part, cfg, path)
            meta = pq.read_metadata(path)
            return {"rows": meta.num_rows, "stats": meta.metadata[b"stats"].decode(), "error": ""}
        except Exception as e:  # reported as one line for the partition, not a worker traceback
            return {"rows": 0, "stats": "{}", "error": f"{part.label}: {type(e).__name__}: {e}"}

    return run


def _clean_partition(part: Partition, cfg: DataConfig, path: Path) -> None:
    steps = build_steps(cfg.clean)
    minhash = MinHasher(cfg.dedup) if cfg.dedup.near else None
    bands = [f"band_{i}" for i in range(cfg.dedup.bands)] if minhash else []
    schema = pa.schema(
        [("order", pa.int64()), ("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
         ("meta", pa.string()), ("reason", pa.string()), ("detail", pa.string()), ("preview", pa.string()),
         ("hash", pa.uint64()), *[(b, pa.uint64()) for b in bands]]
    )  # fmt: skip
    stats: Counter = Counter()
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    with pq.ParquetWriter(tmp, schema) as writer:
        for row, doc in enumerate(read_partition(part, cfg, stats)):
            preview = doc.preview
            doc = clean(doc, steps, stats) if doc.reason is None else doc
            kept = doc.reason is None
            values = {
                "order": part.index << ROW_BITS | row, "id": doc.id, "source": doc.source,
                "text": doc.text if kept else "", "meta": doc.meta_json(), "reason": doc.reason,
                "detail": doc.detail, "preview": preview, "hash": exact_hash(doc.text) if kept else 0,
            }  # fmt: skip
            values.update(zip(bands, minhash.band_hashes(doc.text) if kept and minhash else [0] * len(bands)))
            for name in schema.names:
                columns[name].append(values[name])
            if len(columns["order"]) >= ROWS_PER_GROUP:
                writer.write_batch(pa.record_batch(columns, schema=schema))
                columns = {name: [] for name in schema.names}
        if columns["order"]:
            writer.write_batch(pa.record_batch(columns, schema=schema))
        writer.add_key_value_metadata({"stats": json.dumps(dict(sorted(stats.items())))})
    os.replace(tmp, path)


def _quotas(partitions: list[Partition], rows: list[int]) -> list[int]:
    """Rows of each partition that count: all, or what is left of its source's limit in order."""
    left: dict[str, int | None] = {p.source.name: p.source.limit for p in partitions}
    quotas = []
    for part, n in zip(partitions, rows):
        remaining = left[part.source.name]
        quotas.append(n if remaining is None else min(n, remaining))
        if remaining is not None:
            left[part.source.name] = remaining - quotas[-1]
    return quotas


# Pass 2: duplicates -----------------------------------------------------------------------------


def _find_duplicates(parts: list[str], quotas: list[int], cfg: DataConfig) -> dict[int, tuple[str, str]]:
    """order -> (exact_duplicate | near_duplicate, id of the document kept in its place)."""
    buckets = worker_count(cfg.num_workers)
    tasks = [{"column": "hash", "bucket": b, "buckets": buckets} for b in range(buckets)]
    if cfg.dedup.near:
        tasks += [{"column": f"band_{i}", "bucket": 0, "buckets": 1} for i in range(cfg.dedup.bands)]

    def index(task: dict[str, Any]) -> dict[str, Any]:
        hits = first_seen(parts, task["column"], quotas, task["bucket"], task["buckets"], ROW_BITS)
        return {"column": task["column"], "hits": json.dumps(hits)}

    results = parallel_map(tasks, index, cfg.num_workers, "dedup")
    exact = [tuple(h) for r in results if r["column"] == "hash" for h in json.loads(r["hits"])]
    near = [tuple(h) for r in results if r["column"] != "hash" for h in json.loads(r["hits"])]
    found = {order: ("near_duplicate", first) for order, first in earliest_of_groups(near).items()}
    found.update({order: ("exact_duplicate", first_id) for order, _, _, first_id in exact})
    return found


# Pass 3: write train / val / rejects -------------------------------------------------------------


def _writer(parts: list[str], val_fraction: float, out: Path):
    def run(item: dict[str, Any]) -> dict[str, Any]:
        counts = _write_partition(
            parts[item["p"]],
            item["p"],
            item["quota"],
            dict((order, (kind, first)) for order, kind, first in json.loads(item["dups"])),
            val_fraction,
            out,
        )
        return {"counts": json.dumps(counts)}

    return run


def _write_partition(part: str, index: int, quota: int, dups: dict[int, tuple[str, str]], val_fraction: float,
                     out: Path) -> dict[str, Any]:  # fmt: skip
    """Stream one partition's rows into its train, val and rejects files, a row group at a time."""
    counts: Counter = Counter()
    name = f"part-{index:05d}.parquet"
    outputs = {"train": _Output(out / "train" / name, DOCS_SCHEMA), "val": _Output(out / "val" / name, DOCS_SCHEMA),
               "rejects": _Output(out / "rejects" / name, REJECTS_SCHEMA)}  # fmt: skip
    for batch in pq.ParquetFile(part).iter_batches(batch_size=ROWS_PER_GROUP):
        for row in batch.to_pylist():
            if row["order"] & ((1 << ROW_BITS) - 1) >= quota:
                break
            counts["in"] += 1
            if row["reason"] is not None:
                counts[f"rejected.{row['reason']}"] += 1
                outputs["rejects"].add((row["id"], row["source"], row["reason"], row["detail"], row["preview"]))
            elif row["order"] in dups:
                kind, first = dups[row["order"]]
                counts["duplicates"] += 1
                outputs["rejects"].add((row["id"], row["source"], kind, f"duplicate of {first}", row["preview"]))
            else:
                split = "val" if row["hash"] % SPLIT_BUCKETS < val_fraction * SPLIT_BUCKETS else "train"
                counts[split] += 1
                outputs[split].add((row["id"], row["text"], row["source"], row["meta"]))
    for output in outputs.values():
        output.close()
    return dict(counts)


class _Output:
    """One output Parquet file, written a row group at a time through a temp file, and renamed into
    place when closed; no file at all when it gets no rows."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.tmp = path.with_name(path.name + ".tmp")
        self.rows: list[tuple] = []
        self.writer: pq.ParquetWriter | None = None

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        columns = list(zip(*self.rows))
        self.writer.write_batch(pa.record_batch([list(c) for c in columns], schema=self.schema))
        self.rows = []

    def close(self) -> None:
        if self.rows:
            self._flush()
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.path)


# Accounting -------------------------------------------------------------------------------------


def _summarise(partitions: list[Partition], cleaned: list[dict], written: list[dict], cfg: DataConfig) -> dict:
    per_source: dict[str, Counter] = {s.name: Counter() for s in cfg.sources}
    steps: dict[str, Counter] = {s.name: Counter() for s in cfg.sources}
    for part, c, w in zip(partitions, cleaned, written):
        per_source[part.source.name].update(json.loads(w["counts"]))
        steps[part.source.name].update(json.loads(c["stats"]))
    sources = {name: _shape(c) for name, c in per_source.items()}
    total = _shape(sum(per_source.values(), Counter()))
    for name, c in {**sources, "total": total}.items():
        assert c["in"] == c["kept"] + c["duplicates"] + sum(c["rejected"].values()), f"accounting broken for {name}"
    return {
        "counts": {**total, "sources": sources},
        "steps": {name: dict(sorted(s.items())) for name, s in steps.items()},
        "sources": {s.name: {"kind": s.kind, "weight": s.weight,
                             "partitions": sum(p.source.name == s.name for p in partitions)} for s in cfg.sources},
    }  # fmt: skip


def _shape(c: Counter) -> dict[str, Any]:
    rejected = {k.removeprefix("rejected."): v for k, v in sorted(c.items()) if k.startswith("rejected.")}
    return {"in": c["in"], "kept": c["train"] + c["val"], "train": c["train"], "val": c["val"],
            "duplicates": c["duplicates"], "rejected": rejected}  # fmt: skip


def funnel_rows(counts: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The document funnel as a table: a column per source and the total; rows in, rejected by reason,
    duplicates, kept, and the kept split into train and val."""
    columns = {**counts["sources"], "total": counts}
    reasons = sorted({r for c in columns.values() for r in c["rejected"]})
    values = [("in", lambda c: c["in"])]
    values += [(f"rejected: {r}", lambda c, r=r: c["rejected"].get(r, 0)) for r in reasons]
    values += [("duplicates", lambda c: c["duplicates"]), ("kept", lambda c: c["kept"]),
               ("  train", lambda c: c["train"]), ("  val", lambda c: c["val"])]  # fmt: skip
    return ["documents", *columns], [[label, *[f"{value(c):,}" for c in columns.values()]] for label, value in values]
