"""Ray for the data stages: connect (a cluster when given an address, else a private local
instance) and map a function over work items on Ray Data, with one progress bar."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from pipeline.progress import tracked

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None) -> None:
    """Connect this process to Ray once: to the cluster at `address` (or RAY_ADDRESS), else to a
    new local instance. Ray disconnects (and stops a local instance) when the process exits.

    On a cluster, outputs must be on a filesystem every node sees, and the project must be
    installed on every node.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    log.info("ray: %s", "starting a local instance" if address == "local" else f"connecting to {address}")
    quiet = logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.ERROR
    if quiet == logging.ERROR:
        # Ray's C++ core logs advisory "errors" (e.g. about actor constructor arguments that Ray
        # Data itself puts in the object store); real failures still surface as Python exceptions.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=quiet)


def worker_count(configured: int | None) -> int:
    """`configured`, or when it is None one worker per CPU the Ray cluster reports (connecting first)."""
    if configured is not None:
        return configured
    import ray

    ensure_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def parallel_map(
    items: list[dict[str, Any]],
    fn: Callable[[dict[str, Any]], dict[str, Any]] | type,
    workers: int | None,
    desc: str,
    init: dict[str, Any] | None = None,
    memory: int | None = None,
) -> list[dict[str, Any]]:
    """`fn` applied to every item on Ray Data, at most `workers` at a time (None: one per CPU of the
    cluster); results in item order. Connects to Ray first if this process is not connected yet.

    When `fn` is a class, a pool of `workers` actors each builds one `fn(**init)` and calls it per
    item: for state that is costly to load (a tokenizer), loaded once per actor. `memory` (bytes) is
    what Ray reserves for each task, so that memory-heavy steps are not packed onto one node.

    Items and results are rows of plain values (Arrow types). Each item is its own block, so one
    slow item never holds back the others.
    """
    if not items:
        return []
    import ray.data

    workers = worker_count(workers)
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    rows = [{"item": i, **item} for i, item in enumerate(items)]
    reserve = {"memory": memory} if memory else {}

    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    if isinstance(fn, type):
        pool = ray.data.ActorPoolStrategy(size=min(workers, len(rows)))
        dataset = dataset.map(_actor_class(fn, init or {}), compute=pool, num_cpus=1, **reserve)
    else:
        dataset = dataset.map(_numbered(fn), compute=ray.data.TaskPoolStrategy(size=workers), num_cpus=1,
                              **reserve)  # fmt: skip
    results = list(tracked(dataset.iter_rows(), len(rows), desc))
    return sorted(results, key=lambda r: r["item"])


def _numbered(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`fn`, keeping the item number in its result."""

    def run(row: dict[str, Any]) -> dict[str, Any]:
        return {**fn(row), "item": row["item"]}

    return run


def _actor_class(cls: type, init: dict[str, Any]) -> type:
    """An actor class that builds `cls(**init)` once per actor and numbers its results."""

    class Numbered:
        def __init__(self) -> None:
            self.run = _numbered(cls(**init))

        def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
            return self.run(row)

    return Numbered
