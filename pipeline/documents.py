"""The document record that flows through the data stage, and its Parquet schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.progress import tracked

PREVIEW_CHARS = 200
READ_BATCH = 1024

# What the data stage writes: kept documents (train/ and val/) and rejected ones (rejects/).
DOCS_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("meta", pa.string())])
REJECTS_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
     ("preview", pa.string())]
)  # fmt: skip


@dataclass
class Doc:
    """One document, or one input unit that could not become a document (then `reason` is set)."""

    id: str
    source: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    detail: str = ""

    @classmethod
    def rejected(cls, id: str, source: str, reason: str, detail: str = "") -> Doc:
        return cls(id, source, "", reason=reason, detail=detail)

    def reject(self, reason: str, detail: str = "") -> Doc:
        self.reason, self.detail = reason, detail
        return self

    @property
    def preview(self) -> str:
        return self.text[:PREVIEW_CHARS]

    def meta_json(self) -> str:
        return json.dumps(self.meta, sort_keys=True, ensure_ascii=False)


def doc_files(split_dir: Path) -> list[Path]:
    """The Parquet files of one split (`train/` or `val/`) of the data stage, in order."""
    return sorted(Path(split_dir).glob("part-*.parquet"))


def read_texts(files: list[Path], desc: str | None = None) -> Iterator[str]:
    """Stream the `text` column of document files in order, a record batch at a time; with `desc`,
    show a progress bar over documents."""
    texts = (t for f in files for b in pq.ParquetFile(f).iter_batches(READ_BATCH, columns=["text"])
             for t in b.column(0).to_pylist())  # fmt: skip
    if desc is None:
        return texts
    return tracked(texts, sum(pq.ParquetFile(f).metadata.num_rows for f in files), desc)
