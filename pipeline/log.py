"""One logger setup for every command and every rank: rich on a terminal, plain lines otherwise."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def setup_logging(verbosity: int = 0) -> None:
    """Configure the root logger once. verbosity: -1 quiet (warnings), 0 info, 1 debug.

    Under a multi-process launch only rank 0 logs at info level; other ranks report warnings and
    errors, prefixed with their rank, so a failure is never hidden.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    if rank != 0:
        level = max(level, logging.WARNING)
    prefix = f"[rank {rank}] " if world > 1 else ""
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
        fmt = prefix + "%(message)s"
    else:  # a log file or a pipe: whole lines, never wrapped
        handler, fmt = logging.StreamHandler(), "%(asctime)s %(levelname)s " + prefix + "%(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="[%X]", handlers=[handler], force=True)
    # Libraries that narrate every step at INFO are kept to warnings unless asked for debug output.
    for noisy in ("ray", "ray.data", "DeepSpeed", "torch.distributed", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING)
