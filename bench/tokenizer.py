"""Tokenizer training and encode throughput against the bare `tokenizers` library (and tiktoken).

    python -m bench.tokenizer [--merges 8000] [--scale 2]    (as a module: the file name is the package's)

Input: the built-in corpus (Python's own documentation), repeated `scale` times. Training: our
`train` (alphabet pass + trainer + exact merge count) against the bare `BpeTrainer` given the same
pipeline and final vocabulary size. Encoding (ids as Python lists, as every caller needs them):
our `encode_batch`/`encode` against the same `tokenizer.json` loaded straight into `tokenizers`,
and, for the byte-level style, against tiktoken built from our ranks (with the share of documents
where its ids agree with ours).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from tokenizers import Tokenizer, trainers

from pipeline.builtin import builtin_units, read_builtin
from tokenizer.bpe import SUFFIX, UNK, BPETokenizer, empty
from tokenizer.config import TokenizerConfig
from tokenizer.train import train

GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best of `repeat` wall times, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bare_train(style: str, texts: list[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tok = empty(style)
    extra = {"special_tokens": [UNK], "end_of_word_suffix": SUFFIX} if style == "gpt1" else {}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False, **extra)
    tok.train_from_iterator((texts[i : i + 1000] for i in range(0, len(texts), 1000)), trainer)
    return tok


def tiktoken_encoding(ours: BPETokenizer):
    """tiktoken with our byte-level ranks (ids are ranks: bytes first, then merges in order)."""
    import tiktoken
    from tokenizers.pre_tokenizers import ByteLevel

    byte_of = {ch: b for b, ch in zip(range(256), _gpt2_byte_chars())}
    assert set(byte_of) == set(ByteLevel.alphabet())
    special = set(ours.meta["specials"].values())
    ranks = {bytes(byte_of[c] for c in token): i for token, i in ours.tok.get_vocab().items() if i not in special}
    return tiktoken.Encoding("gpt1-bytelevel", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={})


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=8000)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args()
    texts = [d.text for d in read_builtin("builtin", builtin_units()) if d.reason is None] * args.scale
    size = sum(len(t.encode()) for t in texts)
    print(f"input: {len(texts):,} documents, {size / 1e6:.1f} MB; {args.merges:,} merges")

    print(f"\n{'style':>10} {'train':>10} {'seconds':>8} {'vs bare':>8}")
    toks = {}
    for style in ("gpt1", "bytelevel"):
        cfg = TokenizerConfig(style=style, merges=args.merges)
        ours_s, ours = timed(lambda cfg=cfg: train(cfg, lambda: iter(texts)), repeat=1)
        vocab = ours.vocab_size - len(ours.meta["specials"])
        bare_s, _ = timed(lambda s=style, v=vocab, f=cfg.min_frequency: bare_train(s, texts, v, f), repeat=1)
        toks[style] = ours
        print(f"{style:>10} {'bare':>10} {bare_s:8.2f} {1.0:8.2f}")
        print(f"{style:>10} {'ours':>10} {ours_s:8.2f} {bare_s / ours_s:8.2f}")

    print(f"\n{'style':>10} {'encode':>22} {'Mtok/s':>8} {'MB/s':>7} {'vs bare':>8} {'agree':>6}")
    for style, ours in toks.items():
        bare = Tokenizer.from_str(ours.tok.to_str())
        n_tokens = sum(map(len, ours.encode_batch(texts)))
        rows: list[tuple[str, float, str]] = []
        base_batch, _ = timed(lambda b=bare: [e.ids for e in b.encode_batch(texts, add_special_tokens=False)])
        rows.append(("bare encode_batch", base_batch, ""))
        fast, _ = timed(lambda b=bare: [e.ids for e in b.encode_batch_fast(texts, add_special_tokens=False)])
        rows.append(("bare encode_batch_fast", fast, ""))
        batch, _ = timed(lambda o=ours: o.encode_batch(texts))
        rows.append(("ours encode_batch", batch, ""))
        base_one, _ = timed(lambda b=bare: [b.encode(t, add_special_tokens=False).ids for t in texts])
        rows.append(("bare encode (1 thread)", base_one, ""))
        one, _ = timed(lambda o=ours: [o.encode(t) for t in texts])
        rows.append(("ours encode (1 thread)", one, ""))
        if style == "bytelevel":
            enc = tiktoken_encoding(ours)
            tk_batch, tk_ids = timed(lambda e=enc: e.encode_ordinary_batch(texts))
            agree = sum(a == b for a, b in zip(tk_ids, ours.encode_batch(texts))) / len(texts)
            rows.append(("tiktoken batch", tk_batch, f"{agree:.1%}"))
            tk_one, _ = timed(lambda e=enc: [e.encode_ordinary(t) for t in texts])
            rows.append(("tiktoken (1 thread)", tk_one, ""))
        for label, seconds, agree in rows:
            ref = base_one if "1 thread" in label else base_batch
            print(f"{style:>10} {label:>22} {n_tokens / seconds / 1e6:8.2f} {size / seconds / 1e6:7.1f} "
                  f"{ref / seconds:8.2f} {agree:>6}")  # fmt: skip


if __name__ == "__main__":
    main()
