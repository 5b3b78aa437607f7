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
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=quiet)


def parallel_map(
    items: list[dict[str, Any]], fn: Callable[[dict[str, Any]], dict[str, Any]], workers: int, desc: str
) -> list[dict[str, Any]]:
    """`fn` applied to every item on Ray Data, at most `workers` at a time; results in item order.
    Connects to Ray first if this process is not connected yet.

    Items and results are rows of plain values (Arrow types). Each item is its own block, so one
    slow item never holds back the others.
    """
    if not items:
        return []
    import ray.data

    ensure_ray()
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    rows = [{"item": i, **item} for i, item in enumerate(items)]

    def numbered(row: dict[str, Any]) -> dict[str, Any]:
        return {**fn(row), "item": row["item"]}

    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        numbered, compute=ray.data.TaskPoolStrategy(size=workers), num_cpus=1
    )
    results = list(tracked(dataset.iter_rows(), len(rows), desc))
    return sorted(results, key=lambda r: r["item"])
