"""Where the eval stage's fine-tunes run: in this process, or several at once in worker processes.

Each worker is started once (`spawn`), takes its share of the CPU threads or one GPU of its own
(round-robin over the visible ones), joins a process group of its own, builds its state (the
stage's `Runs`: weights, tokenizer, each task tokenised once) and then runs one job after another.
A worker dies with its parent, so a killed stage leaves no fine-tune running.

Several runs at once pay where one run cannot fill the machine: a GPU per fine-tune on a multi-GPU
node, or on CPU a model too small for its matrix products to keep two threads busy. Two debug-model
fine-tunes on one core each take the demo's eval stage to 0.88 of its time one after the other on
two: `proxy_shuffle` runs 1.3x faster so, `proxy_order` (longer rows, bound by memory) no faster.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

# Variables a launcher sets for a process group: a worker's group is its own, of one process.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")

_state: Any = None  # a worker's state, built by `_start`


class Later:
    """A job run in this process when its result is first asked for, as `Future.result` would give it."""

    def __init__(self, call: Callable[[], Any]):
        self.call, self.done, self.value = call, False, None

    def result(self) -> Any:
        if not self.done:
            self.value, self.done = self.call(), True
        return self.value


class Pool:
    """Jobs that call a method of a per-process state, `make(*args)`: in this process, in the order
    their results are read, when `workers` is 1; else in `workers` processes as soon as one is free.

        with Pool(Runs, (checkpoint, data_dir), workers=2) as pool:
            job = pool.submit("run", task, cfg, "full", 0)
            job.result()
    """

    def __init__(self, make: Callable[..., Any], args: tuple, workers: int):
        self.make, self.args, self.workers = make, args, workers
        self.state: Any = None
        self.executor: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> Pool:
        if self.workers == 1:
            self.state = self.make(*self.args)
            return self
        context = multiprocessing.get_context("spawn")
        slots = context.Queue()
        for index in range(self.workers):
            slots.put(index)
        threads = max(1, torch.get_num_threads() // self.workers)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
        gpus = [g for g in visible.split(",") if g]
        self.executor = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_start,
            initargs=(self.make, self.args, slots, gpus, threads, os.getpid(),
                      logging.getLogger().getEffectiveLevel()),
        )  # fmt: skip
        log.info("%d worker processes (%s each)", self.workers, "a GPU" if gpus else f"torch threads: {threads}")
        return self

    def submit(self, method: str, *args: Any) -> Later | concurrent.futures.Future:
        if self.executor is None:
            return Later(lambda: getattr(self.state, method)(*args))
        return self.executor.submit(_call, method, *args)

    def __exit__(self, kind: type | None, *_: Any) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=kind is not None)


def _start(make: Callable[..., Any], args: tuple, slots: Any, gpus: list[str], threads: int, parent: int,
           log_level: int) -> None:  # fmt: skip
    """A worker's start: die with the parent, take a slot and with it a GPU (or on CPU, threads), log
    as the parent does, build the state."""
    global _state
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    index = slots.get()
    for key in LAUNCHER_VARIABLES:
        os.environ.pop(key, None)
    if gpus:  # set before anything here initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    else:
        torch.set_num_threads(threads)
    from pipeline.log import setup_logging

    setup_logging({logging.WARNING: -1, logging.DEBUG: 1}.get(log_level, 0))
    _state = make(*args)


def _call(method: str, *args: Any) -> Any:
    return getattr(_state, method)(*args)
