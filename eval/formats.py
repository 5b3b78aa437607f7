"""Readers for each benchmark's own files and for its Hugging Face dataset. Text passes through
ftfy on the way in, as pretraining text did in the cleaning stage.

Local files, as distributed:
    GLUE        <task>/train.tsv, dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv); CoLA has no header
    SNLI        snli_1.0_train.jsonl, snli_1.0_dev.jsonl; gold label "-" (no consensus) is skipped
    SciTail     scitail_1.0_train.tsv, scitail_1.0_dev.tsv (tsv_format: premise, hypothesis, label)
    RACE        train|dev/middle|high/*.txt, one JSON article with its questions each
    Story Cloze the val and test CSVs (trained on val, scored on test, as in the paper)
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import ftfy

from eval.tasks import Example, Task, TaskDataError

# GLUE: (text column, pair column, label column) by header name; CoLA by position (no header).
GLUE_COLUMNS = {
    "sst2": ("sentence", None, "label"), "mrpc": ("#1 String", "#2 String", "Quality"),
    "qqp": ("question1", "question2", "is_duplicate"), "stsb": ("sentence1", "sentence2", "score"),
    "mnli": ("sentence1", "sentence2", "gold_label"), "qnli": ("question", "sentence", "label"),
    "rte": ("sentence1", "sentence2", "label"), "wnli": ("sentence1", "sentence2", "label"),
}  # fmt: skip
COLA_TEXT, COLA_LABEL, COLA_FIELDS = 3, 1, 4
# Hub: (text column, pair column); labels are in "label" (-1 where the split has none).
HUB_COLUMNS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
    "snli": ("premise", "hypothesis"), "scitail": ("premise", "hypothesis"),
}  # fmt: skip
STORY_COLUMNS = ("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4", "RandomFifthSentenceQuiz1",
                 "RandomFifthSentenceQuiz2", "AnswerRightEnding")  # fmt: skip


def _file(path: Path) -> Path:
    if not path.is_file():
        raise TaskDataError(f"{path}: file not found")
    return path


def _label(task: Task, value: str | int | float, where: str) -> float:
    """A class index (from a label name or id), or a score for tasks without classes."""
    if not task.labels:
        try:
            return float(value)
        except ValueError:
            raise TaskDataError(f"{where}: score {value!r} is not a number") from None
    text = str(value)
    if text in task.labels:
        return task.labels.index(text)
    raise TaskDataError(f"{where}: label {text!r} is not one of {', '.join(task.labels)}")


def _tsv(path: Path) -> Iterator[tuple[int, list[str]]]:
    with open(_file(path), encoding="utf-8", newline="") as f:
        # GLUE's files are not quoted: a " is part of the text.
        yield from enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1)


def read_glue(task: Task, folder: Path, split: str) -> list[Example]:
    path = folder / f"{split}.tsv"
    examples = []
    if task.name == "cola":
        for line, row in _tsv(path):
            if len(row) != COLA_FIELDS:
                raise TaskDataError(f"{path}:{line}: expected {COLA_FIELDS} tab-separated fields, got {len(row)}")
            label = _label(task, row[COLA_LABEL], f"{path}:{line}")
            examples.append(Example(ftfy.fix_text(row[COLA_TEXT]), label=label))
        return examples
    text_col, pair_col, label_col = GLUE_COLUMNS[task.name]
    rows = _tsv(path)
    _, header = next(rows, (1, []))
    missing = [c for c in (text_col, pair_col, label_col) if c and c not in header]
    if missing:
        raise TaskDataError(f"{path}:1: GLUE {task.name} header lacks {', '.join(missing)}")
    at = {name: header.index(name) for name in (text_col, pair_col, label_col) if name}
    for line, row in rows:
        if len(row) != len(header):
            raise TaskDataError(f"{path}:{line}: expected {len(header)} tab-separated fields, got {len(row)}")
        pair = ftfy.fix_text(row[at[pair_col]]) if pair_col else None
        label = _label(task, row[at[label_col]], f"{path}:{line}")
        examples.append(Example(ftfy.fix_text(row[at[text_col]]), pair, label=label))
    return examples


def read_snli(task: Task, folder: Path, split: str) -> list[Example]:
    path = _file(folder / f"snli_1.0_{split}.jsonl")
    examples = []
    with open(path, encoding="utf-8") as f:
        for line, raw in enumerate(f, 1):
            try:
                row = json.loads(raw)
                gold, premise, hypothesis = row["gold_label"], row["sentence1"], row["sentence2"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise TaskDataError(f"{path}:{line}: not an SNLI record ({type(e).__name__}: {e})") from None
            if gold == "-":  # annotators reached no consensus
                continue
            examples.append(Example(ftfy.fix_text(premise), ftfy.fix_text(hypothesis),
                                    label=_label(task, gold, f"{path}:{line}")))  # fmt: skip
    return examples


def read_scitail(task: Task, folder: Path, split: str) -> list[Example]:
    name = f"scitail_1.0_{split}.tsv"
    path = folder / name if (folder / name).exists() else folder / "tsv_format" / name
    examples = []
    for line, row in _tsv(path):
        if len(row) != 3:
            raise TaskDataError(f"{path}:{line}: expected premise, hypothesis and label, got {len(row)} fields")
        label = _label(task, row[2], f"{path}:{line}")
        examples.append(Example(ftfy.fix_text(row[0]), ftfy.fix_text(row[1]), label=label))
    return examples


def _race_questions(article: dict, where: str) -> list[Example]:
    try:
        questions = zip(article["questions"], article["options"], article["answers"], strict=True)
        text = ftfy.fix_text(article["article"])
        return [Example(f"{text}\n{ftfy.fix_text(q)}", choices=tuple(ftfy.fix_text(o) for o in options),
                        label="ABCD".index(answer)) for q, options, answer in questions]  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise TaskDataError(f"{where}: not a RACE article ({type(e).__name__}: {e})") from None


def read_race(task: Task, folder: Path, split: str) -> list[Example]:
    levels = [split] if "/" in split else [f"{split}/middle", f"{split}/high"]
    examples = []
    for level in levels:
        files = sorted((folder / level).glob("*.txt"))
        if not files:
            raise TaskDataError(f"{folder / level}: no RACE article files (*.txt)")
        for path in files:
            try:
                article = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
            examples += _race_questions(article, str(path))
    return examples


def read_story_cloze(task: Task, folder: Path, split: str) -> list[Example]:
    # e.g. "cloze_test_val__spring2016 - cloze_test_ALL_val.csv": the split is the last _word
    found = sorted(p for p in folder.glob("*.csv") if re.search(rf"_{split}\b[^_]*\.csv$", p.name, re.IGNORECASE))
    if len(found) != 1:
        raise TaskDataError(f"{folder}: expected one Story Cloze CSV ending in _{split}.csv, found {len(found)}")
    path, examples = found[0], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in STORY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TaskDataError(f"{path}:1: Story Cloze header lacks {', '.join(missing)}")
        for line, row in enumerate(reader, 2):
            s1, s2, s3, s4, end1, end2, answer = (ftfy.fix_text(row[c] or "") for c in STORY_COLUMNS)
            if answer not in ("1", "2"):
                raise TaskDataError(f"{path}:{line}: AnswerRightEnding must be 1 or 2, got {answer!r}")
            examples.append(Example(" ".join((s1, s2, s3, s4)), choices=(end1, end2), label=int(answer) - 1))
    return examples


def read_proxy(task: Task, folder: Path, split: str) -> list[Example]:
    from eval.proxy import proxy_examples

    return proxy_examples(task.name, folder, split)


READERS = {
    **dict.fromkeys(GLUE_COLUMNS, read_glue), "cola": read_glue, "snli": read_snli, "scitail": read_scitail,
    "race": read_race, "story_cloze": read_story_cloze, **dict.fromkeys(
        ("proxy_shuffle", "proxy_continue", "proxy_samedoc", "proxy_next", "proxy_order"), read_proxy),
}  # fmt: skip


def read_hub(task: Task, hub: str, split: str) -> list[Example]:
    """A split of the task's hub dataset (GLUE, SNLI, SciTail, RACE are Parquet there)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise ImportError("hub tasks need datasets: pip install datasets") from None
    config, hub_split = task.hub_config, task.hub_splits.get(split)
    if task.name == "race" and "/" in split:  # dev/middle -> config "middle", split "validation"
        level, config = split.split("/")
        hub_split = task.hub_splits[level]
    if hub_split is None:
        raise TaskDataError(f"{task.name}: no split {split!r} on the hub")
    where = f"{hub} ({config}, {hub_split})"
    try:
        rows = load_dataset(hub, config, split=hub_split)
    except Exception as e:
        raise TaskDataError(f"cannot open hub dataset {where}: {type(e).__name__}: {e}") from None
    if task.name == "race":
        return [ex for i, r in enumerate(rows) for ex in _race_questions({
            "article": r["article"], "questions": [r["question"]], "options": [r["options"]],
            "answers": [r["answer"]]}, f"{where} row {i}")]  # fmt: skip
    text_col, pair_col = HUB_COLUMNS[task.name]
    examples = []
    for i, row in enumerate(rows):
        label = row["label"]
        if label == -1 or label is None:  # unlabelled (a test split, or no gold label)
            continue
        value = task.labels[label] if task.labels and isinstance(label, int) else label
        examples.append(Example(ftfy.fix_text(row[text_col]), ftfy.fix_text(row[pair_col]) if pair_col else None,
                                label=_label(task, value, f"{where} row {i}")))  # fmt: skip
    return examples
