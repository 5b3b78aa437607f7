"""Deduplication: an exact hash of normalised text, and MinHash LSH bands for near-duplicates.

No step holds more than one bucket of keys, and nothing per document reaches the driver:

1. where a partition is cleaned, `KeyWriter` writes every kept document's keys (its exact hash and
   its band hashes, each with the document's order) into the partition's keys file, grouped by
   bucket (key % buckets);
2. one task per bucket (`bucket_edges`) reads that bucket's slice of every keys file, sorts it with
   numpy, and writes an edge from each later document to the first document with the same key;
3. one task (`duplicates_of`) maps each exact duplicate to its first, joins the other documents'
   near edges into connected components on int64 arrays, and maps every member of a component to
   its earliest.

An order is `partition << ROW_BITS | row`, so "first" and "earliest" are the same whatever the
number of workers.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import xxhash

from pipeline.config import DedupConfig

WORD = re.compile(r"\w+")
MERSENNE = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
SHINGLE_CHUNK = 4096
ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1

KEY = np.dtype([("key", "<u8"), ("order", "<i8")])
EDGE = np.dtype([("later", "<i8"), ("first", "<i8")])
DUPLICATE = np.dtype([("later", "<i8"), ("first", "<i8"), ("near", "?")])
KINDS = ("exact", "near")


def exact_hash(text: str) -> int:
    """64-bit hash of the text lower-cased with whitespace collapsed."""
    normalised = " ".join(text.lower().split())
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=8).digest(), "little")


class MinHasher:
    """MinHash signatures over word shingles, folded into one 64-bit hash per LSH band."""

    def __init__(self, cfg: DedupConfig, seed: int = 1):
        self.k, self.bands, self.rows = cfg.shingle_words, cfg.bands, cfg.rows
        rng = np.random.default_rng(seed)
        n = self.bands * self.rows
        self.a = rng.integers(1, int(MERSENNE), n, dtype=np.uint64)
        self.b = rng.integers(0, int(MERSENNE), n, dtype=np.uint64)

    def band_hashes(self, text: str) -> list[int]:
        words = WORD.findall(text.lower())
        shingles = {" ".join(words[i : i + self.k]) for i in range(max(1, len(words) - self.k + 1))}
        hashes = np.fromiter((xxhash.xxh32_intdigest(s.encode()) for s in shingles), np.uint64, len(shingles))
        signature = np.full(self.bands * self.rows, MAX_HASH, dtype=np.uint64)
        for start in range(0, len(hashes), SHINGLE_CHUNK):  # bounded memory for very long documents
            block = hashes[start : start + SHINGLE_CHUNK, None]
            np.minimum(signature, (((block * self.a + self.b) % MERSENNE) & MAX_HASH).min(axis=0), out=signature)
        rows = signature.reshape(self.bands, self.rows)
        return [xxhash.xxh64_intdigest(rows[i].tobytes(), seed=i) for i in range(self.bands)]


# 1. Keys files -------------------------------------------------------------------------------------
#
# A keys file is 2 × buckets + 1 little-endian int64 offsets, then KEY records: bucket b's exact keys
# are records offsets[2b] to offsets[2b + 1], its near keys offsets[2b + 1] to offsets[2b + 2].


class KeyWriter:
    """One partition's keys, gathered as its documents are cleaned (16 B per key) and written once,
    grouped by bucket, so that each bucket task reads one contiguous slice of the file."""

    def __init__(self, buckets: int):
        self.buckets = buckets
        self.pending: tuple[list[int], list[int], list[list[int]]] = ([], [], [])
        self.chunks: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}

    def add(self, order: int, exact: int, bands: list[int]) -> None:
        orders, hashes, band_rows = self.pending
        orders.append(order)
        hashes.append(exact)
        band_rows.append(bands)
        if len(orders) >= SHINGLE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        orders, hashes, band_rows = self.pending
        if orders:
            order = np.array(orders, np.int64)
            self.chunks["exact"].append(_keys(np.array(hashes, np.uint64), order))
            bands = np.array(band_rows, np.uint64).reshape(len(orders), -1)
            self.chunks["near"].append(_keys(bands.ravel(), np.repeat(order, bands.shape[1])))
        self.pending = ([], [], [])

    def write(self, path: Path) -> None:
        """Write the keys file atomically (a temp file renamed into place)."""
        self._flush()
        records = [np.concatenate(self.chunks[kind]) if self.chunks[kind] else np.empty(0, KEY) for kind in KINDS]
        segment = np.concatenate([(r["key"] % np.uint64(self.buckets)).astype(np.int64) * 2 + i
                                  for i, r in enumerate(records)])  # fmt: skip
        ordered = np.concatenate(records)[np.argsort(segment, kind="stable")]
        offsets = np.zeros(2 * self.buckets + 1, "<i8")
        np.cumsum(np.bincount(segment, minlength=2 * self.buckets), out=offsets[1:])
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            offsets.tofile(f)
            ordered.tofile(f)
        os.replace(tmp, path)


def _keys(keys: np.ndarray, orders: np.ndarray) -> np.ndarray:
    out = np.empty(len(keys), KEY)
    out["key"], out["order"] = keys, orders
    return out


def read_bucket(path: str | Path, bucket: int, buckets: int, quota: int) -> dict[str, np.ndarray]:
    """Bucket `bucket`'s exact and near keys from one keys file, without rows at or past `quota`."""
    with open(path, "rb") as f:
        offsets = np.fromfile(f, "<i8", 2 * buckets + 1)
        start, middle, end = (int(x) for x in offsets[2 * bucket : 2 * bucket + 3])
        f.seek(offsets.nbytes + start * KEY.itemsize)
        rows = np.fromfile(f, KEY, end - start)
    split = {"exact": rows[: middle - start], "near": rows[middle - start :]}
    return {kind: r[(r["order"] & ROW_MASK) < quota] for kind, r in split.items()}


# 2. Edges, one task per bucket ----------------------------------------------------------------------


def first_of_key(keys: np.ndarray) -> np.ndarray:
    """An edge from every document to the first (lowest order) document with the same key."""
    keys = keys[np.lexsort((keys["order"], keys["key"]))]
    starts = np.ones(len(keys), bool)
    starts[1:] = keys["key"][1:] != keys["key"][:-1]
    first = keys["order"][np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    later = ~starts & (keys["order"] != first)
    edges = np.empty(int(later.sum()), EDGE)
    edges["later"], edges["first"] = keys["order"][later], first[later]
    return edges


def bucket_edges(keys_files: list[str], quotas: list[int], bucket: int, buckets: int, out: Path) -> dict[str, int]:
    """Write `out/{exact,near}-BBBBB.npy`, the edges among bucket `bucket`'s keys of every partition."""
    read = [read_bucket(path, bucket, buckets, quota) for path, quota in zip(keys_files, quotas)]
    counts = {}
    for kind in KINDS:
        edges = first_of_key(np.concatenate([r[kind] for r in read]) if read else np.empty(0, KEY))
        _save(out / f"{kind}-{bucket:05d}.npy", edges)
        counts[kind] = len(edges)
    return counts


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


# 3. Duplicates, one task --------------------------------------------------------------------------


def duplicates_of(edges: Path, buckets: int) -> np.ndarray:
    """DUPLICATE rows, sorted by `later`, from the edge files in `edges`: every exact duplicate with
    the first document of its text, then every other document linked by near edges with the
    earliest of its component. An exact duplicate has all its first's band hashes, so its own near
    edges add nothing and are dropped as each file is read."""
    exact = np.concatenate([np.load(edges / f"exact-{b:05d}.npy") for b in range(buckets)])
    near = []
    for b in range(buckets):
        part = np.load(edges / f"near-{b:05d}.npy")
        near.append(np.unique(part[~np.isin(part["later"], exact["later"])]))
    members, earliest = earliest_in_components(np.concatenate(near) if near else np.empty(0, EDGE))
    out = np.empty(len(exact) + len(members), DUPLICATE)
    out["later"] = np.concatenate([exact["later"], members])
    out["first"] = np.concatenate([exact["first"], earliest])
    out["near"] = np.arange(len(out)) >= len(exact)
    return out[np.argsort(out["later"], kind="stable")]


def earliest_in_components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member, earliest) for every node of the graph that is not the earliest of its connected
    component. Labels start as each node's own rank and take the lowest label across every edge,
    then follow labels to their end, until nothing changes: a few rounds for LSH's star-shaped
    groups. Memory: the edges and three int64 arrays per node."""
    nodes, ends = np.unique(np.stack([edges["later"], edges["first"]]), return_inverse=True)
    u, v = ends.reshape(2, -1)
    label = np.arange(len(nodes))
    while True:
        lowest = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, lowest)
        np.minimum.at(new, v, lowest)
        while not np.array_equal(new[new], new):
            new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    members = label != np.arange(len(nodes))
    return nodes[members], nodes[label[members]]
