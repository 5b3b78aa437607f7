"""The token shard file: a 64-byte header, then a flat stream of token ids (numpy only).

Header (little-endian): magic `GPT1TOK\\0`, format version (u32), bytes per token (u32: 2 for
uint16, 4 for uint32), vocabulary size (u64), token count (u64), zero padding to 64 bytes. Tokens
start at byte 64, so `numpy.memmap(path, dtype, offset=64)` reads them without a copy.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GPT1TOK\0"
VERSION = 1
HEADER_BYTES = 64
INDEX = "index.json"  # beside the shards: every shard's file, tokens, documents and sha256
_HEADER = struct.Struct("<8sIIQQ")
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


class ShardFormatError(ValueError):
    """A shard file that is not what its header or index says."""


@dataclass(frozen=True)
class Header:
    itemsize: int
    vocab_size: int
    tokens: int

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.itemsize]

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.itemsize, self.vocab_size, self.tokens).ljust(HEADER_BYTES, b"\0")


def read_index(folder: str | Path) -> dict:
    path = Path(folder) / INDEX
    if not path.is_file():
        raise ShardFormatError(f"{folder}: not a shards folder (no {INDEX})")
    return json.loads(path.read_text())


def itemsize_for(vocab_size: int) -> int:
    """uint16 when every id fits, else uint32."""
    return 2 if vocab_size <= 1 << 16 else 4


def read_header(path: Path) -> Header:
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ShardFormatError(f"{path}: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, itemsize, vocab_size, tokens = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ShardFormatError(f"{path}: not a token shard (magic {magic!r})")
    if version != VERSION:
        raise ShardFormatError(f"{path}: shard format {version}, this version reads {VERSION}")
    if itemsize not in DTYPES:
        raise ShardFormatError(f"{path}: {itemsize} bytes per token in the header, expected 2 or 4")
    return Header(itemsize, vocab_size, tokens)


def open_tokens(path: Path) -> np.ndarray:
    """The shard's tokens as a read-only memmap; the file size must match the header."""
    header = read_header(path)
    expected = HEADER_BYTES + header.tokens * header.itemsize
    size = os.path.getsize(path)
    if size != expected:
        raise ShardFormatError(f"{path}: {size:,} bytes, the header says {expected:,} (truncated or appended to)")
    if header.tokens == 0:
        return np.zeros(0, dtype=header.dtype)
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.tokens,))


class ShardWriter:
    """Append token arrays to a new shard; `close` fills in the count and renames it into place.

    Writes go to `<path>.tmp`, so a shard that exists under its name is complete.
    """

    def __init__(self, path: Path, vocab_size: int):
        self.path, self.itemsize, self.vocab_size = path, itemsize_for(vocab_size), vocab_size
        self.tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed by close())
        self.file.write(Header(self.itemsize, vocab_size, 0).pack())
        self.tokens = 0

    def write(self, tokens: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(tokens, dtype=DTYPES[self.itemsize]).tobytes())
        self.tokens += len(tokens)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(Header(self.itemsize, self.vocab_size, self.tokens).pack())
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
