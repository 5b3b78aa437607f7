"""Deduplication: an exact hash of normalised text, and MinHash LSH bands for near-duplicates.

Hashes are computed where documents are cleaned. Finding collisions then only needs the hash
columns: each index task reads one column (or one bucket of it) from every partition in order and
keeps the first document of each hash, so memory is the hash index, never the text.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow.parquet as pq
import xxhash

from pipeline.config import DedupConfig

WORD = re.compile(r"\w+")
MERSENNE = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
SHINGLE_CHUNK = 4096


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


Hit = tuple[int, str, int, str]  # (order, id) of a later document, then of the first with its hash


def first_seen(parts: list[str], column: str, quotas: list[int], bucket: int, buckets: int, row_bits: int) -> list[Hit]:
    """Every kept document whose hash in `column` was seen before, with the first one seen.

    Partitions are read in order, so "first" is the same whatever the number of workers; rows past
    a partition's quota (its source's limit) are not read. Only hashes in `bucket` of `buckets` are
    indexed, so several tasks can split one column between them.
    """
    index: dict[int, tuple[int, str]] = {}
    hits: list[Hit] = []
    row_mask = (1 << row_bits) - 1
    for path, quota in zip(parts, quotas):
        table = pq.read_table(path, columns=["order", "id", "reason", column])
        orders, ids, reasons, hashes = (table.column(i).to_pylist() for i in range(4))
        for order, doc_id, reason, value in zip(orders, ids, reasons, hashes):
            if order & row_mask >= quota:
                break
            if reason is not None or value % buckets != bucket:
                continue
            first = index.setdefault(value, (order, doc_id))
            if first[0] != order:
                hits.append((order, doc_id, *first))
    return hits


def earliest_of_groups(hits: list[Hit]) -> dict[int, str]:
    """Join documents linked by any shared hash into groups; map every member but the earliest
    (by order) to the earliest's id."""
    parent: dict[int, int] = {}
    ids: dict[int, str] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for later, later_id, first, first_id in hits:
        ids[later], ids[first] = later_id, first_id
        a, b = root(later), root(first)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {doc: ids[root(doc)] for doc in parent if root(doc) != doc}
