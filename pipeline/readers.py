"""Read local files into documents: text, markdown, rst, JSON lines, JSON, Parquet and HTML,
each optionally compressed with gzip, zstd or bzip2.

A file that cannot be read becomes one rejected record with the reason, never an exception:
binary content, a corrupt archive, invalid UTF-8 (when configured to reject), a malformed JSON line
(with its line number), an empty file. Everything is streamed; only `unit: file` holds one whole
document, and never more than `max_chars` of it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import zstandard

from pipeline.config import SourceConfig
from pipeline.documents import Doc

COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".zst": None}
FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".rst": "rst", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".html": "html", ".htm": "html"}  # fmt: skip
SNIFF_BYTES = 8192


class ReadError(ValueError):
    """A file cannot be read as configured; becomes a rejected record for that file."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        self.line = 0
        super().__init__(f"{reason}: {detail}")


def file_format(path: str, configured: str) -> str:
    """The format of a path: the configured one, or inferred from the extension under any compression."""
    if configured != "auto":
        return configured
    name = path.lower()
    for ext in COMPRESSION:
        name = name.removesuffix(ext)
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the format from the extension; set format in the source")
    if fmt == "parquet" and name != path.lower():
        raise ValueError(f"{path}: Parquet compresses inside the file; store it without an outer compression")
    return fmt


def open_binary(path: str) -> IO[bytes]:
    """Open a file for reading bytes, decompressing by extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    opener = COMPRESSION.get(suffix) or open
    return opener(path, "rb")


def decode(data: bytes, policy: str, stats: Counter) -> str:
    """UTF-8 text from bytes: invalid sequences are replaced (and counted) or raise, as configured."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if policy == "reject":
            raise ReadError("invalid_utf8", f"byte {e.start}: {e.reason}") from None
        stats["read.invalid_utf8_replaced"] += 1
        return data.decode("utf-8", errors="replace")


def split_file(path: str, fmt: str, size: int, target: int) -> list[tuple[str, int, int]] | None:
    """Pieces of about `target` bytes of a large file that can be read apart: an uncompressed JSON-lines
    file by byte ranges, a Parquet file by row groups. None for a file that cannot be split."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        groups = pq.read_metadata(path).num_row_groups
        per_piece = max(1, round(groups * target / size))
        return [(path, g, min(g + per_piece, groups)) for g in range(0, groups, per_piece)] if groups > 1 else None
    if fmt != "jsonl" or Path(path).suffix.lower() in COMPRESSION:
        return None
    with open(path, "rb") as f:
        if f.read(SNIFF_BYTES).lstrip()[:1] == b"[":  # one JSON array: read whole
            return None
    pieces = -(-size // target)
    bounds = [size * i // pieces for i in range(pieces + 1)]
    return [(path, lo, hi) for lo, hi in itertools.pairwise(bounds)]


def read_file(path: str, source: SourceConfig, policy: str, max_chars: int | None, stats: Counter,
              span: tuple[int, int] | None = None) -> Iterator[Doc]:  # fmt: skip
    """Every document in one local file, or in one piece of it (`split_file`); faults become
    rejected records named after the file (reported by its first piece only)."""
    try:
        fmt = file_format(path, source.format)
        with open_binary(path) as raw:
            stream = io.BufferedReader(raw) if not hasattr(raw, "peek") else raw
            head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
            first = span is None or span[0] == 0
            if not head:
                yield Doc.rejected(path, source.name, "empty_file")
                return
            if b"\x00" in head and fmt != "parquet":
                if first:
                    yield Doc.rejected(path, source.name, "binary_file", "NUL bytes in the first 8 KiB")
                return
            if fmt == "parquet":
                yield from _parquet(path, source, stats, span)
            elif span is not None:
                yield from _records(_json_range(stream, span, policy, stats), path, source, by="offset")
            elif fmt in ("jsonl", "json"):
                yield from _json(stream, path, source, policy, stats)
            elif source.unit == "file" or fmt == "html":
                yield _whole(stream, path, source, fmt, policy, max_chars, stats)
            else:
                yield from _units(stream, path, source, policy, stats)
    except ReadError as e:
        yield Doc.rejected(path, source.name, e.reason, e.detail)
    except (OSError, EOFError, ValueError, zstandard.ZstdError) as e:
        yield Doc.rejected(path, source.name, "unreadable_file", f"{type(e).__name__}: {e}")


def _whole(stream: IO[bytes], path: str, source: SourceConfig, fmt: str, policy: str, max_chars: int | None,
           stats: Counter) -> Doc:  # fmt: skip
    # UTF-8 needs at most 4 bytes a character: reading past 4 × max_chars can only find a too-long document.
    limit = -1 if max_chars is None else 4 * max_chars + 1
    data = stream.read(limit)
    if max_chars is not None and len(data) == limit and stream.read(1):
        return Doc.rejected(path, source.name, "too_long", f"more than {max_chars} characters")
    text = decode(data, policy, stats)
    if fmt == "html":
        text = html_main_text(text)
        if not text:
            return Doc.rejected(path, source.name, "no_main_text", "no main text found in the HTML")
    return Doc(path, source.name, text, {"path": path})


def _units(stream: IO[bytes], path: str, source: SourceConfig, policy: str, stats: Counter) -> Iterator[Doc]:
    """One document per line, or per blank-line-separated paragraph; ids carry the first line number.
    With `invalid_utf8: reject`, a bad line rejects only its own unit."""
    paragraph: list[str] = []
    fault: ReadError | None = None
    start = 1

    def unit() -> Doc:
        doc_id = f"{path}:{start}"
        if fault is not None:
            return Doc.rejected(doc_id, source.name, fault.reason, f"line {fault.line}: {fault.detail}")
        return Doc(doc_id, source.name, "\n".join(paragraph), {"path": path, "line": start})

    for number, line in enumerate(stream, 1):
        try:
            text = decode(line, policy, stats).rstrip("\r\n")
        except ReadError as e:
            e.line, text = number, "?"
            fault = fault or e
        if not text.strip():
            if paragraph:
                yield unit()
            paragraph, fault = [], None
            continue
        if not paragraph:
            start = number
        paragraph.append(text)
        if source.unit == "line":
            yield unit()
            paragraph, fault = [], None
    if paragraph:
        yield unit()


def _json(stream: IO[bytes], path: str, source: SourceConfig, policy: str, stats: Counter) -> Iterator[Doc]:
    """JSON lines, or (when the file starts with '[') one JSON array of records."""
    numbered: Iterator[tuple[int, object]]
    if stream.peek(SNIFF_BYTES).lstrip()[:1] == b"[":
        try:
            records = json.loads(decode(stream.read(), policy, stats))
        except json.JSONDecodeError as e:
            raise ReadError("malformed_json", f"line {e.lineno}: {e.msg}") from None
        if not isinstance(records, list):
            raise ReadError("malformed_json", "expected an array of records")
        numbered = enumerate(records, 1)
    else:
        numbered = _json_lines(enumerate(stream, 1), policy, stats)
    yield from _records(numbered, path, source, by="line")


def _records(numbered: Iterator[tuple[int, object]], path: str, source: SourceConfig, by: str) -> Iterator[Doc]:
    """Documents from (position, record): by "line" number (`path:12`, "line 12" in a rejection), or
    by "offset" in bytes, in a piece of a split file (`path:@1234`, "byte 1234")."""
    label, where = ("{}", "line {}") if by == "line" else ("@{}", "byte {}")
    for position, record in numbered:
        doc_id = f"{path}:{label.format(position)}"
        if isinstance(record, ReadError):
            yield Doc.rejected(doc_id, source.name, record.reason, f"{where.format(position)}: {record.detail}")
            continue
        text = record.get(source.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            detail = f"{where.format(position)}: no string {source.text_field!r}"
            yield Doc.rejected(doc_id, source.name, "missing_field", detail)
            continue
        meta = {k: v for k, v in record.items() if k != source.text_field and isinstance(v, (str, int, float, bool))}
        yield Doc(doc_id, source.name, text, {"path": path, by: position, **meta})


def _json_lines(lines: Iterator[tuple[int, bytes]], policy: str, stats: Counter) -> Iterator[tuple[int, object]]:
    for position, line in lines:
        if not line.strip():
            continue
        try:
            yield position, json.loads(decode(line, policy, stats))
        except json.JSONDecodeError as e:
            yield position, ReadError("malformed_json", e.msg)
        except ReadError as e:
            yield position, e


def _json_range(stream: IO[bytes], span: tuple[int, int], policy: str, stats: Counter) -> Iterator[tuple[int, object]]:
    """The JSON lines that begin at a byte in [start, stop): every line belongs to exactly one piece.
    Line numbers would need the bytes before the piece, so records are named by byte offset."""
    start, stop = span
    stream.seek(max(start - 1, 0))
    if start and stream.read(1) != b"\n":
        stream.readline()  # the end of a line that began in the piece before

    def lines() -> Iterator[tuple[int, bytes]]:
        position = stream.tell()
        while position < stop and (line := stream.readline()):
            yield position, line
            position += len(line)

    return _json_lines(lines(), policy, stats)


def _parquet(path: str, source: SourceConfig, stats: Counter, groups: tuple[int, int] | None = None) -> Iterator[Doc]:
    """Rows of the file, or of row groups [start, stop); rows are numbered from the file's first."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    start, stop = groups or (0, file.num_row_groups)
    group_by = source.join.field if source.join is not None else None
    columns = [source.text_field, *([group_by] if group_by else [])]
    for column in columns:
        if column not in file.schema_arrow.names:
            raise ReadError("missing_field", f"no column {column!r} (columns: {file.schema_arrow.names})")
    number = sum(file.metadata.row_group(g).num_rows for g in range(start))
    for batch in file.iter_batches(batch_size=1024, columns=columns, row_groups=range(start, stop)):
        values = batch.column(1).to_pylist() if group_by else None
        for i, text in enumerate(batch.column(0).to_pylist()):
            number += 1
            if not isinstance(text, str):
                yield Doc.rejected(f"{path}:{number}", source.name, "missing_field", f"row {number}: null text")
                continue
            meta = {"path": path, "row": number, **({group_by: values[i]} if values is not None else {})}
            yield Doc(f"{path}:{number}", source.name, text, meta)


def html_main_text(html: str) -> str:
    """The main text of a web page, without navigation, ads and footers."""
    try:
        import trafilatura
    except ImportError:
        raise ImportError("HTML sources need trafilatura: pip install 'gpt1[html]'") from None
    return trafilatura.extract(html, include_comments=False, include_tables=False, deduplicate=False) or ""
