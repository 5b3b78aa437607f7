"""Deduplication: the exact hash, MinHash LSH bands, keys files, bucket edges and components."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DedupConfig
from pipeline.dedup import (
    EDGE,
    KEY,
    ROW_BITS,
    KeyWriter,
    MinHasher,
    bucket_edges,
    duplicates_of,
    earliest_in_components,
    exact_hash,
    first_of_key,
    read_bucket,
)

# Exact hash -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["hello world", "Hello World", "  HELLO\tworld\n", "hello\n\n   world  "])
def test_exact_hash_ignores_case_and_whitespace(variant):
    assert exact_hash(variant) == exact_hash("Hello  world")


@pytest.mark.parametrize("other", ["hello world!", "helloworld", "hello word", "world hello", ""])
def test_exact_hash_differs_for_different_text(other):
    assert exact_hash(other) != exact_hash("hello world")


def test_exact_hash_is_an_unsigned_64_bit_integer_that_is_stable():
    value = exact_hash("The same text every run.")
    assert 0 <= value < 1 << 64 and value == exact_hash("The same text every run.")


# MinHash ---------------------------------------------------------------------------------------------

VOCAB = [f"{a}{b}{c}" for a in ("ka", "lo", "mi", "ne", "ru", "sa", "te", "vo") for b in "aeiou" for c in "nrstl"]


def words(seed: int, n: int = 300) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=n)


def test_band_hashes_are_the_same_from_two_hashers_with_the_same_config():
    cfg = DedupConfig(near=True)
    text = " ".join(words(1))
    first, second = MinHasher(cfg).band_hashes(text), MinHasher(cfg).band_hashes(text)
    assert first == second and len(first) == cfg.bands
    assert all(isinstance(h, int) and 0 <= h < 1 << 64 for h in first)


def test_band_hashes_follow_the_configured_number_of_bands():
    assert len(MinHasher(DedupConfig(bands=5, rows=3)).band_hashes("a short text")) == 5


def test_band_hashes_ignore_case_and_punctuation():
    hasher = MinHasher(DedupConfig())
    text = " ".join(words(2))
    assert hasher.band_hashes(text) == hasher.band_hashes(text.upper().replace(" ", ", "))


def test_near_identical_texts_share_a_band_and_unrelated_texts_share_none():
    hasher = MinHasher(DedupConfig())
    base = words(3)
    edited = list(base)
    edited[150] = "changedword"
    unrelated = words(4)
    bands = hasher.band_hashes(" ".join(base))
    shared = sum(a == b for a, b in zip(bands, hasher.band_hashes(" ".join(edited))))
    assert shared >= 1
    assert sum(a == b for a, b in zip(bands, hasher.band_hashes(" ".join(unrelated)))) == 0


def test_band_hashes_of_short_and_empty_texts_do_not_fail():
    hasher = MinHasher(DedupConfig(shingle_words=5))
    assert len(hasher.band_hashes("")) == len(hasher.band_hashes("two words")) == 16
    assert hasher.band_hashes("two words") != hasher.band_hashes("other words")


# Keys files and bucket edges --------------------------------------------------------------------


def order(partition: int, row: int) -> int:
    return partition << ROW_BITS | row


BIG = (1 << 64) - 5  # a hash above the signed 64-bit range


def write_keys(path: Path, partition: int, hashes: list[int], buckets: int, bands: int = 0) -> str:
    """One partition's keys file: row r has exact hash hashes[r] and bands r * 10 + b (unique)."""
    writer = KeyWriter(buckets)
    for row, value in enumerate(hashes):
        writer.add(order(partition, row), value, [order(partition, row) * 10 + b for b in range(bands)])
    writer.write(path)
    return str(path)


@pytest.fixture(params=[1, 2, 3, 7])
def buckets(request) -> int:
    return request.param


@pytest.fixture
def keys(tmp_path, buckets) -> list[str]:
    return [
        write_keys(tmp_path / "p0.keys", 0, [11, BIG, 11, 33], buckets),
        write_keys(tmp_path / "p1.keys", 1, [BIG, 44, 11, 33], buckets),
        write_keys(tmp_path / "p2.keys", 2, [44], buckets),
    ]


def edges(keys: list[str], quotas: list[int], buckets: int, tmp_path: Path, kind: str = "exact") -> list[tuple]:
    out = tmp_path / "edges"
    out.mkdir(parents=True, exist_ok=True)
    for b in range(buckets):
        bucket_edges(keys, quotas, b, buckets, out)
    return sorted(e for b in range(buckets) for e in np.load(out / f"{kind}-{b:05d}.npy").tolist())


def test_each_later_document_gets_an_edge_to_the_first_with_its_hash_whatever_the_buckets(keys, buckets, tmp_path):
    assert edges(keys, [4, 4, 1], buckets, tmp_path) == [
        (order(0, 2), order(0, 0)),
        (order(1, 0), order(0, 1)),
        (order(1, 2), order(0, 0)),
        (order(1, 3), order(0, 3)),
        (order(2, 0), order(1, 1)),
    ]


def test_rows_past_a_partition_quota_are_not_read(keys, buckets, tmp_path):
    # p0 keeps rows 0-1, p1 rows 0-2, p2 nothing
    assert edges(keys, [2, 3, 0], buckets, tmp_path) == [(order(1, 0), order(0, 1)), (order(1, 2), order(0, 0))]


def test_each_bucket_reads_only_its_own_keys(tmp_path):
    path = write_keys(tmp_path / "p.keys", 0, [8, 9, 10, 12], buckets=4, bands=2)
    for b in range(4):
        read = read_bucket(path, b, 4, quota=10)
        assert all(k % 4 == b for k in read["exact"]["key"].tolist() + read["near"]["key"].tolist())
    everything = [read_bucket(path, b, 4, 10) for b in range(4)]
    assert sorted(k for r in everything for k in r["exact"]["key"].tolist()) == [8, 9, 10, 12]
    assert len([k for r in everything for k in r["near"]["key"].tolist()]) == 8


def test_many_random_hashes_give_the_same_edges_in_any_number_of_buckets(tmp_path):
    rng = random.Random(5)
    pool = [rng.getrandbits(64) for _ in range(40)]
    hashes = [[rng.choice(pool) for _ in range(60)] for _ in range(4)]
    quotas = [rng.randint(30, 60) for _ in range(4)]
    results = []
    for buckets in (1, 4, 5):
        keys = [write_keys(tmp_path / f"{buckets}-{p}.keys", p, h, buckets) for p, h in enumerate(hashes)]
        results.append(edges(keys, quotas, buckets, tmp_path / str(buckets)))
    assert results[0] == results[1] == results[2] and len(results[0]) > 50
    assert all(first < later for later, first in results[0])  # always an earlier document


def test_first_of_key_never_links_a_document_to_itself():
    rows = np.array([(7, 3), (7, 3), (7, 9)], KEY)
    assert first_of_key(rows).tolist() == [(9, 3)]


# Duplicates --------------------------------------------------------------------------------------


def components(pairs: list[tuple[int, int]]) -> dict[int, int]:
    members, earliest = earliest_in_components(np.array(pairs, EDGE))
    return dict(zip(members.tolist(), earliest.tolist()))


def test_every_member_of_a_chain_maps_to_the_earliest():
    # 1-2 share one band, 2-3 another: 1, 2 and 3 are one component led by 1
    assert components([(2, 1), (3, 2)]) == {2: 1, 3: 1}


def test_components_do_not_depend_on_the_order_of_edges():
    pairs = [(3, 2), (2, 1), (9, 8), (5, 3)]
    assert components(pairs) == components(pairs[::-1]) == {2: 1, 3: 1, 5: 1, 9: 8}


def test_components_join_groups_found_through_different_bands():
    # band 0: 3 ~ 1; band 1: 4 ~ 2; band 2: 4 ~ 3  ->  all four are one component led by 1
    assert components([(3, 1), (4, 2), (4, 3)]) == {2: 1, 3: 1, 4: 1}


def test_a_long_zigzag_path_is_one_component():
    nodes = random.Random(1).sample(range(10_000), 500)
    found = components(list(zip(nodes[1:], nodes[:-1])))
    assert set(found) == set(nodes) - {min(nodes)} and set(found.values()) == {min(nodes)}


def test_components_of_nothing_are_empty():
    assert components([]) == {}


def save_edges(folder: Path, exact: list[tuple[int, int]], near: list[list[tuple[int, int]]]) -> Path:
    folder.mkdir()
    np.save(folder / "exact-00000.npy", np.array(exact, EDGE))
    np.save(folder / "exact-00001.npy", np.array([], EDGE))
    for b, pairs in enumerate(near):
        np.save(folder / f"near-{b:05d}.npy", np.array(pairs, EDGE))
    return folder


def test_exact_duplicates_point_at_their_first_and_near_ones_at_their_earliest(tmp_path):
    # 5 is an exact copy of 2, so its near edges (to 2, in both bands) are dropped; 2 and 4 are near
    # copies of 1, and 8 of 4
    folder = save_edges(tmp_path / "e", exact=[(5, 2)], near=[[(5, 2), (2, 1), (8, 4)], [(5, 2), (4, 1), (4, 1)]])
    table = duplicates_of(folder, buckets=2)
    assert table.tolist() == [(2, 1, True), (4, 1, True), (5, 2, False), (8, 1, True)]
