"""Deduplication: the exact hash, MinHash LSH bands, and the ordered index over hash columns."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DedupConfig
from pipeline.dedup import MinHasher, earliest_of_groups, exact_hash, first_seen

ROW_BITS = 32
SCHEMA = pa.schema([("order", pa.int64()), ("id", pa.string()), ("reason", pa.string()), ("hash", pa.uint64())])


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


# first_seen ------------------------------------------------------------------------------------------


def write_part(path: Path, partition: int, rows: list[tuple[str, str | None, int]]) -> str:
    """One partition's hash file: (id, reason, hash) per row, in order."""
    table = pa.table(
        {
            "order": [partition << ROW_BITS | row for row in range(len(rows))],
            "id": [r[0] for r in rows],
            "reason": [r[1] for r in rows],
            "hash": [r[2] for r in rows],
        },
        schema=SCHEMA,
    )
    pq.write_table(table, path)
    return str(path)


def order(partition: int, row: int) -> int:
    return partition << ROW_BITS | row


BIG = (1 << 64) - 5  # a hash above the signed 64-bit range


@pytest.fixture
def parts(tmp_path) -> list[str]:
    return [
        write_part(
            tmp_path / "p0.parquet",
            0,
            [("a", None, 11), ("b", None, BIG), ("c", "too_short", 11), ("d", None, 11), ("e", None, 33)],
        ),
        write_part(tmp_path / "p1.parquet", 1, [("f", None, BIG), ("g", None, 44), ("h", None, 11), ("i", None, 33)]),
        write_part(tmp_path / "p2.parquet", 2, [("j", "malformed_json", 44), ("k", None, 44)]),
    ]


def test_first_seen_pairs_each_later_document_with_the_first_of_its_hash(parts):
    hits = first_seen(parts, "hash", [5, 4, 2], 0, 1, ROW_BITS)
    assert hits == [
        (order(0, 3), "d", order(0, 0), "a"),
        (order(1, 0), "f", order(0, 1), "b"),
        (order(1, 2), "h", order(0, 0), "a"),
        (order(1, 3), "i", order(0, 4), "e"),
        (order(2, 1), "k", order(1, 1), "g"),
    ]


def test_first_seen_skips_rejected_rows_even_when_they_come_first(tmp_path):
    first = write_part(tmp_path / "r.parquet", 0, [("x", "too_short", 7), ("y", None, 7), ("z", None, 7)])
    assert first_seen([first], "hash", [3], 0, 1, ROW_BITS) == [(order(0, 2), "z", order(0, 1), "y")]


def test_first_seen_does_not_read_rows_past_a_partition_quota(parts):
    hits = first_seen(parts, "hash", [2, 3, 0], 0, 1, ROW_BITS)
    # p0 keeps a, b; p1 keeps f, g, h; p2 nothing: d, i and k are never indexed
    assert hits == [(order(1, 0), "f", order(0, 1), "b"), (order(1, 2), "h", order(0, 0), "a")]


def test_first_seen_quota_past_the_end_reads_everything(parts):
    assert first_seen(parts, "hash", [100, 100, 100], 0, 1, ROW_BITS) == first_seen(
        parts, "hash", [5, 4, 2], 0, 1, ROW_BITS
    )


@pytest.mark.parametrize("buckets", [2, 3, 7])
def test_buckets_split_the_work_and_their_union_is_the_single_bucket_result(parts, buckets):
    whole = first_seen(parts, "hash", [5, 4, 2], 0, 1, ROW_BITS)
    split = [hit for b in range(buckets) for hit in first_seen(parts, "hash", [5, 4, 2], b, buckets, ROW_BITS)]
    assert sorted(split) == sorted(whole) and len(split) == len(whole)


def test_buckets_agree_with_one_bucket_on_many_random_hashes(tmp_path):
    rng = random.Random(5)
    pool = [rng.getrandbits(64) for _ in range(40)]
    files, quotas = [], []
    for p in range(4):
        rows = [(f"p{p}r{r}", rng.choice([None, None, None, "too_short"]), rng.choice(pool)) for r in range(60)]
        files.append(write_part(tmp_path / f"p{p}.parquet", p, rows))
        quotas.append(rng.randint(30, 60))
    whole = first_seen(files, "hash", quotas, 0, 1, ROW_BITS)
    assert len(whole) > 50
    for buckets in (2, 4, 5):
        split = [h for b in range(buckets) for h in first_seen(files, "hash", quotas, b, buckets, ROW_BITS)]
        assert sorted(split) == sorted(whole)
    # every hit points at an earlier kept document
    assert all(first < later for later, _, first, _ in whole)


def test_first_seen_reads_any_named_hash_column(tmp_path):
    path = tmp_path / "bands.parquet"
    pq.write_table(
        pa.table(
            {
                "order": pa.array([0, 1], pa.int64()),
                "id": ["a", "b"],
                "reason": pa.array([None, None], pa.string()),
                "band_3": pa.array([9, 9], pa.uint64()),
            }
        ),
        path,
    )
    assert first_seen([str(path)], "band_3", [2], 0, 1, ROW_BITS) == [(1, "b", 0, "a")]


# earliest_of_groups -------------------------------------------------------------------------------------


def test_earliest_of_groups_maps_every_member_of_a_chain_to_the_earliest():
    # a-b share one band, b-c another: a, b and c are one group led by a
    hits = [(2, "b", 1, "a"), (3, "c", 2, "b")]
    assert earliest_of_groups(hits) == {2: "a", 3: "a"}


def test_earliest_of_groups_does_not_depend_on_the_order_of_hits():
    hits = [(3, "c", 2, "b"), (2, "b", 1, "a"), (9, "z", 8, "y"), (5, "e", 3, "c")]
    expected = {2: "a", 3: "a", 5: "a", 9: "y"}
    assert earliest_of_groups(hits) == expected
    assert earliest_of_groups(list(reversed(hits))) == expected


def test_earliest_of_groups_joins_groups_found_through_different_columns():
    # band 0: c ~ a; band 1: d ~ b; band 2: d ~ c  ->  all four are one group led by a
    hits = [(3, "c", 1, "a"), (4, "d", 2, "b"), (4, "d", 3, "c")]
    assert earliest_of_groups(hits) == {2: "a", 3: "a", 4: "a"}


def test_earliest_of_groups_of_nothing_is_empty():
    assert earliest_of_groups([]) == {}
