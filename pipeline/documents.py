"""The document record that flows through the data stage, and its Parquet schemas."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

PREVIEW_CHARS = 200

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
