"""Typed config sections owned by the data pipeline: `data` and `shards`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Lines matching any of these (case-insensitive regular expressions) are dropped as boilerplate;
# from C4's rules plus the navigation and legal lines common in scraped pages.
BOILERPLATE = [
    r"javascript",
    r"cookie(s)? (policy|settings|consent)|we use cookies",
    r"terms of (use|service)|privacy policy",
    r"all rights reserved",
    r"^\s*(skip to (main )?content|back to top|share this|click here)\b",
]


class JoinConfig(BaseModel):
    """Join consecutive rows of a sentence- or line-level source into documents. A document closes
    when any limit set here is reached, when `field` changes value, at the end of a partition, and
    before it would pass `clean.max_chars`; rows that cannot be read stay rejected on their own."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    rows: int | None = Field(None, gt=0)
    """At most this many rows per document."""
    words: int | None = Field(None, gt=0)
    """Close a document once it has at least this many words."""
    field: str | None = None
    """Join rows while this field (e.g. `book_id`) keeps the same value."""
    separator: str = "\n"
    """Put between joined rows."""

    @model_validator(mode="after")
    def _has_a_limit(self) -> JoinConfig:
        if self.rows is None and self.words is None and self.field is None:
            raise ValueError("join needs rows, words or field")
        return self


class SourceConfig(BaseModel):
    """One corpus to ingest."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    """Short name; documents, counts and rejects are reported under it."""
    kind: Literal["local", "hub", "url", "builtin"] = "local"
    """local files, a Hugging Face dataset streamed from the hub, files at URLs, or the built-in corpus."""
    paths: list[str] = Field(default_factory=list)
    """local: glob patterns (`corpus/**/*.txt.gz`); url: the URLs of the files."""
    format: Literal["auto", "txt", "md", "rst", "jsonl", "json", "parquet", "html"] = "auto"
    """File format; auto infers it from the extension (after any .gz/.zst/.bz2)."""
    unit: Literal["file", "line", "paragraph"] = "file"
    """For text formats: one document per file, per line, or per blank-line-separated paragraph."""
    text_field: str = "text"
    """For jsonl/json/parquet and hub datasets: the field holding the text."""
    hub_id: str | None = None
    """hub: the dataset id, e.g. `wikimedia/wikipedia`."""
    hub_config: str | None = None
    """hub: the dataset's config (subset) name, if it has several."""
    split: str = "train"
    """hub: which split to stream."""
    revision: str | None = None
    """hub: the dataset's git revision (a commit, tag or branch); pin it so a rerun reads the same rows."""
    sha256: list[str] = Field(default_factory=list)
    """url: expected checksum of each file, in the order of `paths` (empty: not checked)."""
    weight: float = Field(1.0, gt=0)
    """Relative weight of this source when shards are mixed; recorded in the manifest."""
    limit: int | None = Field(None, gt=0)
    """Read at most this many documents from this source; null reads everything."""
    join: JoinConfig | None = None
    """Join consecutive rows into documents (e.g. `{words: 10000}` for a one-sentence-per-row corpus)."""

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> SourceConfig:
        if self.kind in ("local", "url") and not self.paths:
            raise ValueError(f"source {self.name!r} of kind {self.kind} needs paths")
        if self.kind == "hub" and not self.hub_id:
            raise ValueError(f"source {self.name!r} of kind hub needs hub_id")
        if self.sha256 and len(self.sha256) != len(self.paths):
            raise ValueError(f"source {self.name!r}: sha256 needs one checksum per path")
        return self


class CleanConfig(BaseModel):
    """Repair, normalise and filter documents; each threshold is one rule (null turns it off)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    invalid_utf8: Literal["replace", "reject"] = "replace"
    """Bytes that are not UTF-8: replace them with U+FFFD, or reject the document."""
    fix_unicode: bool = True
    """Repair mojibake and normalise to NFC with ftfy."""
    remove_boilerplate: bool = True
    """Drop lines matching boilerplate_patterns."""
    boilerplate_patterns: list[str] = Field(default_factory=lambda: list(BOILERPLATE))
    """Case-insensitive regular expressions for boilerplate lines."""
    max_chars: int | None = Field(1_000_000, gt=0)
    """Reject documents longer than this many characters (checked before any other work)."""
    min_chars: int | None = Field(200, ge=0)
    """Reject documents shorter than this many characters after cleaning."""
    min_words: int | None = Field(50, ge=0)
    """Reject documents with fewer words."""
    mean_word_length: tuple[float, float] | None = (3.0, 10.0)
    """Reject documents whose mean word length falls outside this range (Gopher)."""
    max_symbol_ratio: float | None = Field(0.1, ge=0)
    """Reject documents with more '#' and '...' per word than this (Gopher)."""
    min_alpha_words: float | None = Field(0.8, ge=0, le=1)
    """Reject documents where fewer words than this fraction contain a letter (Gopher)."""
    max_duplicate_lines: float | None = Field(0.3, ge=0, le=1)
    """Reject documents where more lines than this fraction repeat an earlier line (Gopher)."""
    max_top_ngram: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    """n -> the most frequent word n-gram may cover at most this fraction of characters (Gopher)."""
    max_duplicate_ngrams: dict[int, float] = Field(default_factory=lambda: {5: 0.15, 7: 0.13, 10: 0.1})
    """n -> repeated word n-grams may cover at most this fraction of characters (Gopher)."""
    languages: list[str] = Field(default_factory=list)
    """Keep only these ISO 639-1 languages (needs py3langid); empty turns the filter off."""
    min_language_score: float = Field(0.5, ge=0, le=1)
    """Minimum probability of a kept language."""


class DedupConfig(BaseModel):
    """Exact deduplication always; MinHash near-duplicate detection on request."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    near: bool = False
    """Also remove near-duplicates found with MinHash LSH."""
    shingle_words: int = Field(5, gt=0)
    """Words per shingle."""
    bands: int = Field(16, gt=0)
    """LSH bands; two documents sharing any band's hash are near-duplicates."""
    rows: int = Field(8, gt=0)
    """Hashes per band; bands × rows MinHash permutations in all. Threshold ≈ (1/bands)^(1/rows)."""
    buckets: int = Field(16, gt=0)
    """Key buckets, one dedup task each: a task holds 16 B × (1 + bands, when near) per kept document
    / buckets. Raise it with the corpus (1,024 for a billion documents: about 270 MB a task)."""


class DataConfig(BaseModel):
    """Ingest, clean, deduplicate and split the corpora."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(name="builtin", kind="builtin")])
    """Corpora to read, in order."""
    clean: CleanConfig = Field(default_factory=CleanConfig)
    """Repair, normalisation and quality filters."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    """Duplicate removal across all sources."""
    val_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    """Fraction of documents held out for validation, chosen by a hash of the text."""
    partition_bytes: int = Field(256_000_000, gt=0)
    """Bytes of local input per partition (one task each), at most: smaller files are read together,
    in order; an uncompressed JSON-lines or Parquet file over twice this is split into byte ranges
    or row groups of about this size; other large files are one partition each. A source under
    16 × this is cut into 16 partitions (of at least 4 MiB), so that it still runs in parallel."""
    cache_dir: str = Field("~/.cache/gpt1", json_schema_extra={"hashed": False})
    """Where downloaded files are kept between runs."""
    num_workers: int | None = Field(None, gt=0, json_schema_extra={"hashed": False})
    """Ray workers that read and clean in parallel; null: one per CPU of the cluster (does not change
    the output)."""


class ShardsConfig(BaseModel):
    """Pack tokenized documents into flat token shards of fixed-length training windows."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    seq_len: int = Field(512, gt=0)
    """Tokens per training sequence; at most model.n_positions."""
    shard_tokens: int = Field(100_000_000, gt=0)
    """Target number of tokens per shard file."""
    num_workers: int | None = Field(None, gt=0, json_schema_extra={"hashed": False})
    """Tokenizer actors; null: one per CPU of the cluster (does not change the output)."""
