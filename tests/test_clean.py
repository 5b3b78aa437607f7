"""Cleaning: each formatter repairs what it should, each filter rejects its own kind of bad text, measures add up."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.clean import (
    Filter,
    Formatter,
    alpha_word_fraction,
    boilerplate_remover,
    build_steps,
    clean,
    dup_ngram_fraction,
    duplicate_line_fraction,
    fix_unicode,
    mean_word_length,
    normalize_whitespace,
    symbol_ratio,
    top_ngram_fraction,
)
from pipeline.config import BOILERPLATE, CleanConfig
from pipeline.documents import Doc

PROSE = (
    "The old lighthouse stood at the edge of the cliff for more than two hundred years. Every evening the keeper "
    "climbed the narrow stairs, trimmed the wick and polished the great glass lens until it shone. Ships passing in "
    "the night relied on its steady beam to find their way around the rocks. When the keeper finally retired, the "
    "village decided to keep the light burning, and children from the school took turns helping the new keeper "
    "with his evening work."
)
GERMAN = (
    "Der alte Leuchtturm stand mehr als zweihundert Jahre lang am Rand der Klippe. Jeden Abend stieg der Wärter die "
    "schmalen Treppen hinauf, schnitt den Docht zurecht und polierte die große Glaslinse, bis sie glänzte. Schiffe, "
    "die in der Nacht vorbeifuhren, verließen sich auf seinen ruhigen Strahl, um ihren Weg um die Felsen zu finden."
)
DEFAULT_STEPS = [
    "too_long",
    "fix_unicode",
    "strip_control",
    "boilerplate",
    "whitespace",
    "too_short",
    "too_few_words",
    "mean_word_length",
    "symbol_ratio",
    "alpha_words",
    "duplicate_lines",
    "top_2gram",
    "top_3gram",
    "top_4gram",
    "dup_5gram",
    "dup_7gram",
    "dup_10gram",
]


def doc(text: str) -> Doc:
    return Doc("doc-1", "test", text)


def steps_for(**fields) -> list:
    """The steps of a config; cached, since steps are stateless and the language model is slow to load."""
    key = repr(sorted(fields.items()))
    if key not in _STEPS:
        _STEPS[key] = build_steps(CleanConfig(**fields))
    return _STEPS[key]


_STEPS: dict[str, list] = {}


def steps_by_name(**fields) -> dict:
    return {step.name: step for step in steps_for(**fields)}


def run_step(name: str, text: str, **fields) -> tuple[Doc, Counter]:
    stats = Counter()
    return steps_by_name(**fields)[name](doc(text), stats), stats


def test_prose_has_about_eighty_words():
    assert 70 <= len(PROSE.split()) <= 90


# Formatters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "fixed"),
    [
        ("donâ€™t stop", "don't stop"),
        ("the cafÃ© is open", "the café is open"),
        ("one â€” two", "one — two"),
        ("cafe\u0301 composed to NFC", "caf\u00e9 composed to NFC"),
    ],
)
def test_fix_unicode_repairs_mojibake_and_normalises_to_nfc(broken, fixed):
    assert fix_unicode(broken) == fixed


def test_fix_unicode_leaves_clean_text_alone_and_counts_only_changes():
    step = steps_by_name()["fix_unicode"]
    stats = Counter()
    assert step(doc(PROSE), stats).text == PROSE and not stats
    assert step(doc("donâ€™t"), stats).text == "don't" and stats == Counter({"fix_unicode.changed": 1})


@pytest.mark.parametrize(
    "text",
    ["fish &amp; chips", "a&#x27;b", "line one\r\nline two", "bell\x07here", "\x1b[31mred\x1b[0m", "nul\x00byte",
     "form\x0cfeed", "tabs\tand\nnewlines only"],
)  # fmt: skip
def test_ascii_that_ftfy_would_touch_still_goes_through_it(text):
    import ftfy

    assert fix_unicode(text) == ftfy.fix_text(text, normalization="NFC")


def test_plain_ascii_is_returned_as_ftfy_would_return_it():
    import ftfy

    from pipeline.builtin import builtin_units, read_builtin

    texts = [d.text for d in read_builtin("builtin", builtin_units()) if d.text.isascii()]
    assert len(texts) > 100
    assert [fix_unicode(t) for t in texts] == [ftfy.fix_text(t, normalization="NFC") for t in texts]


def test_strip_control_removes_control_characters_but_keeps_newlines_tabs_and_carriage_returns():
    step = steps_by_name()["strip_control"]
    stats = Counter()
    out = step(doc("a\x00b\x07c\td\ne\x1bf\x7fg\x85h\x0bi\x0cj\r\nk"), stats)
    assert out.text == "abc\td\nefghij\r\nk" and stats == Counter({"strip_control.changed": 1})


def test_strip_control_keeps_ordinary_unicode():
    step = steps_by_name()["strip_control"]
    text = "naïve café — “quoted” 日本語 ✓"
    assert step(doc(text), Counter()).text == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  many   spaces\tand\t\ttabs  ", "many spaces and tabs"),
        ("line one   \n   line two", "line one\nline two"),
        ("a\n\n\n\n\nb", "a\n\nb"),
        ("a\n \t \n  \n\nb", "a\n\nb"),
        ("windows\r\nline\rends", "windows\nline\nends"),
        ("\n\n  edges  \n\n", "edges"),
        ("non\u00a0breaking\u2003space", "non breaking space"),
        ("a\n\nb", "a\n\nb"),
    ],
)
def test_whitespace_is_collapsed_trimmed_and_blank_lines_limited_to_one(text, expected):
    assert normalize_whitespace(text) == expected


def test_boilerplate_lines_are_removed_and_ordinary_lines_kept():
    remove = boilerplate_remover(BOILERPLATE)
    text = "\n".join(
        [
            "Skip to main content",
            "A real sentence about gardens.",
            "We use cookies to improve your experience.",
            "Please enable JavaScript to view this page.",
            "Read our Privacy Policy and Terms of Service.",
            "© 2024 Example Ltd. All Rights Reserved.",
            "  Back to top",
            "You can click here to learn more about roses.",
            "Another real sentence.",
        ]
    )
    assert remove(text) == "\n".join(
        ["A real sentence about gardens.", "You can click here to learn more about roses.", "Another real sentence."]
    )


def test_boilerplate_patterns_are_configurable_and_case_insensitive():
    step = steps_by_name(boilerplate_patterns=[r"^advert"])["boilerplate"]
    stats = Counter()
    out = step(doc("ADVERTISEMENT\nkeep me\nwe use cookies"), stats)
    assert out.text == "keep me\nwe use cookies" and stats == Counter({"boilerplate.changed": 1})


# Filters ---------------------------------------------------------------------------------------------


def repeated(words: str, times: int) -> str:
    return " ".join([words] * times)


BAD = {
    "too_long": ("x" * 101, {"max_chars": 100}),
    "too_short": ("A short note about the weather.", {}),
    "too_few_words": (repeated("extraordinarily", 20), {}),
    "mean_word_length": (repeated("a b c d e f g h i j", 10), {}),
    "symbol_ratio": (repeated("# heading ... more text", 20), {}),
    "alpha_words": (repeated("12 345 6789 2024 -- 99.5 the", 20), {}),
    "duplicate_lines": ("\n".join(["Buy our product today."] * 5 + ["Something else."]), {}),
    "top_2gram": (" ".join(f"the cat word{i}" for i in range(30)), {}),
    "top_3gram": (" ".join(f"the cat sat word{i}" for i in range(30)), {}),
    "top_4gram": (" ".join(f"the cat sat down word{i}" for i in range(30)), {}),
    "dup_5gram": (PROSE + " " + " ".join(PROSE.split()[:40]), {}),
    "dup_7gram": (PROSE + " " + " ".join(PROSE.split()[:40]), {}),
    "dup_10gram": (PROSE + " " + " ".join(PROSE.split()[:40]), {}),
    "language": (GERMAN, {"languages": ["en"]}),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_filter_rejects_its_bad_text_with_its_own_reason_and_counts_it(name):
    text, fields = BAD[name]
    out, stats = run_step(name, text, **fields)
    assert out.reason == name and out.detail
    assert stats == Counter({f"{name}.rejected": 1})


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_filter_keeps_ordinary_english_prose(name):
    out, stats = run_step(name, PROSE, **({"languages": ["en"]} if name == "language" else {}))
    assert out.reason is None and out.text == PROSE and not stats


def test_ordinary_prose_passes_every_default_step_unchanged():
    stats = Counter()
    out = clean(doc(PROSE), steps_for(languages=["en"]), stats)
    assert (out.reason, out.text) == (None, PROSE) and not stats


def test_language_filter_keeps_english_and_rejects_german_naming_the_language():
    steps = steps_for(languages=["en"])
    assert clean(doc(PROSE), steps, Counter()).reason is None
    german = clean(doc(GERMAN), steps, Counter())
    assert german.reason == "language" and german.detail.startswith("de (")


def test_language_filter_keeps_every_listed_language():
    out = clean(doc(GERMAN), build_steps(CleanConfig(languages=["en", "de"])), Counter())
    assert out.reason is None


def test_language_filter_rejects_a_listed_language_below_the_minimum_score():
    mixed = PROSE[:60] + " " + GERMAN[:60]  # English, but not clearly so
    assert run_step("language", mixed, languages=["en"], min_language_score=0.5)[0].reason is None
    out, _ = run_step("language", mixed, languages=["en"], min_language_score=0.9)
    assert out.reason == "language" and out.detail.startswith("en (")


def test_too_long_runs_first_so_a_huge_document_is_never_repaired():
    stats = Counter()
    out = clean(doc("donâ€™t " * 30), build_steps(CleanConfig(max_chars=100)), stats)
    assert out.reason == "too_long" and out.text == "donâ€™t " * 30
    assert stats == Counter({"too_long.rejected": 1})


def test_default_steps_run_in_documented_order():
    assert [s.name for s in build_steps(CleanConfig())] == DEFAULT_STEPS
    assert [s.name for s in steps_for(languages=["en"])] == [*DEFAULT_STEPS, "language"]


@pytest.mark.parametrize(
    ("fields", "gone"),
    [
        ({"max_chars": None}, {"too_long"}),
        ({"min_chars": None}, {"too_short"}),
        ({"min_words": None}, {"too_few_words"}),
        ({"mean_word_length": None}, {"mean_word_length"}),
        ({"max_symbol_ratio": None}, {"symbol_ratio"}),
        ({"min_alpha_words": None}, {"alpha_words"}),
        ({"max_duplicate_lines": None}, {"duplicate_lines"}),
        ({"max_top_ngram": {}}, {"top_2gram", "top_3gram", "top_4gram"}),
        ({"max_duplicate_ngrams": {}}, {"dup_5gram", "dup_7gram", "dup_10gram"}),
        ({"fix_unicode": False}, {"fix_unicode"}),
        ({"remove_boilerplate": False}, {"boilerplate"}),
        ({"boilerplate_patterns": []}, {"boilerplate"}),
    ],
)
def test_a_rule_set_to_none_or_empty_is_left_out(fields, gone):
    names = [s.name for s in build_steps(CleanConfig(**fields))]
    assert names == [n for n in DEFAULT_STEPS if n not in gone]


def test_ngram_rules_follow_the_configured_sizes():
    names = [s.name for s in build_steps(CleanConfig(max_top_ngram={5: 0.5, 2: 0.3}, max_duplicate_ngrams={6: 0.2}))]
    assert [n for n in names if "gram" in n] == ["top_2gram", "top_5gram", "dup_6gram"]


def test_disabled_rule_lets_its_bad_text_through():
    text = repeated("a b c d e f g h i j", 10)
    others_off = {"min_chars": None, "max_top_ngram": {}, "max_duplicate_ngrams": {}}
    assert clean(doc(text), build_steps(CleanConfig(**others_off)), Counter()).reason == "mean_word_length"
    assert clean(doc(text), build_steps(CleanConfig(**others_off, mean_word_length=None)), Counter()).reason is None


# clean() ---------------------------------------------------------------------------------------------


def test_clean_stops_at_the_first_rejection_and_counts_changes_and_rejections():
    later = []
    steps = [
        Formatter("upper", str.upper),
        Formatter("same", lambda t: t),
        Filter("reject_all", lambda t: "always"),
        Filter("spy", lambda t: later.append(t)),
        Formatter("lower", str.lower),
    ]
    stats = Counter()
    out = clean(doc("hello"), steps, stats)
    assert (out.text, out.reason, out.detail) == ("HELLO", "reject_all", "always")
    assert stats == Counter({"upper.changed": 1, "reject_all.rejected": 1}) and not later


def test_clean_of_an_already_rejected_document_does_nothing():
    stats = Counter()
    rejected = Doc.rejected("x", "test", "empty_file")
    assert clean(rejected, build_steps(CleanConfig()), stats) is rejected and not stats


def test_clean_repairs_then_filters_with_the_default_steps():
    stats = Counter()
    messy = "Skip to content\n\x0c" + PROSE.replace("keeper", "keeperâ€™s", 1) + "   \n\n\n\nWe use cookies."
    out = clean(doc(messy), build_steps(CleanConfig()), stats)
    assert out.reason is None and out.text == PROSE.replace("keeper", "keeper's", 1)
    assert stats == Counter(
        {"fix_unicode.changed": 1, "strip_control.changed": 1, "boilerplate.changed": 1, "whitespace.changed": 1}
    )


def test_clean_rejects_a_short_document_after_cleaning_and_counts_one_rejection():
    stats = Counter()
    out = clean(doc("Tiny.\n\n\n" + "   " * 300), build_steps(CleanConfig()), stats)
    assert (out.reason, out.text) == ("too_short", "Tiny.")
    assert stats["too_short.rejected"] == 1 and sum(v for k, v in stats.items() if k.endswith(".rejected")) == 1


# Measures, computed by hand ------------------------------------------------------------------------------


def test_top_ngram_fraction_by_hand():
    # words: the cat the cat the dog -> 18 characters; (the, cat) occurs twice: 2 × 6 / 18
    assert top_ngram_fraction("The cat the CAT the dog", 2) == pytest.approx(12 / 18)
    # (the, cat, the) starts at words 0 and 2: 2 × 9 / 18, overlapping occurrences both count
    assert top_ngram_fraction("the cat the cat the dog", 3) == pytest.approx(2 * 9 / 18)
    assert top_ngram_fraction("all words differ here", 2) == 0.0
    assert top_ngram_fraction("too short", 3) == 0.0
    assert top_ngram_fraction("", 2) == 0.0


def test_dup_ngram_fraction_by_hand():
    # one two three one two three four: 26 characters; both copies of (one, two, three) cover 22
    assert dup_ngram_fraction("one two three one two three four", 3) == pytest.approx(22 / 26)
    # overlapping repeats count each word once: a a a a -> every word covered
    assert dup_ngram_fraction("aa aa aa aa", 2) == pytest.approx(1.0)
    assert dup_ngram_fraction("every word here is new", 2) == 0.0
    assert dup_ngram_fraction("short", 2) == 0.0


def test_duplicate_line_fraction_by_hand():
    # non-blank lines a b a a c: two of five repeat an earlier one
    assert duplicate_line_fraction("a\nb\na\n\na\nc") == pytest.approx(2 / 5)
    assert duplicate_line_fraction("a\nb\nc") == 0.0
    assert duplicate_line_fraction("") == 0.0


def test_mean_word_length_by_hand():
    assert mean_word_length("I am here") == pytest.approx(7 / 3)
    assert mean_word_length("  spaced\tout\n words ") == pytest.approx(14 / 3)
    assert mean_word_length("") == 0.0


def test_symbol_ratio_by_hand():
    # words: # one ... two … three # -> 7 words; 2 hashes, 1 "...", 1 "…"
    assert symbol_ratio("# one ... two … three #") == pytest.approx(4 / 7)
    assert symbol_ratio("plain words only") == 0.0
    assert symbol_ratio("") == 0.0


def test_alpha_word_fraction_by_hand():
    # abc and a1 contain a letter; 123 and !! do not
    assert alpha_word_fraction("abc 123 a1 !!") == pytest.approx(0.5)
    assert alpha_word_fraction("über 42 café") == pytest.approx(2 / 3)
    assert alpha_word_fraction("") == 0.0
