"""Reading sources: every format and compression, bad input as rejected records, downloads, plans and the hub."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import re
import threading
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.builtin import builtin_units, read_builtin
from pipeline.config import DataConfig, SourceConfig
from pipeline.documents import Doc
from pipeline.download import DownloadError, cached_path, fetch
from pipeline.readers import file_format, read_file
from pipeline.sources import DataError, plan, read_partition

COMPRESS = {
    "": lambda data: data,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def source(**fields) -> SourceConfig:
    return SourceConfig(**{"name": "src", "paths": ["unused"], **fields})


def read(
    path: Path, policy: str = "replace", max_chars: int | None = None, stats: Counter | None = None, **fields
) -> list[Doc]:
    return list(read_file(str(path), source(**fields), policy, max_chars, Counter() if stats is None else stats))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(COMPRESS[next((c for c in COMPRESS if c and path.name.endswith(c)), "")](data))
    return path


# Text formats -------------------------------------------------------------------------------------

TEXT = b"First line of the first paragraph.\nSecond line of it.\n\n\nA second paragraph, one line.\n  \nThird.\n"


@pytest.mark.parametrize("ext", [".txt", ".md", ".rst"])
def test_text_file_with_unit_file_is_one_document_named_after_the_file(tmp_path, ext):
    path = write(tmp_path / f"notes{ext}", TEXT)
    [doc] = read(path, unit="file")
    assert (doc.id, doc.source, doc.reason) == (str(path), "src", None)
    assert doc.text == TEXT.decode() and doc.meta == {"path": str(path)}


@pytest.mark.parametrize("ext", [".txt", ".md", ".rst"])
def test_text_file_with_unit_line_gives_one_document_per_non_blank_line_with_its_line_number(tmp_path, ext):
    path = write(tmp_path / f"notes{ext}", TEXT)
    docs = read(path, unit="line")
    assert [(d.id, d.text, d.meta["line"]) for d in docs] == [
        (f"{path}:1", "First line of the first paragraph.", 1),
        (f"{path}:2", "Second line of it.", 2),
        (f"{path}:5", "A second paragraph, one line.", 5),
        (f"{path}:7", "Third.", 7),
    ]
    assert all(d.meta["path"] == str(path) and d.reason is None for d in docs)


@pytest.mark.parametrize("ext", [".txt", ".md", ".rst"])
def test_text_file_with_unit_paragraph_splits_on_blank_lines_and_names_the_first_line(tmp_path, ext):
    path = write(tmp_path / f"notes{ext}", TEXT)
    docs = read(path, unit="paragraph")
    assert [(d.id, d.text, d.meta) for d in docs] == [
        (f"{path}:1", "First line of the first paragraph.\nSecond line of it.", {"path": str(path), "line": 1}),
        (f"{path}:5", "A second paragraph, one line.", {"path": str(path), "line": 5}),
        (f"{path}:7", "Third.", {"path": str(path), "line": 7}),
    ]


def test_windows_line_endings_are_not_part_of_the_text(tmp_path):
    path = write(tmp_path / "crlf.txt", b"one\r\ntwo\r\n\r\nthree\r\n")
    assert [d.text for d in read(path, unit="line")] == ["one", "two", "three"]
    assert [d.text for d in read(path, unit="paragraph")] == ["one\ntwo", "three"]


# JSON ------------------------------------------------------------------------------------------------


def test_jsonl_text_field_becomes_the_text_and_other_scalar_fields_become_meta(tmp_path):
    lines = [
        {"body": "first text", "url": "http://a", "score": 0.5, "n": 3, "ok": True, "tags": ["x"], "extra": {"k": 1}},
        {"body": "second text"},
    ]
    path = write(tmp_path / "docs.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in lines))
    docs = read(path, text_field="body")
    assert [(d.id, d.text, d.reason) for d in docs] == [
        (f"{path}:1", "first text", None),
        (f"{path}:2", "second text", None),
    ]
    assert docs[0].meta == {"path": str(path), "line": 1, "url": "http://a", "score": 0.5, "n": 3, "ok": True}
    assert docs[1].meta == {"path": str(path), "line": 2}


def test_jsonl_blank_lines_are_skipped_and_ids_keep_the_real_line_number(tmp_path):
    path = write(tmp_path / "docs.jsonl", b'{"text": "a"}\n\n  \n{"text": "b"}\n')
    assert [(d.id, d.text) for d in read(path)] == [(f"{path}:1", "a"), (f"{path}:4", "b")]


def test_json_array_of_records_gives_one_document_per_record(tmp_path):
    path = write(tmp_path / "docs.json", b'\n  [{"text": "one", "lang": "en"},\n {"text": "two"}]\n')
    docs = read(path)
    assert [(d.id, d.text, d.meta) for d in docs] == [
        (f"{path}:1", "one", {"path": str(path), "line": 1, "lang": "en"}),
        (f"{path}:2", "two", {"path": str(path), "line": 2}),
    ]


def test_json_file_holding_json_lines_is_read_as_json_lines(tmp_path):
    path = write(tmp_path / "docs.json", b'{"text": "one"}\n{"text": "two"}\n')
    assert [(d.id, d.text) for d in read(path)] == [(f"{path}:1", "one"), (f"{path}:2", "two")]


def test_malformed_json_line_is_rejected_with_its_line_number_and_the_rest_is_read(tmp_path):
    path = write(tmp_path / "docs.jsonl", b'{"text": "ok"}\n{"text": "broken\n{"text": "after"}\n')
    docs = read(path)
    assert [(d.id, d.reason) for d in docs] == [
        (f"{path}:1", None),
        (f"{path}:2", "malformed_json"),
        (f"{path}:3", None),
    ]
    assert "line 2" in docs[1].detail


def test_malformed_json_array_is_one_rejected_record_naming_the_line(tmp_path):
    path = write(tmp_path / "docs.json", b'[{"text": "a"},\n{"text": "b"\n')
    [doc] = read(path)
    assert (doc.id, doc.reason) == (str(path), "malformed_json") and "line 3" in doc.detail


@pytest.mark.parametrize(
    "line", [b'{"body": "no text field"}', b'{"text": null}', b'{"text": 42}', b'"a string"', b"[1, 2]"]
)
def test_json_record_without_a_string_text_field_is_rejected_missing_field(tmp_path, line):
    path = write(tmp_path / "docs.jsonl", b'{"text": "fine"}\n' + line + b"\n")
    docs = read(path)
    assert [(d.id, d.reason) for d in docs] == [(f"{path}:1", None), (f"{path}:2", "missing_field")]
    assert docs[1].detail.startswith("line 2: ") and "'text'" in docs[1].detail


# Parquet ---------------------------------------------------------------------------------------------


def test_parquet_rows_become_documents_from_the_configured_column_and_null_text_is_missing_field(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["alpha", None, "gamma"], "other": [1, 2, 3]}), path)
    docs = read(path, text_field="content")
    assert [(d.id, d.text, d.reason) for d in docs] == [
        (f"{path}:1", "alpha", None),
        (f"{path}:2", "", "missing_field"),
        (f"{path}:3", "gamma", None),
    ]
    assert docs[0].meta == {"path": str(path), "row": 1} and "row 2" in docs[1].detail


def test_parquet_without_the_text_column_is_one_rejected_record_listing_the_columns(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["alpha"]}), path)
    [doc] = read(path)
    assert (doc.id, doc.reason) == (str(path), "missing_field") and "body" in doc.detail


def test_parquet_with_outer_compression_is_refused_when_the_format_is_read():
    with pytest.raises(ValueError, match="Parquet compresses inside the file"):
        file_format("docs.parquet.gz", "auto")


def test_parquet_reads_every_row_across_record_batches(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(2500)]}), path, row_group_size=700)
    docs = read(path)
    assert [d.text for d in docs] == [f"row {i}" for i in range(2500)]
    assert docs[-1].id == f"{path}:2500"


# HTML ------------------------------------------------------------------------------------------------

ARTICLE = [
    "The river town grew slowly around the old stone bridge, and every spring the farmers brought their sheep "
    "to market across it. Travellers paid a small toll to the keeper, who lived in a narrow house at the end.",
    "In the winter of the great flood the water rose above the arches, and for three days nobody could cross. "
    "When it fell again the people found that the bridge had held, and they rang the church bell until evening.",
    "Today the toll house is a small museum, and children still count the arches as they walk over the river "
    "on their way to school.",
]
PAGE = f"""<!doctype html><html><head><title>The bridge</title><script>var tracking = 1;</script></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li><li><a href="/shop">Shop now</a></li>
</ul></nav>
<article><h1>A history of the bridge</h1>{"".join(f"<p>{p}</p>" for p in ARTICLE)}</article>
<footer><p>Copyright 2024 Example Town Council. Contact the webmaster.</p></footer>
</body></html>"""


def test_html_main_text_is_extracted_without_navigation_or_footer(tmp_path):
    path = write(tmp_path / "page.html", PAGE.encode())
    [doc] = read(path, max_chars=1_000_000)
    assert doc.reason is None and doc.id == str(path)
    for paragraph in ARTICLE:
        assert paragraph in doc.text
    for boilerplate in ("Shop now", "About us", "Copyright 2024", "webmaster", "tracking"):
        assert boilerplate not in doc.text


@pytest.mark.parametrize("unit", ["file", "line", "paragraph"])
def test_html_is_one_document_per_file_whatever_the_unit(tmp_path, unit):
    path = write(tmp_path / "page.htm", PAGE.encode())
    assert len(read(path, unit=unit)) == 1


def test_html_without_main_text_is_rejected_no_main_text(tmp_path):
    path = write(tmp_path / "empty.html", b"<html><head><script>var x = 1;</script></head><body><div></div></body>")
    [doc] = read(path)
    assert (doc.id, doc.reason) == (str(path), "no_main_text")


# Compression -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [".gz", ".bz2", ".zst"])
def test_compressed_text_is_decompressed_and_its_format_inferred_through_the_suffix(tmp_path, compression):
    path = write(tmp_path / f"notes.txt{compression}", TEXT)
    assert file_format(str(path), "auto") == "txt"
    assert [d.id for d in read(path, unit="paragraph")] == [f"{path}:1", f"{path}:5", f"{path}:7"]
    [whole] = read(path)
    assert whole.text == TEXT.decode()


@pytest.mark.parametrize("compression", [".gz", ".bz2", ".zst"])
def test_compressed_jsonl_is_decompressed_and_its_format_inferred_through_the_suffix(tmp_path, compression):
    path = write(tmp_path / f"docs.jsonl{compression}", b'{"text": "one"}\n{"text": "two"}\n')
    assert file_format(str(path), "auto") == "jsonl"
    assert [(d.id, d.text) for d in read(path)] == [(f"{path}:1", "one"), (f"{path}:2", "two")]


def test_compressed_json_array_is_read_through_the_suffix(tmp_path):
    path = write(tmp_path / "docs.json.zst", b'[{"text": "one"}, {"text": "two"}]')
    assert [d.text for d in read(path)] == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", "txt"),
        ("a.TEXT", "txt"),
        ("a.md.gz", "md"),
        ("a.markdown.bz2", "md"),
        ("a.rst.zst", "rst"),
        ("a.ndjson.gz", "jsonl"),
        ("a.json", "json"),
        ("a.parquet", "parquet"),
        ("A.HTM.GZ", "html"),
    ],
)
def test_format_is_inferred_from_the_extension_under_any_compression(name, expected):
    assert file_format(f"/data/{name}", "auto") == expected


def test_configured_format_wins_over_the_extension():
    assert file_format("/data/a.csv", "txt") == "txt"


@pytest.mark.parametrize("name", ["a.csv", "a.gz", "README", "a.txt.xz"])
def test_unknown_extension_with_format_auto_raises_naming_the_path(name):
    with pytest.raises(ValueError, match=re.escape(f"/data/{name}")):
        file_format(f"/data/{name}", "auto")


def test_unknown_extension_read_anyway_is_a_rejected_record_not_an_exception(tmp_path):
    path = write(tmp_path / "table.csv", b"a,b\n")
    [doc] = read(path)
    assert doc.reason == "unreadable_file" and str(path) in doc.detail


# Bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["file", "line", "paragraph"])
def test_invalid_utf8_is_replaced_and_counted_with_policy_replace(tmp_path, unit):
    path = write(tmp_path / "bad.txt", b"caf\xe9 au lait\nfine line\n")
    stats = Counter()
    docs = read(path, "replace", stats=stats, unit=unit)
    assert docs[0].reason is None and docs[0].text.startswith("caf\ufffd au lait")
    assert stats["read.invalid_utf8_replaced"] == 1


def test_invalid_utf8_in_jsonl_is_replaced_and_counted_with_policy_replace(tmp_path):
    path = write(tmp_path / "bad.jsonl", b'{"text": "caf\xe9"}\n{"text": "ok"}\n')
    stats = Counter()
    assert [d.text for d in read(path, "replace", stats=stats)] == ["caf\ufffd", "ok"]
    assert stats["read.invalid_utf8_replaced"] == 1


def test_invalid_utf8_rejects_the_whole_file_with_policy_reject_and_unit_file(tmp_path):
    path = write(tmp_path / "bad.txt", b"caf\xe9 au lait\n")
    stats = Counter()
    [doc] = read(path, "reject", stats=stats)
    assert (doc.id, doc.reason, doc.text) == (str(path), "invalid_utf8", "")
    assert "byte 3" in doc.detail and not stats


def test_invalid_utf8_rejects_only_its_json_line_with_policy_reject(tmp_path):
    path = write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n{"text": "after"}\n')
    docs = read(path, "reject")
    assert [(d.id, d.reason) for d in docs] == [(f"{path}:1", None), (f"{path}:2", "invalid_utf8"), (f"{path}:3", None)]
    assert docs[1].detail.startswith("line 2: ")


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_invalid_utf8_rejects_only_its_unit_with_policy_reject(tmp_path, unit):
    path = write(tmp_path / "bad.txt", b"before\n\ncaf\xe9\n\nafter\n")
    docs = read(path, "reject", unit=unit)
    assert [(d.id, d.reason) for d in docs] == [(f"{path}:1", None), (f"{path}:3", "invalid_utf8"), (f"{path}:5", None)]


@pytest.mark.parametrize(
    "name", ["empty.txt", "empty.jsonl", "empty.json", "empty.html", "empty.txt.gz", "empty.jsonl.zst", "empty.md.bz2"]
)
def test_empty_file_is_one_rejected_record_empty_file(tmp_path, name):
    path = write(tmp_path / name, b"")
    [doc] = read(path, unit="line")
    assert (doc.id, doc.reason) == (str(path), "empty_file")


@pytest.mark.parametrize("name", ["blob.txt", "blob.jsonl", "blob.html", "blob.txt.gz"])
def test_file_with_nul_bytes_is_rejected_binary_file(tmp_path, name):
    path = write(tmp_path / name, b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256)) * 4)
    [doc] = read(path, unit="line")
    assert (doc.id, doc.reason) == (str(path), "binary_file")


@pytest.mark.parametrize(
    "compression",
    [
        ".gz",
        ".bz2",
        ".zst",
    ],
)
def test_corrupt_archive_is_rejected_unreadable_file(tmp_path, compression):
    path = tmp_path / f"notes.txt{compression}"
    path.write_bytes(b"this is not a compressed stream at all, just text\n")
    [doc] = read(path)
    assert (doc.id, doc.reason) == (str(path), "unreadable_file") and doc.detail


def test_truncated_gzip_is_rejected_unreadable_file(tmp_path):
    path = tmp_path / "notes.txt.gz"
    path.write_bytes(gzip.compress(TEXT * 100)[:-20])
    [doc] = read(path)
    assert (doc.id, doc.reason) == (str(path), "unreadable_file")


def test_corrupt_parquet_is_rejected_unreadable_file(tmp_path):
    path = write(tmp_path / "docs.parquet", b"PAR1 this is not really parquet PAR1")
    [doc] = read(path)
    assert (doc.id, doc.reason) == (str(path), "unreadable_file")


HUGE_LINE = 100 * (1 << 20)


@pytest.fixture(scope="module")
def huge_line_file(tmp_path_factory) -> Path:
    """A text file holding one line of 100 MiB of ASCII, written in chunks."""
    path = tmp_path_factory.mktemp("huge") / "huge.txt"
    chunk = b"abcdefgh" * (1 << 17)
    with open(path, "wb") as f:
        for _ in range(HUGE_LINE // len(chunk)):
            f.write(chunk)
        f.write(b"\n")
    return path


def test_huge_single_line_file_is_rejected_too_long_without_reading_it_all(huge_line_file):
    tracemalloc.start()
    try:
        docs = read(huge_line_file, unit="file", max_chars=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(d.id, d.reason) for d in docs] == [(str(huge_line_file), "too_long")]
    assert "1000000" in docs[0].detail
    assert peak < 6 * (1 << 20), f"held {peak} bytes"


def test_huge_single_line_is_one_document_of_the_right_length_with_unit_line(huge_line_file):
    [doc] = read(huge_line_file, unit="line", max_chars=1_000_000)
    assert (doc.id, doc.reason, len(doc.text)) == (f"{huge_line_file}:1", None, HUGE_LINE)
    assert doc.text[:16] == "abcdefghabcdefgh"


# Downloads -------------------------------------------------------------------------------------------

PAYLOAD = b"".join(b"line %d of the downloaded corpus\n" % i for i in range(5000))


class Server:
    """A local HTTP server that serves `files` and honours `Range: bytes=N-`; records every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                state.requests.append((self.path, self.headers.get("Range")))
                body = state.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                if (wanted := self.headers.get("Range")) is not None:
                    start, status = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1)), 206
                    if start >= len(body):
                        self.send_error(416)
                        return
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def hits(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def http(server, monkeypatch) -> Server:
    monkeypatch.setenv("no_proxy", "*")
    return server


def test_fetch_downloads_into_the_cache_and_the_second_call_does_not_download_again(http, tmp_path):
    http.files["/corpus/once.txt"] = PAYLOAD
    url = http.url("/corpus/once.txt")
    first = fetch(url, tmp_path / "cache", timeout=10)
    assert first == cached_path(url, tmp_path / "cache") and first.read_bytes() == PAYLOAD
    assert first.parent == tmp_path / "cache" / "downloads" and first.name.endswith("-once.txt")
    second = fetch(url, tmp_path / "cache", hashlib.sha256(PAYLOAD).hexdigest(), timeout=10)
    assert second == first and http.hits("/corpus/once.txt") == [None]
    assert not list(first.parent.glob("*.part"))


def test_fetch_resumes_a_partial_download_with_a_range_request(http, tmp_path):
    http.files["/corpus/resume.txt"] = PAYLOAD
    url = http.url("/corpus/resume.txt")
    dest = cached_path(url, tmp_path / "cache")
    dest.parent.mkdir(parents=True)
    half = len(PAYLOAD) // 2
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD[:half])
    path = fetch(url, tmp_path / "cache", hashlib.sha256(PAYLOAD).hexdigest(), timeout=10)
    assert http.hits("/corpus/resume.txt") == [f"bytes={half}-"]
    assert path == dest and path.read_bytes() == PAYLOAD
    assert not dest.with_name(dest.name + ".part").exists()


def test_fetch_with_a_wrong_sha256_raises_and_leaves_no_file(http, tmp_path):
    http.files["/corpus/tampered.txt"] = PAYLOAD
    url = http.url("/corpus/tampered.txt")
    with pytest.raises(DownloadError, match="sha256"):
        fetch(url, tmp_path / "cache", "0" * 64, timeout=10)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_fetch_of_a_missing_url_raises_http_404_and_leaves_no_file(http, tmp_path):
    url = http.url("/corpus/missing.txt")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        fetch(url, tmp_path / "cache", timeout=10)
    assert url in str(info.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_url_source_is_read_through_the_cache_with_ids_naming_the_url(http, tmp_path):
    http.files["/corpus/lines.txt"] = b"first\nsecond\n"
    url = http.url("/corpus/lines.txt")
    cfg = DataConfig(
        cache_dir=str(tmp_path / "cache"), sources=[SourceConfig(name="web", kind="url", paths=[url], unit="line")]
    )
    [part] = plan(cfg)
    docs = list(read_partition(part, cfg, Counter()))
    assert [(d.id, d.text, d.meta["path"]) for d in docs] == [(f"{url}:1", "first", url), (f"{url}:2", "second", url)]


# Plans -----------------------------------------------------------------------------------------------


def local(name: str, *patterns: str, **fields) -> SourceConfig:
    return SourceConfig(name=name, paths=list(patterns), **fields)


def test_glob_matching_nothing_is_a_data_error_naming_the_pattern_before_any_reading(tmp_path, monkeypatch):
    write(tmp_path / "real.txt", b"text\n")
    reads = []
    monkeypatch.setattr("pipeline.sources.read_file", lambda *a: reads.append(a) or iter(()))
    missing = str(tmp_path / "nowhere" / "*.txt")
    cfg = DataConfig(sources=[local("ok", str(tmp_path / "*.txt")), local("gone", missing)])
    with pytest.raises(DataError, match=re.escape(repr(missing))) as info:
        plan(cfg)
    assert "data.sources[gone]" in str(info.value) and not reads


def test_two_sources_with_the_same_name_are_a_data_error(tmp_path):
    write(tmp_path / "a.txt", b"text\n")
    cfg = DataConfig(sources=[local("twin", str(tmp_path / "a.txt")), local("twin", str(tmp_path / "a.txt"))])
    with pytest.raises(DataError, match="'twin' is used twice"):
        plan(cfg)


def test_unknown_extension_in_a_local_source_is_a_data_error_at_plan_time(tmp_path):
    write(tmp_path / "table.csv", b"a,b\n")
    with pytest.raises(DataError, match=r"table\.csv"):
        plan(DataConfig(sources=[local("csv", str(tmp_path / "*.csv"))]))


def test_all_problems_of_a_plan_are_reported_together(tmp_path):
    cfg = DataConfig(sources=[local("a", str(tmp_path / "x*.txt")), local("a", str(tmp_path / "y*.txt"))])
    with pytest.raises(DataError) as info:
        plan(cfg)
    assert len(str(info.value).splitlines()) == 3


def test_partitions_are_numbered_sources_first_then_sorted_files(tmp_path):
    for name in ["c.txt", "a.txt", "b.txt", "sub/z.md", "d.jsonl"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write(tmp_path / name, b'{"text": "x"}\n')
    cfg = DataConfig(
        sources=[
            local("first", str(tmp_path / "*.txt"), str(tmp_path / "**" / "*.md")),
            local("second", str(tmp_path / "*.jsonl")),
        ],
        partition_bytes=10,  # a partition per file
    )
    parts = plan(cfg)
    assert [(p.index, p.source.name, Path(p.target).relative_to(tmp_path).as_posix()) for p in parts] == [
        (0, "first", "a.txt"),
        (1, "first", "b.txt"),
        (2, "first", "c.txt"),
        (3, "first", "sub/z.md"),
        (4, "second", "d.jsonl"),
    ]
    assert parts[0].label == f"first:{tmp_path / 'a.txt'}"


def test_read_partition_stops_at_the_source_limit(tmp_path):
    write(tmp_path / "many.txt", b"".join(b"line %d\n" % i for i in range(10)))
    cfg = DataConfig(sources=[local("lim", str(tmp_path / "many.txt"), unit="line", limit=3)])
    [part] = plan(cfg)
    assert [d.text for d in read_partition(part, cfg, Counter())] == ["line 0", "line 1", "line 2"]


def test_read_partition_without_limit_reads_everything_and_uses_the_clean_policy(tmp_path):
    write(tmp_path / "all.txt", b"a\n\xff\nc\n")
    cfg = DataConfig(sources=[local("all", str(tmp_path / "all.txt"), unit="line")])
    stats = Counter()
    [part] = plan(cfg)
    assert [d.text for d in read_partition(part, cfg, stats)] == ["a", "\ufffd", "c"]
    assert stats["read.invalid_utf8_replaced"] == 1


# Partitions of large and small files ------------------------------------------------------------


def read_all(cfg: DataConfig) -> list[Doc]:
    return [doc for part in plan(cfg) for doc in read_partition(part, cfg, Counter())]


def test_small_files_are_read_together_in_order(tmp_path):
    for i in range(6):
        write(tmp_path / f"f{i}.jsonl", json.dumps({"text": f"file {i}"}).encode() + b"\n")
    cfg = DataConfig(sources=[local("s", str(tmp_path / "*.jsonl"))], partition_bytes=60)
    parts = plan(cfg)
    assert [len(p.pieces) for p in parts] == [3, 3]  # 20 bytes a file
    assert parts[0].label == f"s:{tmp_path / 'f0.jsonl'} and 2 more files"
    assert [d.text for d in read_all(cfg)] == [f"file {i}" for i in range(6)]
    assert len(plan(cfg.model_copy(update={"partition_bytes": 256_000_000}))) == 1


def test_a_large_json_lines_file_is_split_and_every_line_is_read_once(tmp_path):
    lines = [json.dumps({"text": f"document {i} " + "word " * (i % 13)}).encode() for i in range(200)]
    lines[57] = b'{"text": broken'
    write(tmp_path / "big.jsonl", b"\n".join(lines) + b"\n")
    write(tmp_path / "z-after.txt", b"a file after it\n")
    cfg = DataConfig(sources=[local("s", str(tmp_path / "*"), unit="file")], partition_bytes=1000)
    parts = plan(cfg)
    assert len(parts) == 12 and [p.pieces[0][1] for p in parts[:2]] == [0, parts[0].pieces[0][2]] != [0, -1]
    docs = read_all(cfg)
    assert [d.text for d in docs if d.reason is None] == [
        *(json.loads(line)["text"] for i, line in enumerate(lines) if i != 57), "a file after it\n"]  # fmt: skip
    [bad] = [d for d in docs if d.reason]
    offset = sum(len(line) + 1 for line in lines[:57])
    assert (bad.reason, bad.id, bad.detail) == ("malformed_json", f"{tmp_path / 'big.jsonl'}:@{offset}",
                                                f"byte {offset}: Expecting value")  # fmt: skip
    assert docs[1].meta["offset"] == len(lines[0]) + 1 and len({d.id for d in docs}) == len(docs)


@pytest.mark.parametrize("name", ["big.jsonl.gz", "array.json"])
def test_compressed_and_array_files_are_never_split(tmp_path, name):
    records = [{"text": f"document {i} " * 20} for i in range(100)]
    data = (
        json.dumps(records).encode() if name.endswith(".json") else b"\n".join(json.dumps(r).encode() for r in records)
    )
    write(tmp_path / name, data)
    cfg = DataConfig(sources=[local("s", str(tmp_path / name))], partition_bytes=100)
    [part] = plan(cfg)
    assert part.pieces == ((str(tmp_path / name), 0, -1),) and len(read_all(cfg)) == 100


def test_a_large_parquet_file_is_split_by_row_groups_with_the_same_ids(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 10 for i in range(100)]}), path, row_group_size=10)
    whole = read_all(DataConfig(sources=[local("s", str(path))]))
    cfg = DataConfig(sources=[local("s", str(path))], partition_bytes=path.stat().st_size // 5)
    parts = plan(cfg)
    assert [p.pieces for p in parts] == [((str(path), g, g + 2),) for g in range(0, 10, 2)]
    assert [(d.id, d.text) for d in read_all(cfg)] == [(d.id, d.text) for d in whole]


def test_a_piece_of_a_split_file_is_in_its_identity(tmp_path):
    write(tmp_path / "big.jsonl", b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(100)))
    cfg = DataConfig(sources=[local("s", str(tmp_path / "big.jsonl"))], partition_bytes=300)
    identities = [p.identity for p in plan(cfg)]
    assert len(set(identities)) == len(identities) > 2


# Hub datasets (on a local stand-in) ---------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Make sure nothing touches the network, even if `datasets` was imported before the variables were set."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_dataset_has_one_partition_per_shard_and_every_row_is_read_once(tmp_path, offline):
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    rows = [[f"shard zero row {i}" for i in range(4)], [f"shard one row {i}" for i in range(3)]]
    for shard, texts in enumerate(rows):
        pq.write_table(pa.table({"text": texts}), data / f"train-0000{shard}-of-00002.parquet")
    cfg = DataConfig(sources=[SourceConfig(name="hub", kind="hub", hub_id=str(tmp_path / "ds"), split="train")])
    parts = plan(cfg)
    assert [(p.index, p.target) for p in parts] == [(0, "shard-0"), (1, "shard-1")]
    docs = [d for p in parts for d in read_partition(p, cfg, Counter())]
    assert sorted(d.text for d in docs) == sorted(rows[0] + rows[1])
    assert len({d.id for d in docs}) == len(docs) and all(d.reason is None and d.source == "hub" for d in docs)
    assert docs[0].id.startswith("hub/train/0:") and docs[0].meta["hub"] == str(tmp_path / "ds")


@pytest.mark.parametrize("hub_id", ["no-such-owner-gpt1-tests/no-such-dataset", "{tmp}/missing"])
def test_hub_dataset_that_does_not_exist_is_a_data_error(tmp_path, offline, hub_id):
    hub_id = hub_id.format(tmp=tmp_path)
    with pytest.raises(DataError, match=re.escape(f"cannot open hub dataset {hub_id!r}")):
        plan(DataConfig(sources=[SourceConfig(name="hub", kind="hub", hub_id=hub_id)]))


# Joining rows into documents ---------------------------------------------------------------------


def joined(path: Path, max_chars: int | None = None, **join) -> tuple[list[Doc], Counter]:
    cfg = DataConfig(sources=[source(paths=[str(path)], join=join)], clean={"max_chars": max_chars})
    stats: Counter = Counter()
    return [d for p in plan(cfg) for d in read_partition(p, cfg, stats)], stats


def test_join_rows_closes_a_document_every_n_rows_and_keeps_the_row_range_in_its_id(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": [f"sentence {i} ." for i in range(1, 8)]}), path)
    docs, stats = joined(path, rows=3)
    assert [(d.id, d.text) for d in docs] == [
        (f"{path}:1-3", "sentence 1 .\nsentence 2 .\nsentence 3 ."),
        (f"{path}:4-6", "sentence 4 .\nsentence 5 .\nsentence 6 ."),
        (f"{path}:7", "sentence 7 ."),
    ]
    assert docs[0].meta == {"path": str(path), "row": 1, "rows": 3}
    assert stats["join.rows"] == 7 and stats["join.documents"] == 3


def test_join_words_closes_a_document_once_it_has_enough_words(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(["word"] * n)}) + "\n" for n in (3, 3, 5, 1, 1)))
    docs, _ = joined(path, words=6, separator=" ")
    assert [len(d.text.split()) for d in docs] == [6, 6, 1]


def test_join_field_groups_rows_while_the_field_keeps_its_value(tmp_path):
    path = tmp_path / "s.parquet"
    table = pa.table({"text": ["a1", "a2", "b1", "b2", "b3", "a3"], "book_id": [7, 7, 8, 8, 8, 7]})
    pq.write_table(table, path)
    docs, _ = joined(path, field="book_id")
    assert [(d.text.split("\n"), d.meta["book_id"]) for d in docs] == [
        (["a1", "a2"], 7), (["b1", "b2", "b3"], 8), (["a3"], 7)]  # fmt: skip


def test_join_field_that_is_not_a_column_is_one_rejected_record(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), path)
    [doc], _ = joined(path, field="book_id")
    assert doc.reason == "missing_field" and "book_id" in doc.detail


def test_rejected_rows_pass_through_and_a_document_never_passes_max_chars(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join([json.dumps({"text": "x" * 40}), "{broken", *[json.dumps({"text": "y" * 40})] * 3]))
    docs, stats = joined(path, max_chars=100, field="none")
    assert [(d.reason, len(d.text)) for d in docs] == [("malformed_json", 0), (None, 81), (None, 81)]
    assert stats["join.rows"] == 4


def test_a_record_longer_than_max_chars_is_rejected_too_long(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"text": "x" * 101}) + "\n" + json.dumps({"text": "y" * 100}) + "\n")
    cfg = DataConfig(sources=[source(paths=[str(path)])], clean={"max_chars": 100})
    docs = [d for p in plan(cfg) for d in read_partition(p, cfg, Counter())]
    assert [(d.reason, len(d.text)) for d in docs] == [("too_long", 0), (None, 100)]
    assert docs[0].detail == "101 characters, more than 100"


def test_join_on_a_hub_dataset_reads_the_field_of_each_record(tmp_path, offline):
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    table = pa.table({"text": ["one .", "two .", "three ."], "book_id": ["x", "x", "y"]})
    pq.write_table(table, data / "train-00000-of-00001.parquet")
    join = {"field": "book_id"}
    cfg = DataConfig(sources=[SourceConfig(name="hub", kind="hub", hub_id=str(tmp_path / "ds"), join=join)])
    docs = [d for p in plan(cfg) for d in read_partition(p, cfg, Counter())]
    assert [(d.id, d.text) for d in docs] == [("hub/train/0:1-2", "one .\ntwo ."), ("hub/train/0:3", "three .")]


# Built-in corpus -------------------------------------------------------------------------------------


def test_builtin_units_are_many_sorted_unique_and_the_same_every_time():
    units = builtin_units()
    topics = [u for u in units if u.startswith("topic/")]
    modules = [u for u in units if u.startswith("module/")]
    assert len(topics) > 50 and len(modules) > 100 and units == topics + modules
    assert topics == sorted(topics) and modules == sorted(modules) and len(set(units)) == len(units)
    assert builtin_units() == units
    assert not any("/test/" in u or "site-packages" in u for u in modules)


def english_words(text: str) -> int:
    return sum(f" {w} " in f" {text} " for w in ("the", "of", "is", "a", "to", "and"))


def test_builtin_topic_and_module_units_are_real_english_text():
    units = ["topic/assert", "module/json/__init__.py", "module/textwrap.py"]
    assert set(units) <= set(builtin_units())
    docs = list(read_builtin("builtin", units))
    assert [d.id for d in docs] == [f"builtin/{u}" for u in units]
    assert docs[0].meta == {"topic": "assert"} and docs[1].meta == {"module": "json/__init__.py"}
    for doc in docs:
        assert doc.reason is None and len(doc.text.split()) > 50 and english_words(doc.text) >= 4, doc.id
    assert "assert" in docs[0].text and "JSON" in docs[1].text


def test_builtin_source_is_planned_in_slices_that_cover_every_unit_once():
    cfg = DataConfig()
    parts = plan(cfg)
    assert [p.units for p in parts if p.units] == [p.units for p in parts]
    assert [u for p in parts for u in p.units] == builtin_units()
    docs = list(read_partition(parts[0], cfg, Counter()))
    assert [d.id for d in docs] == [f"builtin/{u}" for u in parts[0].units]
