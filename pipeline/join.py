"""Join consecutive rows into documents, for corpora stored one sentence or line per row.

BooksCorpus on the hub is 74M sentences in book order; read row by row, every sentence would be a
document of its own, followed by an end-of-text token, and no quality rule could judge it. Joined
back into long stretches of text, documents are what GPT-1 learned from again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pipeline.config import JoinConfig
from pipeline.documents import Doc


def join_rows(docs: Iterator[Doc], join: JoinConfig, max_chars: int | None, stats: Counter) -> Iterator[Doc]:
    """Documents of consecutive rows; a rejected row passes through on its own (it is still counted)."""
    group: list[Doc] = []
    words = chars = 0
    key: object = None
    for doc in docs:
        if doc.reason is not None:
            yield doc
            continue
        value = doc.meta.get(join.field) if join.field else None
        too_long = max_chars is not None and chars + len(doc.text) > max_chars
        if group and (value != key or too_long):
            yield _joined(group, join, stats)
            group, words, chars = [], 0, 0
        group.append(doc)
        key = value
        words += len(doc.text.split())
        chars += len(doc.text) + len(join.separator)
        if (join.rows is not None and len(group) >= join.rows) or (join.words is not None and words >= join.words):
            yield _joined(group, join, stats)
            group, words, chars = [], 0, 0
    if group:
        yield _joined(group, join, stats)


def _joined(group: list[Doc], join: JoinConfig, stats: Counter) -> Doc:
    """One document from its rows: the first row's id and metadata, with the last row's number."""
    stats["join.documents"] += 1
    stats["join.rows"] += len(group)
    first = group[0]
    if len(group) == 1:
        return first
    last = group[-1].id.rsplit(":", 1)[-1]
    text = join.separator.join(d.text for d in group)
    return Doc(f"{first.id}-{last}", first.source, text, {**first.meta, "rows": len(group)})
