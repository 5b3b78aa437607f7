"""Typed config section owned by the tokenizer: `tokenizer`."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TokenizerConfig(BaseModel):
    """BPE training: which style and how many merges."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    path: str | None = None
    """Use this trained tokenizer folder instead of training one: ids stay fixed while data changes."""
    style: Literal["gpt1", "bytelevel"] = "gpt1"
    """gpt1: the paper's lower-cased words with </w> suffixes; bytelevel: GPT-2 style bytes, no <unk>."""
    merges: int = Field(40_000, gt=0)
    """Number of BPE merges to learn (the paper: 40,000)."""
    min_frequency: int = Field(2, gt=0)
    """A pair must occur this often to be merged."""
    max_bytes: int | None = Field(None, gt=0)
    """Train on a sample of about this many bytes of the train split, chosen by a hash of each
    document's text (the same documents every run, whatever the file order); null: all of it."""
    max_alphabet: int = Field(1000, gt=0)
    """gpt1 style: the most frequent characters kept as base symbols; rarer ones encode as <unk>."""
