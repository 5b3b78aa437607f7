"""How closely the gpt1 tokenizer splits words as the original GPT-1 text encoder did.

    python -m bench.tokenizer_fidelity [FOLDER ...] [--name PATTERN] [--kinds 20]    (needs the `fidelity` extra: spaCy)

The original (finetune-transformer-lm's `text_utils.py`) ran ftfy, `text_standardize`, spaCy's
rule-based English tokenizer, and lower-cased each token. Here `text_standardize` is rebuilt from its
published description and spaCy is `spacy.blank("en")`. Ours is the `gpt1` style's normaliser and
pre-tokeniser, the two parts of `tokenizer.json` that decide words. Both get the same ftfy'd text,
one document per blank-line-separated paragraph: the built-in corpus (Python's own documentation)
by default, or every UTF-8 file under each FOLDER (`.gz` read through gzip), or only those named like `--name`.

Words are aligned by character position in the text with its whitespace removed: a word agrees
when the other side has a word with the same span. Reported: the share of documents whose words
all agree, the share of each side's words that do not, the most frequent kinds of disagreement
(the shapes of the two splits: letters as `a`, digits as `9`, repeated marks as `x+`) with
examples, and one-thread words per second of both pre-tokenisers (best of three).
"""

from __future__ import annotations

import argparse
import gzip
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.builtin import builtin_units, read_builtin
from tokenizer.bpe import empty

# text_standardize, as published: runs of these marks get spaces around them.
STANDARDIZE_RUNS = re.compile(r"""(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|\\+|/+|\*+|\[+|\]+|}+|{+|\|+|_+)""")
STANDARDIZE_CHARS = {"—": "-", "–": "-", "―": "-", "…": "...", "´": "'"}


def text_standardize(text: str) -> str:
    """The original's clean-up between ftfy and spaCy."""
    for a, b in STANDARDIZE_CHARS.items():
        text = text.replace(a, b)
    text = STANDARDIZE_RUNS.sub(r" \1 ", text)
    text = re.sub(r"\s*\n\s*", " \n ", text)
    text = re.sub(r"[^\S\n]+", " ", text)
    return text.strip()


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n[^\S\n]*\n", text) if p.strip()]


def builtin_documents() -> Iterator[str]:
    for doc in read_builtin("builtin", builtin_units()):
        if doc.reason is None:
            yield from paragraphs(doc.text)


def folder_documents(folder: Path, name: str) -> Iterator[str]:
    """Paragraphs of every UTF-8 file under `folder` named like `name`, in path order; others are skipped."""
    for path in sorted(p for p in folder.rglob(name) if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        try:
            yield from paragraphs(data.decode("utf-8"))
        except UnicodeDecodeError:
            continue


def solid(word: str) -> str:
    """The word without whitespace; spaCy's newline word (`\\n ` with its space) becomes `\\n`."""
    return "".join(word.split()) or "\n"


def spans(words: list[str]) -> list[tuple[int, int]]:
    """Each word's span in the concatenation of all words (whitespace removed)."""
    out, at = [], 0
    for w in map(solid, words):
        out.append((at, at + len(w)))
        at += len(w)
    return out


def stream(words: list[str]) -> str:
    return "".join(map(solid, words))


def shape(words: list[str]) -> str:
    """Letters as `a`, digits as `9`, a run of one mark as `x+`: what a kind of disagreement looks like."""
    out = []
    for w in words:
        s = re.sub(r"[^\W\d_]+", "a", w)
        s = re.sub(r"\d+", "9", s)
        s = re.sub(r"([^a9])\1+", r"\1+", s)
        out.append("\\n" if not s.strip() else s)
    return " ".join(out)


@dataclass
class Tally:
    """Counts over a corpus, and the disagreements grouped by kind."""

    docs: int = 0
    identical: int = 0
    unaligned: int = 0
    ours: int = 0
    ours_diff: int = 0
    spacy: int = 0
    spacy_diff: int = 0
    kinds: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(Counter))

    def add(self, ours: list[str], ref: list[str]) -> None:
        self.docs += 1
        self.ours += len(ours)
        self.spacy += len(ref)
        if stream(ours) != stream(ref):  # the two normalisations disagree: nothing to align
            self.unaligned += 1
            self.ours_diff += len(ours)
            self.spacy_diff += len(ref)
            return
        regions = disagreements(ours, ref)
        self.identical += not regions
        for a, b in regions:
            self.ours_diff += len(a)
            self.spacy_diff += len(b)
            kind = f"ours {shape(a)}  |  spacy {shape(b)}"
            self.kinds[kind] += 1
            self.examples[kind][f"{' '.join(a)!r} / {' '.join(b)!r}"] += 1


def disagreements(ours: list[str], ref: list[str]) -> list[tuple[list[str], list[str]]]:
    """The stretches between shared word boundaries where the two sides split differently."""
    a_spans, b_spans = spans(ours), spans(ref)
    common = {e for _, e in a_spans} & {e for _, e in b_spans}
    out, i, j = [], 0, 0
    while i < len(ours) and j < len(ref):
        i0, j0 = i, j
        while a_spans[i][1] not in common:
            i += 1
        while b_spans[j][1] != a_spans[i][1]:
            j += 1
        if i > i0 or j > j0 or a_spans[i] != b_spans[j]:
            out.append((ours[i0 : i + 1], ref[j0 : j + 1]))
        i, j = i + 1, j + 1
    return out


def spacy_tokenizer():
    try:
        import spacy
    except ImportError:
        raise SystemExit("this bench needs spaCy: pip install -e '.[fidelity]'") from None
    return spacy.blank("en").tokenizer


def ours_words(tok, text: str) -> list[str]:
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]


def timed(fn: Callable[[], list], repeat: int = 3) -> tuple[float, list]:
    """Best of `repeat` wall times (the machine may be busy), and the result."""
    best, result = float("inf"), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def run(name: str, texts: list[str], nlp, tok, kinds: int) -> None:
    spacy_s, ref = timed(lambda: [[t.text.lower() for t in nlp(text_standardize(s))] for s in texts])
    ours_s, ours = timed(lambda: [ours_words(tok, t) for t in texts])
    tally = Tally()
    for a, b in zip(ours, ref):
        tally.add(a, b)
    size = sum(len(t.encode()) for t in texts)
    print(f"\n## {name}: {tally.docs:,} documents, {size / 1e6:.2f} MB, {tally.spacy:,} spaCy words")
    print(f"documents whose words are identical  {tally.identical / tally.docs:7.2%}")
    print(f"our words that differ                {tally.ours_diff / tally.ours:7.2%}   ({tally.ours_diff:,})")
    print(f"spaCy's words that differ            {tally.spacy_diff / tally.spacy:7.2%}   ({tally.spacy_diff:,})")
    print(f"documents whose normalised characters differ (counted as all words different): {tally.unaligned}")
    print(f"pre-tokenisation, one thread: ours {tally.ours / ours_s / 1e3:,.0f}k words/s; "
          f"spaCy (text_standardize + tokenizer) {tally.spacy / spacy_s / 1e3:,.0f}k words/s")  # fmt: skip
    total = sum(tally.kinds.values())
    if not total:
        return
    print(f"\n{min(kinds, len(tally.kinds))} most frequent kinds of disagreement, of {total:,}:")
    for kind, n in tally.kinds.most_common(kinds):
        examples = "; ".join(e for e, _ in tally.examples[kind].most_common(3))
        print(f"{n:6,} {n / total:6.1%}  {kind}\n{'':15}{examples}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="text folders (default: the built-in corpus)")
    parser.add_argument("--name", default="*", help="only files whose names match this pattern")
    parser.add_argument("--kinds", type=int, default=20, help="how many kinds of disagreement to list")
    args = parser.parse_args()
    nlp, tok = spacy_tokenizer(), empty("gpt1")
    import ftfy
    import spacy
    import tokenizers

    print(f"spaCy {spacy.__version__} blank('en'); tokenizers {tokenizers.__version__}; ftfy {ftfy.__version__}")
    corpora = [(str(f), folder_documents(f, args.name)) for f in args.folders]
    corpora = corpora or [("built-in corpus", builtin_documents())]
    for name, docs in corpora:
        run(name, [ftfy.fix_text(d) for d in docs], nlp, tok, args.kinds)


if __name__ == "__main__":
    main()
