"""The BPE tokenizer: both styles, special ids, determinism, exports, stats and user errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.builtin import builtin_units, read_builtin
from tests.conftest import GPT1
from tokenizer.bpe import SPECIALS, BPETokenizer, TokenizerError
from tokenizer.config import TokenizerConfig
from tokenizer.stats import corpus_stats
from tokenizer.train import train

MERGES = 400

VARIED = [
    "Hello, World! It's 3.14 o'clock.",
    "Don’t stop — “quoted” text… and ´acute´ marks",
    "tabs\tand   spaces\r\nand\n\n\nnewlines  ",
    "naïve café, Ångström, Straße, ΕΛΛΗΝΙΚΑ, русский, 日本語, emoji 🙂👍🏽",
    "numbers 1,234,567.89 and 1e-9 and 0x1F and -42 and v2.0.1",
    "U.S.A. e.g. i.e. co-operate state-of-the-art we'll they're I'd I'm",
    "punctuation!!! ??? ... --- ((nested)) [x] {y} <z> a/b\\c *bold* _u_ |pipe|",
    "def f(x):\n    return x ** 2  # squared",
    "",
    "   ",
    "\n",
    "<|start|> premise <|delimiter|> hypothesis <|extract|>",
    "x" * 300,
]


def corpus() -> list[str]:
    """Real English prose: the topics of Python's built-in help."""
    units = [u for u in builtin_units() if u.startswith("topic/")]
    return [d.text for d in read_builtin("builtin", units)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


@pytest.fixture(scope="module", params=["gpt1", "bytelevel"])
def tok(request, texts) -> BPETokenizer:
    return train(TokenizerConfig(style=request.param, merges=MERGES), lambda: iter(texts))


def plain(strings: list[str]) -> list[str]:
    """Strings without special tokens (decode leaves those out)."""
    return [s for s in strings if "<|" not in s]


def many_strings(texts: list[str]) -> list[str]:
    """A few hundred varied strings: the fixed cases, then lines and sentences of the corpus."""
    lines = [line for t in texts[:40] for line in t.splitlines() if line.strip()]
    return VARIED + lines[:300]


def test_bytelevel_round_trip_is_exact(texts):
    tok = train(TokenizerConfig(style="bytelevel", merges=MERGES), lambda: iter(texts))
    for s in plain(many_strings(texts)):
        assert tok.decode(tok.encode(s)) == s


def test_gpt1_round_trip_gives_normalised_words_joined_by_spaces(texts):
    tok = train(TokenizerConfig(style="gpt1", merges=MERGES), lambda: iter(texts))
    for s in plain(many_strings(texts)):
        if tok.unk_id in tok.encode(s):
            continue  # characters outside the alphabet come back as <unk>
        assert tok.decode(tok.encode(s)) == " ".join(tok.words(s))


def test_gpt1_normalises_like_the_original_text_encoder(texts):
    tok = train(TokenizerConfig(style="gpt1", merges=MERGES), lambda: iter(texts))
    assert tok.words("Don’t STOP — wait…\n\n  Then “go”!!") == [
        "do", "n't", "stop", "-", "wait", "...", "\n", "then", '"', "go", '"', "!", "!",
    ]  # fmt: skip
    assert tok.words("It's 1,234.5 in the U.S.") == ["it", "'s", "1", ",", "234.5", "in", "the", "u.s."]
    assert tok.words("\n  padded\n\n") == ["padded"]
    assert tok.tokens("the end")[0] == "the</w>" and tok.tokens("the end")[-1].endswith("</w>")
    assert tok.tokens("a\nb")[1] == "\n</w>"


def test_special_ids_follow_the_bpe_vocabulary_in_a_fixed_order(tok, tmp_path):
    base = tok.vocab_size - len(SPECIALS)
    assert [getattr(tok.specials, name) for name in SPECIALS] == list(range(base, tok.vocab_size))
    tok.save(tmp_path)
    again = BPETokenizer.load(tmp_path)
    assert again.specials == tok.specials
    meta = json.loads((tmp_path / "gpt1_tokenizer.json").read_text())
    assert meta["specials"] == {name: base + i for i, name in enumerate(SPECIALS)}
    ids = tok.encode("<|start|> a <|delimiter|> b <|extract|>")
    assert ids[0] == tok.specials.start and ids[-1] == tok.specials.extract
    assert tok.specials.delimiter in ids
    assert "<|" not in tok.decode(ids)


def test_learns_exactly_the_configured_merges(tok, tmp_path):
    tok.save(tmp_path)
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert len([m for m in merges if not m.startswith("#")]) == MERGES
    assert tok.merges == MERGES


def test_training_is_deterministic_and_a_shorter_run_is_a_prefix(texts, tmp_path):
    for style in ("gpt1", "bytelevel"):
        files = []
        for run in ("a", "b"):
            train(TokenizerConfig(style=style, merges=MERGES), lambda: iter(texts)).save(tmp_path / style / run)
            files.append({p.name: p.read_bytes() for p in sorted((tmp_path / style / run).iterdir())})
        assert files[0] == files[1]
        short = train(TokenizerConfig(style=style, merges=MERGES // 2), lambda: iter(texts))
        short.save(tmp_path / style / "short")
        long_merges = (tmp_path / style / "a" / "merges.txt").read_text().splitlines()
        short_merges = (tmp_path / style / "short" / "merges.txt").read_text().splitlines()
        assert long_merges[: len(short_merges)] == short_merges


def test_transformers_loads_the_export_with_the_same_ids(tok, texts, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, OpenAIGPTTokenizer, PreTrainedTokenizerFast

    tok.save(tmp_path)
    loaded = [AutoTokenizer.from_pretrained(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)]
    if tok.style == "gpt1":
        # transformers >= 5 rebuilds OpenAIGPTTokenizer's own BERT-style pipeline unless handed ours.
        file = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
        loaded.append(OpenAIGPTTokenizer.from_pretrained(tmp_path, tokenizer_object=file))
    strings = many_strings(texts)
    assert len(strings) > 200
    for hf in loaded:
        assert hf.eos_token_id == tok.specials.eod and hf.pad_token_id == tok.specials.pad
        assert hf.convert_tokens_to_ids(SPECIALS["extract"]) == tok.specials.extract
        for s in strings:
            assert hf.encode(s, add_special_tokens=False) == tok.encode(s), s


def test_stats_count_unknown_characters_only_where_the_style_has_them(tok):
    stats = corpus_stats(tok, ["the cat sat on the mat", "ⲁⲃⲅ unseen script"])
    assert stats["documents"] == 2 and stats["words"] == 9
    assert stats["bytes_per_token"] == pytest.approx(stats["bytes"] / stats["tokens"])
    assert stats["tokens_per_word"] == pytest.approx(stats["tokens"] / 9)
    if tok.style == "gpt1":
        assert stats["unknown"] == 3
    else:
        assert stats["unknown"] == 0


def test_max_alphabet_turns_rare_characters_into_unknown(texts):
    tok = train(TokenizerConfig(style="gpt1", merges=50, max_alphabet=30), lambda: iter(texts))
    assert tok.encode("e")[0] != tok.unk_id  # frequent letters stay
    assert tok.encode("@")[0] == tok.unk_id


def test_empty_corpus_is_a_clear_error():
    for style in ("gpt1", "bytelevel"):
        with pytest.raises(TokenizerError, match="empty"):
            train(TokenizerConfig(style=style, merges=10), lambda: iter([]))
    with pytest.raises(TokenizerError, match="empty"):
        train(TokenizerConfig(merges=10), lambda: iter(["   ", "\t"]))


def test_too_many_merges_for_the_corpus_is_a_clear_error():
    with pytest.raises(TokenizerError, match=r"supports only .* merges.*tokenizer\.merges is 5,000"):
        train(TokenizerConfig(merges=5000), lambda: iter(["a small corpus, a small corpus"] * 3))


def test_loading_a_folder_that_is_not_a_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="not a tokenizer folder"):
        BPETokenizer.load(tmp_path / "missing")
    proc = subprocess.run([GPT1, "tokenizer", "encode", "--tokenizer", str(tmp_path), "hi"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path}: not a tokenizer folder (needs tokenizer.json "
                                                "and gpt1_tokenizer.json)"]  # fmt: skip


def test_encode_and_decode_commands_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    text = "Hello, world!"
    enc = subprocess.run([GPT1, "tokenizer", "encode", "-t", str(tmp_path), text], capture_output=True, text=True)
    assert enc.returncode == 0, enc.stderr
    ids = [int(i) for i in enc.stdout.split()]
    assert ids == tok.encode(text)
    dec = subprocess.run([GPT1, "tokenizer", "decode", "-t", str(tmp_path), *map(str, ids)],
                         capture_output=True, text=True)  # fmt: skip
    assert dec.stdout.rstrip("\n") == tok.decode(ids)
    bad = subprocess.run([GPT1, "tokenizer", "decode", "-t", str(tmp_path), str(tok.vocab_size)],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "out of range" in bad.stderr


def train_command(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [GPT1, "tokenizer", "train", "configs/tiny.yaml", "--set", f"run.out_dir={out}", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_tokenizer_stage_trains_on_the_data_stage_and_is_skipped_when_current(tiny_out):
    first = train_command(tiny_out)
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.strip().splitlines()[-1])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"]["data"]["digest"]
    meta = manifest["tokenizer"]
    assert meta["merges"] == 2000 and meta["style"] == "gpt1"
    assert meta["specials"]["eod"] == meta["vocab_size"] - len(SPECIALS)
    stats = manifest["stats"]["val"]
    assert stats["documents"] > 0 and 1.0 < stats["tokens_per_word"] < 3.0
    files = {f["path"] for f in manifest["files"]}
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= files

    again = train_command(tiny_out)
    assert "tokenizer: skipped" in again.stderr and again.stdout.strip().splitlines()[-1] == str(folder)
    before = (folder / "tokenizer.json").read_bytes()
    forced = train_command(tiny_out, "--force")
    assert forced.returncode == 0 and (folder / "tokenizer.json").read_bytes() == before

    other = train_command(tiny_out, "--set", "tokenizer.style=bytelevel")
    assert other.returncode == 0, other.stderr
    assert Path(other.stdout.strip().splitlines()[-1]) != folder

    assert manifest["sample"] == {"fraction": 1.0, "max_bytes": None}
    sample = train_command(tiny_out, "--set", "tokenizer.max_bytes=400000", "--set", "tokenizer.merges=500")
    assert sample.returncode == 0, sample.stderr
    sampled = json.loads((Path(sample.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())
    assert 0 < sampled["sample"]["fraction"] < 1 and "training on" in sample.stderr


def test_max_bytes_trains_on_a_hash_sample_of_about_that_size_the_same_whatever_the_file_order(tmp_path):
    from pipeline.documents import DOCS_SCHEMA
    from pipeline.tokenizer_stage import sample_fraction, sampled

    texts = [f"document {i} " + "word " * (i % 50) for i in range(2000)]
    files = []
    for n, chunk in enumerate((texts[:1000], texts[1000:])):
        files.append(tmp_path / f"part-{n:05d}.parquet")
        rows = [{"id": str(i), "text": t, "source": "s", "meta": "{}"} for i, t in enumerate(chunk)]
        pq.write_table(pa.Table.from_pylist(rows, schema=DOCS_SCHEMA), files[-1])
    total = sum(len(t.encode()) for t in texts)
    keep = sample_fraction(files, total // 4)
    assert 0.2 < keep < 0.3, "the metadata's size is the text's, give or take Parquet's overhead"
    chosen = list(sampled(iter(texts), keep))
    assert 0.8 * total / 4 < sum(len(t.encode()) for t in chosen) < 1.2 * total / 4
    assert set(sampled(iter(reversed(texts)), keep)) == set(chosen)
    assert sample_fraction(files, None) == 1.0 and sample_fraction(files, 10 * total) == 1.0
    assert list(sampled(iter(texts), 1.0)) == texts
