"""Typed config sections owned by the data pipeline: `data` and `shards`."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SourceConfig(BaseModel):
    """One corpus to ingest."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1)
    """Short name; documents, counts and rejects are reported under it."""
    kind: Literal["local", "hub", "url", "builtin"] = "local"
    """Where the text comes from: local files, a Hugging Face dataset, URLs, or the built-in corpus."""
    paths: list[str] = Field(default_factory=list)
    """Glob patterns (local) or URLs (url)."""
    weight: float = Field(1.0, gt=0)
    """Relative sampling weight of this source."""
    limit: int | None = Field(None, gt=0)
    """Read at most this many documents; null reads everything."""


class DataConfig(BaseModel):
    """Ingest, clean, deduplicate and split the corpora."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(name="builtin", kind="builtin")])
    """Corpora to read, in order."""
    val_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    """Fraction of documents held out for validation, chosen by document hash."""
    num_workers: int = Field(2, gt=0, json_schema_extra={"hashed": False})
    """Ray workers that clean documents in parallel (does not change the output)."""


class ShardsConfig(BaseModel):
    """Pack tokenized documents into flat token shards of fixed-length training windows."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    seq_len: int = Field(512, gt=0)
    """Tokens per training sequence; at most model.n_positions."""
    shard_tokens: int = Field(100_000_000, gt=0)
    """Target number of tokens per shard file."""
    num_workers: int = Field(2, gt=0, json_schema_extra={"hashed": False})
    """Tokenizer actors (does not change the output)."""
