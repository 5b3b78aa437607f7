"""Where training metrics go: JSON lines (always) and TensorBoard (when installed), from rank 0 only.

Each record is one step of one split, e.g. `{"split": "train", "step": 10, "loss": ..., "lr": ...}`.
On resume the records after the checkpoint's step are dropped first, so the file reads as one
uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.runner import write_text_atomic

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
# Dense bf16 tensor-core peaks (FLOP/s) by device name, for MFU; unknown devices report no MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated device memory on a GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class Metrics:
    """Rank 0's sink; other ranks get one that writes nothing."""

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.path = out / METRICS
        self.enabled = enabled
        self.tensorboard = None
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 (open for the whole run, closed by close())
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("TensorBoard logging is off: pip install tensorboard")
        else:
            self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)

    def write(self, split: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"split": split, "step": step, **values}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tensorboard is not None:
                self.tensorboard.close()


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The records of a training output folder, in order."""
    path = Path(out) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
