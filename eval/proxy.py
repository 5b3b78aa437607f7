"""Offline proxy tasks, at least one of each kind, built deterministically from the held-out validation
documents of the data stage, so a run with no network still fine-tunes on real text.

Documents are split into sentences (4 to 60 words). Every fifth document (by position) goes to
dev, the rest to train, so no sentence is in both. Distractors come from other documents of the
same split. Each needs a model of how text flows, which is what pretraining teaches:

    proxy_shuffle   classification: a sentence as written, or with its words shuffled
    proxy_continue  entailment: two consecutive sentences, then the one that follows them or a
                    sentence from another document
    proxy_samedoc   similarity: two sentences from the same document, or from two documents
    proxy_next      multiple choice: two consecutive sentences; pick the next one among it and
                    three sentences from other documents
    proxy_order     multiple choice: a sentence; pick the next one as written among it and three
                    orderings of its words

The two-class tasks are balanced by construction: each sentence gives one positive and one
negative example (its own words shuffled; a sentence of its document and one of another; its true
continuation and another's), so only the relation between the parts tells them apart, not the
sentence itself; in proxy_order every choice holds the same words, so only their order counts.
proxy_shuffle and proxy_order need word order, the other three how sentences and documents hang
together: a model as small as the embedded default's learns the former from pretraining and not
the latter. Choices and distractors are drawn with a generator seeded by the task's name and split;
each split is capped at MAX_EXAMPLES examples.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from eval.tasks import Example, TaskDataError

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
MIN_WORDS, MAX_WORDS = 4, 60
DEV_EVERY = 5  # every fifth document is dev
MAX_EXAMPLES = {"train": 4000, "dev": 1000}
MAX_SENTENCES = 20_000  # per split, read from the first documents; enough for the caps above
CHOICES = 4


def sentences(text: str) -> list[str]:
    found = (" ".join(s.split()) for s in SENTENCE_END.split(text))
    return [s for s in found if MIN_WORDS <= len(s.split()) <= MAX_WORDS]


def _documents(folder: Path, split: str) -> list[list[str]]:
    """The split's documents as sentence lists (documents with fewer than 3 sentences dropped)."""
    from pipeline.documents import doc_files, read_texts

    files = doc_files(folder / "val")
    if not files:
        raise TaskDataError(f"{folder / 'val'}: no validation documents for the proxy tasks")
    docs, total = [], 0
    for i, text in enumerate(read_texts(files)):
        if (i % DEV_EVERY == DEV_EVERY - 1) != (split == "dev"):
            continue
        found = sentences(text)
        if len(found) >= 3:
            docs.append(found)
            total += len(found)
        if total >= MAX_SENTENCES:
            break
    if len(docs) < 2:
        raise TaskDataError(f"{folder / 'val'}: too few documents with 3+ sentences for the {split} proxy tasks")
    return docs


def _elsewhere(docs: list[list[str]], d: int, rng: random.Random) -> str:
    """A sentence from any document but `d`."""
    other = rng.randrange(len(docs) - 1)
    other += other >= d
    return rng.choice(docs[other])


def _shuffled(sentence: str, rng: random.Random, avoid: tuple[str, ...] = ()) -> str:
    """The sentence's words in a random order other than `sentence` and `avoid`, where 10 tries find one."""
    words = sentence.split()
    for _ in range(10):
        rng.shuffle(words)
        if " ".join(words) != sentence and " ".join(words) not in avoid:
            break
    return " ".join(words)


def _orderings(sentence: str, rng: random.Random) -> tuple[str, ...]:
    """The sentence and CHOICES - 1 other orderings of its words, in random order."""
    choices = [sentence]
    while len(choices) < CHOICES:
        choices.append(_shuffled(sentence, rng, tuple(choices)))
    rng.shuffle(choices)
    return tuple(choices)


def proxy_examples(name: str, folder: Path, split: str) -> list[Example]:
    """The examples of proxy task `name` for `split` (train or dev) from a data-stage folder."""
    if split not in MAX_EXAMPLES:
        raise TaskDataError(f"{name}: no split {split!r} (train, dev)")
    docs = _documents(Path(folder), split)
    rng = random.Random(f"{name}:{split}")
    examples: list[Example] = []
    for d, doc in enumerate(docs):
        for i, sentence in enumerate(doc):
            if name == "proxy_shuffle":
                examples += [Example(sentence, label=1), Example(_shuffled(sentence, rng), label=0)]
            elif name == "proxy_samedoc":
                partner = rng.choice([s for j, s in enumerate(doc) if j != i])
                examples += [Example(sentence, partner, label=1), Example(sentence, _elsewhere(docs, d, rng), label=0)]
            elif name == "proxy_order":
                if i >= 1:
                    choices = _orderings(sentence, rng)
                    examples.append(Example(doc[i - 1], choices=choices, label=choices.index(sentence)))
            elif i >= 2:
                context = f"{doc[i - 2]} {doc[i - 1]}"
                if name == "proxy_continue":
                    other = _elsewhere(docs, d, rng)
                    examples += [Example(context, sentence, label=1), Example(context, other, label=0)]
                else:  # proxy_next
                    choices = [sentence] + [_elsewhere(docs, d, rng) for _ in range(CHOICES - 1)]
                    rng.shuffle(choices)
                    examples.append(Example(context, choices=tuple(choices), label=choices.index(sentence)))
            if len(examples) >= MAX_EXAMPLES[split]:
                return examples[: MAX_EXAMPLES[split]]
    return examples
