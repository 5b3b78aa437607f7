"""The benchmark registry: what each task is, where its splits live, and how a row becomes an Example.

Every task is one of four kinds, which decides its input transform and head:

    classification   one text                         CoLA, SST-2
    entailment       premise, hypothesis              MNLI, SNLI, SciTail, QNLI, RTE, WNLI
    similarity       two texts, order-free            MRPC, QQP (both classes), STS-B (a score)
    multiple_choice  context and n candidate endings  RACE, Story Cloze

Each task reads the files its benchmark distributes (`data_dir`) or its Hugging Face dataset
(`hub`). A task may be scored on several splits (MNLI matched and mismatched; RACE middle, high and
both), each a named result. GLUE's test labels are private, so GLUE tasks are scored on dev.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["classification", "entailment", "similarity", "multiple_choice"]


class TaskDataError(ValueError):
    """A task file that is missing or cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class Example:
    """One input: `text` (and `pair`), or a `text` context with `choices`; `label` is a class index,
    the index of the right choice, or a score."""

    text: str
    pair: str | None = None
    choices: tuple[str, ...] = ()
    label: float = 0


@dataclass(frozen=True)
class Task:
    """A benchmark task: its kind, labels, metric and splits (local files and hub splits)."""

    name: str
    kind: Kind
    metric: str  # the headline metric (the paper's); results also carry `extra_metrics`
    labels: tuple[str, ...] = ()  # class names, in the order of the head's outputs; () for a score
    train: str = "train"  # the local reader's split name
    scores: dict[str, str] = field(default_factory=dict)  # result name -> split scored
    hub_config: str | None = None  # the hub dataset's config (e.g. "rte" in nyu-mll/glue)
    hub_splits: dict[str, str] = field(default_factory=dict)  # our split name -> the hub's
    extra_metrics: tuple[str, ...] = ()
    glue: bool = False  # counted in the GLUE average

    @property
    def n_outputs(self) -> int:
        """Head outputs per example (per choice for multiple choice)."""
        if self.kind == "multiple_choice" or not self.labels:
            return 1
        return len(self.labels)


def _glue(name: str, kind: Kind, metric: str, labels: tuple[str, ...], **kw: Any) -> Task:
    kw.setdefault("scores", {name: "dev"})
    kw.setdefault("hub_splits", {"train": "train", "dev": "validation"})
    return Task(name, kind, metric, labels, hub_config=kw.pop("hub_config", name), glue=True, **kw)


NLI3 = ("entailment", "neutral", "contradiction")  # the order of GLUE's and SNLI's label ids on the hub

TASKS: dict[str, Task] = {t.name: t for t in [
    _glue("cola", "classification", "mcc", ("0", "1"), extra_metrics=("accuracy",)),
    _glue("sst2", "classification", "accuracy", ("0", "1")),
    _glue("mrpc", "similarity", "f1", ("0", "1"), extra_metrics=("accuracy",)),
    _glue("qqp", "similarity", "f1", ("0", "1"), extra_metrics=("accuracy",)),
    _glue("stsb", "similarity", "pearson", (), extra_metrics=("spearman",)),
    _glue("mnli", "entailment", "accuracy", NLI3, scores={"mnli_m": "dev_matched", "mnli_mm": "dev_mismatched"},
          hub_splits={"train": "train", "dev_matched": "validation_matched",
                      "dev_mismatched": "validation_mismatched"}),
    _glue("qnli", "entailment", "accuracy", ("entailment", "not_entailment")),
    _glue("rte", "entailment", "accuracy", ("entailment", "not_entailment")),
    _glue("wnli", "entailment", "accuracy", ("0", "1")),
    Task("snli", "entailment", "accuracy", NLI3, scores={"snli": "dev"},
         hub_splits={"train": "train", "dev": "validation"}),
    Task("scitail", "entailment", "accuracy", ("entails", "neutral"), scores={"scitail": "dev"},
         hub_config="tsv_format", hub_splits={"train": "train", "dev": "validation"}),
    Task("race", "multiple_choice", "accuracy", scores={"race_m": "dev/middle", "race_h": "dev/high", "race": "dev"},
         hub_config="all", hub_splits={"train": "train", "dev": "validation"}),
    Task("story_cloze", "multiple_choice", "accuracy", train="val", scores={"story_cloze": "test"}),
    Task("proxy_shuffle", "classification", "accuracy", ("shuffled", "original"), scores={"proxy_shuffle": "dev"}),
    Task("proxy_continue", "entailment", "accuracy", ("elsewhere", "continues"), scores={"proxy_continue": "dev"}),
    Task("proxy_samedoc", "similarity", "accuracy", ("different", "same"), scores={"proxy_samedoc": "dev"},
         extra_metrics=("f1",)),
    Task("proxy_next", "multiple_choice", "accuracy", scores={"proxy_next": "dev"}),
    Task("proxy_order", "multiple_choice", "accuracy", scores={"proxy_order": "dev"}),
]}  # fmt: skip

PROXIES = tuple(name for name in TASKS if name.startswith("proxy_"))


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskDataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


# A reader gives a split's examples: reader(task, source, split) where source is a folder or hub id.
Reader = Callable[[Task, str, str], list[Example]]


def load_split(task: Task, split: str, data_dir: str | Path | None = None, hub: str | None = None) -> list[Example]:
    """The examples of one split, from the benchmark's own files or from the hub."""
    from eval import formats

    if hub is not None:
        if not task.hub_splits:
            raise TaskDataError(f"{task.name}: not on the hub as Parquet; download it and set data_dir")
        return formats.read_hub(task, hub, split)
    if data_dir is None:
        raise TaskDataError(f"{task.name}: set data_dir (the benchmark's files) or hub (a dataset id)")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise TaskDataError(f"{folder}: {task.name} data_dir not found")
    return formats.READERS[task.name](task, folder, split)
