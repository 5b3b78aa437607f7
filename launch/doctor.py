"""`gpt1 doctor`: the preflight a user runs before a long job. Each check gives pass or fail and a
detail line; a failure says what to install or change."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from launch.launchers import local_command

MIN_FREE_GB = 5.0


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


def python_check() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, platform.python_version() + ("" if ok else ": 3.10 or newer is needed"))


def torch_check() -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch", False, "not installed: pip install torch")
    if not torch.cuda.is_available():
        return Check("torch", True, f"{torch.__version__}, no CUDA: training runs on CPU with gloo")
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "none"
    return Check("torch", True, f"{torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}")


def gpu_check() -> Check:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
    return Check("GPUs", True, f"{count} visible: {names}" if count else "none visible")


def deepspeed_check() -> Check:
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
    except ImportError as e:
        return Check("deepspeed", False, f"cannot import ({e}): pip install deepspeed")
    accelerator = get_accelerator()
    comm = accelerator.create_op_builder("ShareMemCommBuilder") if accelerator.device_name() == "cpu" else None
    ops = "" if comm is None else f", shared-memory comm op {'compatible' if comm.is_compatible() else 'unavailable'}"
    return Check("deepspeed", True, f"{deepspeed.__version__}, {accelerator.device_name()} accelerator{ops}")


def disk_check(out_dir: Path) -> Check:
    folder = next((p for p in [out_dir, *out_dir.resolve().parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free / 2**30
    ok = free >= MIN_FREE_GB
    detail = f"{free:,.1f} GiB free at {folder}" + ("" if ok else f": at least {MIN_FREE_GB:.0f} GiB is needed")
    return Check("disk", ok, detail)


def collective_check(nproc: int, port: int, timeout: float = 180) -> Check:
    """A tiny all-reduce across `nproc` processes started by the `deepspeed` launcher."""
    cmd = local_command(None, nproc, port, module="training.probe")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check("all-reduce", False, f"{nproc} processes did not finish in {timeout:.0f} s")
    found = [line for line in proc.stdout.splitlines() if line.startswith("all-reduce across")]
    if proc.returncode or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("all-reduce", False, f"{nproc} processes failed (exit {proc.returncode}): {last}")
    return Check("all-reduce", True, found[0].removeprefix("all-reduce ").replace(": ok", ""))


def run_checks(nproc: int, out_dir: Path, port: int) -> list[Check]:
    """Every check in order; the later ones only when what they need is there."""
    checks = [python_check(), torch_check()]
    if checks[-1].ok:
        checks.append(gpu_check())
    checks.append(deepspeed_check())
    checks.append(disk_check(out_dir))
    if all(c.ok for c in checks):
        checks.append(collective_check(nproc, port))
    else:
        checks.append(Check("all-reduce", False, "not tried: fix the failures above first"))
    return checks
