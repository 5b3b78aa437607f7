"""Plan the work of reading every source as numbered partitions, and read one partition.

Partitions are numbered in a fixed order (sources as configured, files sorted), so the output does
not depend on how many workers read them. Everything that can be checked before reading (globs
that match nothing, a hub dataset that does not exist) fails here, at once, before any work starts.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import platform
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.builtin import builtin_units, read_builtin
from pipeline.config import DataConfig, SourceConfig
from pipeline.documents import Doc
from pipeline.download import fetch
from pipeline.join import join_rows
from pipeline.readers import file_format, read_file, split_file
from pipeline.runner import StageError

BUILTIN_PARTS = 8
# A local source smaller than MIN_PARTITIONS × partition_bytes is cut finer, so that it still runs in
# parallel, but never into partitions under MIN_PARTITION_BYTES: each task costs the driver and the
# raylet CPU time that the workers lose on a small node.
MIN_PARTITIONS = 16
MIN_PARTITION_BYTES = 4 << 20


class DataError(StageError):
    """The configured sources cannot be read; the message says which and why."""


Piece = tuple[str, int, int]
"""Part of a local file: (path, start, stop) in bytes (JSON lines) or row groups (Parquet); (path, 0,
-1) is the whole file."""


@dataclass(frozen=True)
class Partition:
    """One unit of reading work: local files or a piece of one, a URL, a shard of a hub dataset or a
    slice of the built-in corpus."""

    index: int
    source: SourceConfig
    target: str
    units: tuple[str, ...] = ()
    pieces: tuple[Piece, ...] = ()
    identity: str = ""
    """What the partition reads, as a short digest: a local file's path, size and mtime; a hub shard's
    dataset, revision and shard count; a URL and its checksum. It names the partition's work file, so
    work left by an earlier attempt is only reused for the same input."""

    @property
    def label(self) -> str:
        return f"{self.source.name}:{self.target}"


def plan(cfg: DataConfig) -> list[Partition]:
    """Every partition of every source, in order; all problems found are raised together."""
    targets: list[tuple[SourceConfig, Target]] = []
    problems: list[str] = []
    names = [s.name for s in cfg.sources]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"data.sources: the name {name!r} is used twice")
    for source in cfg.sources:
        try:
            targets += [(source, target) for target in _targets(source, cfg.partition_bytes)]
        except (ValueError, OSError, ImportError) as e:
            problems.append(f"data.sources[{source.name}]: {e}")
    if problems:
        raise DataError("\n".join(problems))
    return [Partition(i, source, target, units, pieces, _digest(identity))
            for i, (source, (target, units, pieces, identity)) in enumerate(targets)]  # fmt: skip


def input_identity(cfg: DataConfig) -> dict[str, str]:
    """A digest per source of the inputs its config alone does not name, found without reading them
    and without the network: every matching local file's path, size and mtime, and for the built-in
    corpus the Python it comes from. In the data stage's key, so adding, removing or editing a file
    starts a new run instead of reporting the old one as complete. (URLs, hub ids and revisions are
    in the config already; pin `revision` for a hub dataset that may change.)"""
    identity = {}
    for source in cfg.sources:
        if source.kind == "local":
            files = [_file_identity(path) for pattern in source.paths for path in _matches(pattern)]
            identity[source.name] = _digest("\n".join(files))
        elif source.kind == "builtin":
            identity[source.name] = _digest(platform.python_version())
    return identity


Target = tuple[str, tuple[str, ...], tuple[Piece, ...], str]  # (target, units, pieces, identity)


def _targets(source: SourceConfig, partition_bytes: int) -> Iterator[Target]:
    """(target, units, pieces, identity) of each partition of a source."""
    if source.kind == "local":
        paths = []
        for pattern in source.paths:
            matches = _matches(pattern)
            if not matches:
                raise ValueError(f"no file matches {pattern!r}")
            for path in matches:
                file_format(path, source.format)  # an unknown extension is a config error, found now
            paths += matches
        sized = [(path, os.path.getsize(path)) for path in paths]
        target = min(partition_bytes, max(sum(size for _, size in sized) // MIN_PARTITIONS, MIN_PARTITION_BYTES))
        for pieces in _local_partitions(sized, source.format, target):
            identity = "\n".join(f"{_file_identity(path)} {start} {stop}" for path, start, stop in pieces)
            yield _pieces_label(pieces), (), pieces, identity
    elif source.kind == "url":
        for i, url in enumerate(source.paths):
            file_format(url, source.format)
            yield url, (), (), f"{url} {source.sha256[i] if source.sha256 else ''}"
    elif source.kind == "hub":
        shards = _hub_dataset(source).num_shards
        for shard in range(shards):
            hub = (source.hub_id, source.hub_config, source.split, source.revision)
            yield f"shard-{shard}", (), (), f"{hub} {shard}/{shards}"
    else:
        units = builtin_units()
        size = -(-len(units) // BUILTIN_PARTS)
        for part in range(0, len(units), size):
            chunk = tuple(units[part : part + size])
            yield f"part-{part // size}", chunk, (), f"{platform.python_version()} {chunk}"


def _local_partitions(sized: list[tuple[str, int]], configured: str, target: int) -> Iterator[tuple[Piece, ...]]:
    """Files in order, packed into partitions of about `target` bytes; a file that can be split
    (uncompressed JSON lines or Parquet) and is over twice that becomes pieces of about `target`."""
    pack: list[Piece] = []
    packed = 0
    for path, size in sized:
        pieces = split_file(path, file_format(path, configured), size, target) if size > 2 * target else None
        if pieces is None and (not pack or packed + size <= target):
            pack.append((path, 0, -1))
            packed += size
            continue
        if pack:
            yield tuple(pack)
        pack, packed = ([], 0) if pieces else ([(path, 0, -1)], size)
        for piece in pieces or ():
            yield (piece,)
    if pack:
        yield tuple(pack)


def _pieces_label(pieces: tuple[Piece, ...]) -> str:
    path, start, stop = pieces[0]
    if len(pieces) > 1:
        return f"{path} and {len(pieces) - 1} more files"
    return path if stop == -1 else f"{path}[{start}:{stop}]"


def _matches(pattern: str) -> list[str]:
    return sorted(p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p))


def _file_identity(path: str) -> str:
    stat = os.stat(path)
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hub_dataset(source: SourceConfig):
    """The dataset streamed from the hub (or from a local dataset folder given as hub_id)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise ImportError("hub sources need datasets: pip install datasets") from None
    try:
        return load_dataset(
            source.hub_id, source.hub_config, split=source.split, revision=source.revision, streaming=True
        )
    except Exception as e:  # datasets raises many types for a missing id, config or split
        offline = isinstance(e, ConnectionError) or type(e).__name__ == "ConnectionError"
        hint = ("; the hub is out of reach from this host: run the data stage where it is (gpt1 data CONFIG) and "
                "bring the run folder, or give a downloaded copy's folder as hub_id") if offline else ""  # fmt: skip
        raise ValueError(f"cannot open hub dataset {source.hub_id!r}: {type(e).__name__}: {e}{hint}") from None


def read_partition(part: Partition, cfg: DataConfig, stats: Counter) -> Iterator[Doc]:
    """The documents of one partition, rows joined as configured (never across two files or pieces
    of one), at most `limit` of them (the source's limit applies to all)."""
    if part.source.kind == "local":
        docs = itertools.chain.from_iterable(_joined(_read_piece(piece, part.source, cfg, stats), part, cfg, stats)
                                             for piece in part.pieces)  # fmt: skip
    else:
        docs = _joined(_read(part, cfg, stats), part, cfg, stats)
    if cfg.clean.max_chars is not None:
        docs = _within(docs, cfg.clean.max_chars)
    return itertools.islice(docs, part.source.limit)


def _within(docs: Iterator[Doc], max_chars: int) -> Iterator[Doc]:
    """Records (a JSON line, a Parquet row, a hub record) longer than max_chars, rejected too_long;
    whole files are checked while they are read, so that they never need to be held."""
    for doc in docs:
        if doc.reason is None and len(doc.text) > max_chars:
            doc = Doc.rejected(doc.id, doc.source, "too_long", f"{len(doc.text):,} characters, more than {max_chars:,}")
        yield doc


def _joined(docs: Iterator[Doc], part: Partition, cfg: DataConfig, stats: Counter) -> Iterator[Doc]:
    return docs if part.source.join is None else join_rows(docs, part.source.join, cfg.clean.max_chars, stats)


def _read_piece(piece: Piece, source: SourceConfig, cfg: DataConfig, stats: Counter) -> Iterator[Doc]:
    path, start, stop = piece
    span = None if stop == -1 else (start, stop)
    return read_file(path, source, cfg.clean.invalid_utf8, cfg.clean.max_chars, stats, span)


def _read(part: Partition, cfg: DataConfig, stats: Counter) -> Iterator[Doc]:
    """The records of a URL, hub shard or built-in slice."""
    source, clean = part.source, cfg.clean
    if source.kind == "url":
        expected = source.sha256[source.paths.index(part.target)] if source.sha256 else None
        path = fetch(part.target, cfg.cache_dir, expected)
        for doc in read_file(str(path), source, clean.invalid_utf8, clean.max_chars, stats):
            doc.id = doc.id.replace(str(path), part.target, 1)
            doc.meta["path"] = part.target
            yield doc
    elif source.kind == "hub":
        shard = int(part.target.removeprefix("shard-"))
        dataset = _hub_dataset(source)
        for row, record in enumerate(dataset.shard(num_shards=dataset.num_shards, index=shard), 1):
            doc_id = f"{source.name}/{source.split}/{shard}:{row}"
            text = record.get(source.text_field)
            if isinstance(text, str):
                meta = {"hub": source.hub_id, "shard": shard, "row": row}
                if source.join is not None and source.join.field is not None:
                    meta[source.join.field] = record.get(source.join.field)
                yield Doc(doc_id, source.name, text, meta)
            else:
                yield Doc.rejected(doc_id, source.name, "missing_field", f"row {row}: no string {source.text_field!r}")
    else:
        yield from read_builtin(source.name, list(part.units))
