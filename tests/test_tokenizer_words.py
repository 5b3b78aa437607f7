"""The gpt1 style's word splits follow the original encoder (text_standardize, then spaCy's English
rules), on strings written here: no spaCy needed."""

from __future__ import annotations

import pytest

from tokenizer.bpe import empty


@pytest.fixture(scope="module")
def words():
    tok = empty("gpt1")

    def split(text: str) -> str:
        return " ".join(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))

    return split


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("__init__", "_ _ init _ _"),
        ("**kwargs !! ?? ;; ((x)) [[y]] {{z}}", "* * kwargs ! ! ? ? ; ; ( ( x ) ) [ [ y ] ] { { z } }"),
        (">>> a == b :: c", "> > > a = = b : : c"),
        ('"" ``x``', '" " ` ` x ` `'),
        ("a -- b ~~ c // d \\\\ e || f", "a -- b ~~ c // d \\\\ e || f"),
        ("C++ x+y 1,234.5", "c + + x + y 1 , 234.5"),
    ],
)
def test_marks_are_split_as_text_standardize_then_spacy_split_them(words, text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpuset.cpus .config lore.kernel.org", "cpuset.cpus .config lore.kernel.org"),
        ("16th 640x480 1990s 0xff 1e100", "16th 640x480 1990s 0xff 1e100"),
        ("v4.4 usb2.0 a@b.com @total", "v4.4 usb2.0 a@b.com @total"),
        ("count=1 key= 8:16 db8::1", "count=1 key= 8:16 db8::1"),
        ("a=b x:y 1^2 x^2", "a = b x : y 1 ^ 2 x^2"),
        ("o'clock rock'n'roll 'em", "o'clock rock'n'roll 'em"),
    ],
)
def test_names_numbers_and_inner_marks_stay_one_word(words, text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the end. Mr. J. Smith, Inc. e.g. the U.S.", "the end . mr. j. smith , inc. e.g. the u.s."),
        ("'quoted' dogs' it's John's <tag>", "' quoted ' dogs ' it 's john 's < tag >"),
        ("$5 5% 5km 10kb #1 :param", "$ 5 5 % 5 km 10 kb # 1 : param"),
        ("end... a..b ...", "end ... a .. b ..."),
        ("''' ''", "' '' ''"),
    ],
)
def test_prefixes_and_suffixes_come_off_unless_a_special_case_keeps_them(words, text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cannot gonna gotta", "can not gon na got ta"),
        ("don't won't Isn't dont", "do n't wo n't is n't do nt"),
        ("I'm you're she'll we've I'd", "i 'm you 're she 'll we 've i 'd"),
        ("whats id wed", "what s i d we d"),
        ("ill its well were shed", "ill its well were shed"),
        ("5pm 10a.m. y'all cannot.", "5 pm 10 a.m. y' all can not ."),
    ],
)
def test_special_cases_split_as_spacy_does(words, text, expected):
    assert words(text) == expected


def test_a_dot_before_a_capital_splits_before_lower_casing_unless_it_is_in_a_host_name(words):
    assert words("os.Path io.BytesIO os.path") == "os . path io . bytesio os.path"
    assert words("yarl.URL.build docs.Python.org:8080") == "yarl.url.build docs.python.org:8080"


def test_newlines_are_words_and_outer_whitespace_is_dropped(words):
    assert words("  one\n\n  two \r\n three  ") == "one \n two \n three"


def test_a_change_to_the_rules_changes_the_tokenizer_stage_key(monkeypatch):
    from launch.config import Config
    from launch.stages import tokenizer_stage
    from pipeline.runner import stage_key
    from tokenizer import words

    def key(cfg: Config) -> str:
        return stage_key(tokenizer_stage(cfg), {"data": "same-data"})

    cfg = Config()
    before = key(cfg)
    assert key(Config()) == before
    monkeypatch.setattr(words, "STANDARDIZED", words.STANDARDIZED.replace("~+|", ""))
    assert key(cfg) != before
    pinned = cfg.model_copy(update={"tokenizer": cfg.tokenizer.model_copy(update={"path": "trained/tok"})})
    pinned_key = key(pinned)
    monkeypatch.undo()
    assert key(pinned) == pinned_key  # a trained tokenizer brings its own rules
