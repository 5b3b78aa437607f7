"""Cleaning steps: formatters that repair text and filters that reject documents with a reason.

Each step does one thing and counts what it did, in the spirit of datatrove's pipeline steps. The
same list of steps runs in a plain loop (tests, benchmarks' baseline) and inside Ray workers.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import CleanConfig
from pipeline.documents import Doc

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
FTFY_ASCII = re.compile(r"[\x00-\x08\x0b-\x1f\x7f&]")  # the ASCII that ftfy may change
SPACES = re.compile(r"[^\S\n]+")
BLANK_LINES = re.compile(r"\n{3,}")
BULLETS = ("•", "-", "*", "‣", "◦", "▪")


@dataclass(frozen=True)
class Formatter:
    """A step that rewrites the text; counts the documents it changed."""

    name: str
    fn: Callable[[str], str]

    def __call__(self, doc: Doc, stats: Counter) -> Doc:
        text = self.fn(doc.text)
        if text != doc.text:
            stats[f"{self.name}.changed"] += 1
            doc.text = text
        return doc


@dataclass(frozen=True)
class Filter:
    """A step that keeps a document or rejects it: `fn` returns a detail string to reject, None to keep."""

    name: str
    fn: Callable[[str], str | None]

    def __call__(self, doc: Doc, stats: Counter) -> Doc:
        detail = self.fn(doc.text)
        if detail is not None:
            stats[f"{self.name}.rejected"] += 1
            doc.reject(self.name, detail)
        return doc


Step = Formatter | Filter


def build_steps(cfg: CleanConfig) -> list[Step]:
    """The configured steps, in order: cheap length check, repair, normalise, then quality rules."""
    steps: list[Step] = []
    if cfg.max_chars is not None:
        steps.append(Filter("too_long", _bounded(len, high=cfg.max_chars, unit="characters")))
    if cfg.fix_unicode:
        steps.append(Formatter("fix_unicode", fix_unicode))
    steps.append(Formatter("strip_control", lambda t: CONTROL.sub("", t)))
    if cfg.remove_boilerplate and cfg.boilerplate_patterns:
        steps.append(Formatter("boilerplate", boilerplate_remover(cfg.boilerplate_patterns)))
    steps.append(Formatter("whitespace", normalize_whitespace))
    if cfg.min_chars is not None:
        steps.append(Filter("too_short", _bounded(len, low=cfg.min_chars, unit="characters")))
    if cfg.min_words is not None:
        steps.append(Filter("too_few_words", _bounded(lambda t: len(t.split()), low=cfg.min_words, unit="words")))
    if cfg.mean_word_length is not None:
        steps.append(Filter("mean_word_length", _bounded(mean_word_length, *cfg.mean_word_length)))
    if cfg.max_symbol_ratio is not None:
        steps.append(Filter("symbol_ratio", _bounded(symbol_ratio, high=cfg.max_symbol_ratio, unit="symbols per word")))
    if cfg.min_alpha_words is not None:
        steps.append(
            Filter("alpha_words", _bounded(alpha_word_fraction, low=cfg.min_alpha_words, unit="alphabetic words"))
        )
    if cfg.max_duplicate_lines is not None:
        steps.append(
            Filter("duplicate_lines", _bounded(duplicate_line_fraction, high=cfg.max_duplicate_lines, unit="repeated"))
        )
    for n, limit in sorted(cfg.max_top_ngram.items()):
        steps.append(
            Filter(f"top_{n}gram", _bounded(lambda t, n=n: top_ngram_fraction(t, n), high=limit, unit="of characters"))
        )
    for n, limit in sorted(cfg.max_duplicate_ngrams.items()):
        steps.append(
            Filter(f"dup_{n}gram", _bounded(lambda t, n=n: dup_ngram_fraction(t, n), high=limit, unit="of characters"))
        )
    if cfg.languages:
        steps.append(Filter("language", language_filter(cfg.languages, cfg.min_language_score)))
    return steps


def clean(doc: Doc, steps: list[Step], stats: Counter) -> Doc:
    """Run the steps in order until one rejects the document."""
    for step in steps:
        if doc.reason is not None:
            break
        doc = step(doc, stats)
    return doc


# Formatters ------------------------------------------------------------------------------------


def fix_unicode(text: str) -> str:
    """Repair mojibake and broken HTML entities (ftfy), then normalise to NFC.

    Plain ASCII without control characters, escapes, carriage returns or `&` has nothing ftfy
    would change (mojibake, curly quotes, ligatures and wide forms are all non-ASCII), so it is
    returned as it is: ftfy is most of the cleaning time, and much of English text is such ASCII."""
    if text.isascii() and not FTFY_ASCII.search(text):
        return text
    import ftfy

    return unicodedata.normalize("NFC", ftfy.fix_text(text, normalization="NFC"))


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces and tabs, trim line ends, keep at most one blank line in a row."""
    lines = (SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def boilerplate_remover(patterns: list[str]) -> Callable[[str], str]:
    rule = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    return lambda text: "\n".join(line for line in text.split("\n") if not rule.search(line))


# Measures for the quality filters (Gopher, Rae et al. 2021) ---------------------------------------


def mean_word_length(text: str) -> float:
    words = text.split()
    return sum(map(len, words)) / len(words) if words else 0.0


def symbol_ratio(text: str) -> float:
    words = text.split()
    return (text.count("#") + text.count("...") + text.count("…")) / max(1, len(words))


def alpha_word_fraction(text: str) -> float:
    words = text.split()
    return sum(any(c.isalpha() for c in w) for w in words) / max(1, len(words))


def duplicate_line_fraction(text: str) -> float:
    lines = [line for line in text.split("\n") if line.strip()]
    return (len(lines) - len(set(lines))) / max(1, len(lines))


def _word_ngrams(text: str, n: int) -> tuple[list[str], list[tuple[str, ...]], int]:
    """Lower-cased words, their n-grams, and the number of word characters."""
    words = text.lower().split()
    return words, list(zip(*(words[i:] for i in range(n)))), sum(map(len, words))


def top_ngram_fraction(text: str, n: int) -> float:
    """Share of word characters covered by the most frequent word n-gram."""
    _, grams, total = _word_ngrams(text, n)
    if not grams or not total:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]
    return count * sum(map(len, gram)) / total if count > 1 else 0.0


def dup_ngram_fraction(text: str, n: int) -> float:
    """Share of word characters inside word n-grams that occur more than once."""
    words, grams, total = _word_ngrams(text, n)
    if not grams or not total:
        return 0.0
    counts = Counter(grams)
    covered = bytearray(len(words))
    for start, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[start : start + n] = b"\x01" * n
    return sum(len(w) for w, c in zip(words, covered) if c) / total


def language_filter(languages: list[str], min_score: float) -> Callable[[str], str | None]:
    try:
        from py3langid.langid import MODEL_DIR as model_dir
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise ImportError("the language filter needs py3langid: pip install 'gpt1[lang]'") from None
    identifier = LanguageIdentifier.from_modelpath(model_dir / MODEL_FILE, norm_probs=True)
    wanted = set(languages)

    def check(text: str) -> str | None:
        lang, score = identifier.classify(text.replace("\n", " ")[:10_000])
        return None if lang in wanted and score >= min_score else f"{lang} ({score:.2f})"

    return check


# Thresholds as filters ----------------------------------------------------------------------------


def _bounded(
    measure: Callable[[str], float], low: float | None = None, high: float | None = None, unit: str = ""
) -> Callable[[str], str | None]:
    """A filter check: reject when the measure falls below `low` or above `high`, saying by how much."""

    def check(text: str) -> str | None:
        value = measure(text)
        if low is not None and high is not None:
            return None if low <= value <= high else f"{value:.3g} outside [{low:g}, {high:g}]"
        if high is not None and value > high:
            return f"{value:.3g} {unit} > {high:g}"
        if low is not None and value < low:
            return f"{value:.3g} {unit} < {low:g}"
        return None

    return check
