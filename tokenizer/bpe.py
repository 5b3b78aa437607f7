"""GPT-1 BPE in two styles behind one interface, stored as Hugging Face `tokenizers` files.

- `gpt1` reproduces the original text encoder with `tokenizers` parts, so `tokenizer.json` alone
  gives the same ids anywhere: NFC; dashes, ellipses, curly quotes and the acute accent
  standardised; each run of newlines (with the spaces around it) becomes one newline token; other
  whitespace only separates words; lower-cased; words split as the original's `text_standardize`
  and spaCy's English rules split them (`tokenizer/words.py`: `_ _ init _ _`, `1 , 000`,
  `do n't`, `mr.`, `cpuset.cpus`); BPE with a `</w>`
  end-of-word suffix and `<unk>` (id 0) for characters outside the learned alphabet. Decoding gives
  the normalised words joined by single spaces. ftfy is not part of the file: it runs where raw
  text enters (the cleaning stage and the task loaders).
- `bytelevel` is GPT-2's byte-level BPE: no normalisation, no unknown token, exact round trip.

Both append the same special tokens after the BPE vocabulary, in the order of `SPECIALS`, so their
ids are the BPE vocabulary size plus 0..4 (the original appended its fine-tuning tokens the same way).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from tokenizer import words

Style = Literal["gpt1", "bytelevel"]

UNK = "<unk>"
SUFFIX = "</w>"
META = "gpt1_tokenizer.json"
FORMAT = 1

# Appended after the BPE vocabulary, in this order.
SPECIALS = {
    "eod": "<|endoftext|>",  # ends every document in the token shards
    "start": "<|start|>",  # fine-tuning: opens every input
    "delimiter": "<|delimiter|>",  # fine-tuning: between the parts of an input
    "extract": "<|extract|>",  # fine-tuning: closes an input; its final state feeds the task head
    "pad": "<|pad|>",  # fine-tuning: fills batches (masked out)
}


class TokenizerError(ValueError):
    """A tokenizer cannot be trained or loaded as asked: the message says why, in one line."""


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens (fixed: right after the BPE vocabulary)."""

    eod: int
    start: int
    delimiter: int
    extract: int
    pad: int


def _pipeline(tok: Tokenizer, style: Style) -> Tokenizer:
    """Attach the style's normaliser, pre-tokeniser and decoder."""
    if style == "gpt1":
        tok.normalizer = words.normalizer()
        tok.pre_tokenizer = words.pre_tokenizer()
        tok.decoder = decoders.BPEDecoder(suffix=SUFFIX)
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
    return tok


def rules_digest(style: Style) -> str:
    """Hash of the style's normaliser, pre-tokeniser and decoder as `tokenizer.json` stores them: the
    tokenizer stage's key includes it, so a change to the rules retrains the tokenizer."""
    spec = json.loads(empty(style).to_str())
    rules = {part: spec[part] for part in ("normalizer", "pre_tokenizer", "decoder")}
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:16]


def empty(style: Style) -> Tokenizer:
    """A tokenizer with the style's pipeline and an empty model: what training starts from."""
    if style == "gpt1":
        return _pipeline(Tokenizer(BPE(unk_token=UNK, end_of_word_suffix=SUFFIX)), style)
    return _pipeline(Tokenizer(BPE()), style)


class BPETokenizer:
    """A trained tokenizer: encode, decode, special ids, save and load."""

    def __init__(self, tokenizer: Tokenizer, style: Style, merges: int):
        self.tok = tokenizer
        self.style = style
        self.merges = merges
        ids = {name: tokenizer.token_to_id(token) for name, token in SPECIALS.items()}
        missing = [SPECIALS[name] for name, i in ids.items() if i is None]
        if missing:
            raise TokenizerError(f"tokenizer has no special token {', '.join(missing)}")
        self.specials = SpecialIds(**ids)  # type: ignore[arg-type]
        self.unk_id = tokenizer.token_to_id(UNK) if style == "gpt1" else None

    @classmethod
    def from_bpe(cls, style: Style, vocab: dict[str, int], merges: list[tuple[str, str]]) -> BPETokenizer:
        """Build from a BPE vocabulary and merge list; special tokens go right after the vocabulary."""
        if style == "gpt1":
            model = BPE(vocab=vocab, merges=merges, unk_token=UNK, end_of_word_suffix=SUFFIX)
        else:
            model = BPE(vocab=vocab, merges=merges)
        tok = _pipeline(Tokenizer(model), style)
        tok.add_special_tokens(list(SPECIALS.values()))
        return cls(tok, style, len(merges))

    @classmethod
    def load(cls, folder: str | Path) -> BPETokenizer:
        """Load what `save` wrote; a clear error when the folder is not a tokenizer."""
        folder = Path(folder)
        meta_path, tok_path = folder / META, folder / "tokenizer.json"
        if not tok_path.is_file() or not meta_path.is_file():
            raise TokenizerError(f"{folder}: not a tokenizer folder (needs tokenizer.json and {META})")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise TokenizerError(f"{meta_path}: tokenizer format {meta.get('format')}, this version reads {FORMAT}")
        return cls(Tokenizer.from_file(str(tok_path)), meta["style"], meta["merges"])

    @property
    def vocab_size(self) -> int:
        """Every id, special tokens included: the model's embedding rows."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    @property
    def meta(self) -> dict:
        return {
            "format": FORMAT,
            "style": self.style,
            "merges": self.merges,
            "vocab_size": self.vocab_size,
            "specials": asdict(self.specials),
            **({"unk": self.unk_id} if self.unk_id is not None else {}),
        }

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once, on all cores (no offsets are computed)."""
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of the ids, special tokens left out."""
        return self.tok.decode(ids, skip_special_tokens=True)

    def tokens(self, text: str) -> list[str]:
        return self.tok.encode(text, add_special_tokens=False).tokens

    def words(self, text: str) -> list[str]:
        """The normalised, pre-tokenised words BPE sees: what the gpt1 style's decode gives back."""
        normal = self.tok.normalizer.normalize_str(text) if self.tok.normalizer else text
        return [w for w, _ in self.tok.pre_tokenizer.pre_tokenize_str(normal)]

    def save(self, folder: str | Path) -> None:
        """`tokenizer.json`, `vocab.json`/`merges.txt`, the `transformers` config and our metadata."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        self.tok.model.save(str(folder))
        hf_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": SPECIALS["eod"],
            "pad_token": SPECIALS["pad"],
            "extra_special_tokens": {"start_token": SPECIALS["start"], "delimiter_token": SPECIALS["delimiter"],
                                     "extract_token": SPECIALS["extract"]},
            **({"unk_token": UNK} if self.style == "gpt1" else {}),
            "clean_up_tokenization_spaces": False,
        }  # fmt: skip
        _write_json(folder / "tokenizer_config.json", hf_config)
        _write_json(folder / META, self.meta)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
