"""One look for every progress bar: description, bar, done/total, elapsed; gone when finished."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def progress_bar() -> Progress:
    """A bar, drawn only in a process that `multiprocessing` did not start: workers sharing their
    parent's terminal would draw over each other."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, disable=multiprocessing.parent_process() is not None)  # fmt: skip


def tracked(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """Yield `items`, advancing a progress bar of `total` steps."""
    with progress_bar() as progress:
        task = progress.add_task(desc, total=total)
        for item in items:
            yield item
            progress.advance(task)
