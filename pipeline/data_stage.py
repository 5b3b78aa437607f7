"""The data stage: read, clean, deduplicate and split every source into Parquet, on Ray.

Three passes, each a Ray Data map over numbered items, so the output is the same whatever the
number of workers:

1. clean: each partition (a file, URL, hub shard) is read, cleaned and hashed into
   `work/part-NNNNN-<identity>.parquet` and its keys file (atomic; a rerun after a kill skips the
   partitions already done, and only those: the name carries the digest of the input it read);
2. dedup: one task per key bucket writes edge files, one task turns them into `duplicates.npy`, and
   one task per partition that others duplicate names its documents (pipeline.dedup); the driver
   holds one number per partition, never one per document;
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.clean import build_steps, clean
from pipeline.config import DataConfig
from pipeline.dedup import ROW_BITS, ROW_MASK, KeyWriter, MinHasher, bucket_edges, duplicates_of, exact_hash
from pipeline.documents import DOCS_SCHEMA, REJECTS_SCHEMA
from pipeline.parallel import parallel_map
from pipeline.sources import DataError, Partition, plan, read_partition

log = logging.getLogger(__name__)

ROWS_PER_GROUP = 1024
SPLIT_BUCKETS = 1_000_000


def run_data(cfg: DataConfig, out: Path) -> dict[str, Any]:
    """Run the whole stage into `out`; returns the manifest summary (counts, step stats, sources)."""
    partitions = plan(cfg)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log.info("data: %d partitions from %d sources", len(partitions), len(cfg.sources))

    cleaned = parallel_map([{"p": p.index} for p in partitions], _cleaner(partitions, cfg, work), cfg.num_workers,
                           "clean", memory=_task_memory(2 * cfg.partition_bytes))  # keys and row groups  # fmt: skip
    failed = [r["error"] for r in cleaned if r["error"]]
    if failed:
        raise DataError("\n".join(failed))
    quotas = _quotas(partitions, [r["rows"] for r in cleaned])
    parts = [_part_path(work, p) for p in partitions]

    _find_duplicates(parts, quotas, cfg, work)
    items = [{"p": p.index, "quota": quotas[p.index]} for p in partitions]
    written = parallel_map(items, _writer(parts, cfg.val_fraction, out), cfg.num_workers, "write")

    summary = _summarise(partitions, cleaned, written, cfg)
    shutil.rmtree(work)
    return summary


def _part_path(work: Path, part: Partition) -> Path:
    return work / f"part-{part.index:05d}-{part.identity}.parquet"


def _keys_path(part: Path) -> Path:
    """The keys file (pipeline.dedup) written with a partition's work file."""
    return part.with_suffix(".keys")


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
    keys = KeyWriter(cfg.dedup.buckets)
    schema = pa.schema(
        [("order", pa.int64()), ("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
         ("meta", pa.string()), ("reason", pa.string()), ("detail", pa.string()), ("preview", pa.string()),
         ("hash", pa.uint64())]
    )  # fmt: skip
    stats: Counter = Counter()
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    with pq.ParquetWriter(tmp, schema) as writer:
        for row, doc in enumerate(read_partition(part, cfg, stats)):
            preview = doc.preview
            doc = clean(doc, steps, stats) if doc.reason is None else doc
            kept = doc.reason is None
            order, digest = part.index << ROW_BITS | row, exact_hash(doc.text) if kept else 0
            if kept:
                keys.add(order, digest, minhash.band_hashes(doc.text) if minhash else [])
            values = {
                "order": order, "id": doc.id, "source": doc.source, "text": doc.text if kept else "",
                "meta": doc.meta_json(), "reason": doc.reason, "detail": doc.detail, "preview": preview,
                "hash": digest,
            }  # fmt: skip
            for name in schema.names:
                columns[name].append(values[name])
            if len(columns["order"]) >= ROWS_PER_GROUP:
                writer.write_batch(pa.record_batch(columns, schema=schema))
                columns = {name: [] for name in schema.names}
        if columns["order"]:
            writer.write_batch(pa.record_batch(columns, schema=schema))
        writer.add_key_value_metadata({"stats": json.dumps(dict(sorted(stats.items())))})
    keys.write(_keys_path(path))  # before the work file, whose presence marks the partition done
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


def _find_duplicates(parts: list[Path], quotas: list[int], cfg: DataConfig, work: Path) -> None:
    """Write `work/duplicates.npy` (DUPLICATE rows by order) and `work/names/` (the id of every
    document another duplicates).

    Buckets of keys become edges in parallel; one task (not the driver) turns all edges into
    duplicates; one task per partition that holds a first document names its firsts."""
    keys = [str(_keys_path(p)) for p in parts]
    buckets, edges = cfg.dedup.buckets, work / "edges"
    edges.mkdir(exist_ok=True)
    per_bucket = sum(os.path.getsize(k) for k in keys) / buckets

    def index(task: dict[str, Any]) -> dict[str, Any]:
        return bucket_edges(keys, quotas, task["bucket"], buckets, edges)

    parallel_map([{"bucket": b} for b in range(buckets)], index, cfg.num_workers, "dedup",
                 memory=_task_memory(3 * per_bucket))  # fmt: skip

    def group(_: dict[str, Any]) -> dict[str, Any]:
        table = duplicates_of(edges, buckets)
        np.save(work / "duplicates.npy", table)
        firsts = np.unique(table["first"])
        np.save(work / "firsts.npy", firsts)
        return {"partitions": json.dumps(np.unique(firsts >> ROW_BITS).tolist())}

    edge_bytes = sum(f.stat().st_size for f in edges.iterdir())
    holding = json.loads(parallel_map([{}], group, 1, "group", memory=_task_memory(4 * edge_bytes))[0]["partitions"])
    names = work / "names"
    names.mkdir(exist_ok=True)

    def name(task: dict[str, Any]) -> dict[str, Any]:
        return {"named": _name_firsts(parts[task["p"]], task["p"], work / "firsts.npy", names)}

    parallel_map([{"p": p} for p in holding], name, cfg.num_workers, "name")


def _task_memory(estimate: float) -> int:
    """What a task asks Ray to reserve: its estimate, and never less than 256 MB (Python and Arrow)."""
    return int(max(estimate, 256 * 2**20))


def _slice(sorted_orders: np.ndarray, partition: int) -> slice:
    """The rows of `sorted_orders` that belong to `partition`."""
    lo, hi = np.searchsorted(sorted_orders, [partition << ROW_BITS, (partition + 1) << ROW_BITS])
    return slice(int(lo), int(hi))


def _name_firsts(part: Path, partition: int, firsts: Path, names: Path) -> int:
    """Write `names/part-NNNNN.parquet`: (order, id) of this partition's documents that others duplicate."""
    orders = np.load(firsts, mmap_mode="r")
    mine = np.asarray(orders[_slice(orders, partition)])
    ids = pq.read_table(part, columns=["id"]).column("id").take(pa.array(mine & ROW_MASK))
    pq.write_table(pa.table({"order": mine, "id": ids}), names / f"part-{partition:05d}.parquet")
    return len(mine)


def _duplicates_in(partition: int, work: Path) -> dict[int, tuple[str, str]]:
    """order -> (exact_duplicate | near_duplicate, id of the document kept in its place), for the
    duplicates in one partition; reads only its slice of `duplicates.npy` and the names it needs."""
    table = np.load(work / "duplicates.npy", mmap_mode="r")
    mine = np.asarray(table[_slice(table["later"], partition)])
    ids: dict[int, str] = {}
    for holder in np.unique(mine["first"] >> ROW_BITS).tolist():
        named = pq.read_table(work / "names" / f"part-{holder:05d}.parquet")
        ids.update(zip(named.column("order").to_pylist(), named.column("id").to_pylist()))
    return {later: ("near_duplicate" if near else "exact_duplicate", ids[first])
            for later, first, near in mine.tolist()}  # fmt: skip


# Pass 3: write train / val / rejects -------------------------------------------------------------


def _writer(parts: list[Path], val_fraction: float, out: Path):
    def run(item: dict[str, Any]) -> dict[str, Any]:
        dups = _duplicates_in(item["p"], out / "work")
        counts = _write_partition(parts[item["p"]], item["p"], item["quota"], dups, val_fraction, out)
        return {"counts": json.dumps(counts)}

    return run


def _write_partition(part: Path, index: int, quota: int, dups: dict[int, tuple[str, str]], val_fraction: float,
                     out: Path) -> dict[str, Any]:  # fmt: skip
    """Stream one partition's rows into its train, val and rejects files, a row group at a time."""
    counts: Counter = Counter()
    name = f"part-{index:05d}.parquet"
    outputs = {"train": _Output(out / "train" / name, DOCS_SCHEMA), "val": _Output(out / "val" / name, DOCS_SCHEMA),
               "rejects": _Output(out / "rejects" / name, REJECTS_SCHEMA)}  # fmt: skip
    for batch in pq.ParquetFile(part).iter_batches(batch_size=ROWS_PER_GROUP):
        for row in batch.to_pylist():
            if row["order"] & ROW_MASK >= quota:
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
