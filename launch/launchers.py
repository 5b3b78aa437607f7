"""Launchers: they only find where the processes run and start `python -m training.run JOB.json`
(or, on Ray, the same `train` function) in each. Training never knows which one started it.

    local   the `deepspeed` launcher on this host, N processes
    hosts   the `deepspeed` launcher over a hostfile (it reaches the other nodes with pdsh/ssh)
    slurm   an sbatch script: `srun` starts one process per GPU on every node, no ssh needed
    ray     Ray Train workers on a Ray cluster

Every value interpolated into a shell script is quoted with `shlex.quote`; `#SBATCH` lines, which
sbatch reads without a shell, only take values checked against a strict pattern.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.config import PREEMPTED


class LaunchError(ValueError):
    """A launcher option or file that cannot be used."""


def default_nproc() -> int:
    """Every visible GPU, or one process on a CPU-only host."""
    import torch

    return torch.cuda.device_count() or 1


def _deepspeed(*args: str, module: list[str]) -> list[str]:
    """The `deepspeed` runner with launcher options `args`, starting `python -m module[0] module[1:]`."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", *args, "--log_level", "warning", "--no_local_rank",
            "--module", *module]  # fmt: skip


def local_command(job_file: Path | None, nproc: int, master_port: int, module: str = "training.run") -> list[str]:
    """The `deepspeed` launcher starting `nproc` processes of `module` (given `job_file`) on this host."""
    if nproc < 1:
        raise LaunchError(f"--nproc must be at least 1 (got {nproc})")
    return _deepspeed("--num_nodes", "1", "--num_gpus", str(nproc), "--master_port", str(master_port),
                      module=[module] if job_file is None else [module, str(job_file)])  # fmt: skip


HOST_LINE = re.compile(r"^(?P<host>[A-Za-z0-9][A-Za-z0-9._-]*)\s+slots=(?P<slots>\d+)$")


def read_hostfile(path: Path) -> dict[str, int]:
    """`host slots=N` per line (DeepSpeed's format); blank lines and `#` comments are skipped."""
    if not path.is_file():
        raise LaunchError(f"{path}: hostfile not found")
    hosts: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = HOST_LINE.match(line)
        if not match:
            raise LaunchError(f"{path}:{number}: expected 'HOST slots=N', got {raw.strip()!r}")
        host, slots = match["host"], int(match["slots"])
        if slots < 1:
            raise LaunchError(f"{path}:{number}: {host} has slots={slots}; it must be at least 1")
        if host in hosts:
            raise LaunchError(f"{path}:{number}: {host} is listed twice")
        hosts[host] = slots
    if not hosts:
        raise LaunchError(f"{path}: no hosts listed")
    return hosts


def hostfile_from_slurm(path: Path, slots: int) -> Path:
    """Write a hostfile listing every node of the current SLURM allocation with `slots` processes each."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise LaunchError("--from-slurm: SLURM_JOB_NODELIST is not set; run inside an allocation (salloc or sbatch)")
    if slots < 1:
        raise LaunchError(f"--gpus-per-node must be at least 1 (got {slots})")
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        raise LaunchError(f"--from-slurm: scontrol show hostnames {nodelist!r} failed: {e}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{host} slots={slots}\n" for host in hosts))
    read_hostfile(path)  # the same checks as a hand-written one
    return path


def hosts_command(job_file: Path, hostfile: Path, master_port: int, master_addr: str | None = None) -> list[str]:
    """The `deepspeed` launcher over every host of `hostfile` (the first host is the master by default)."""
    hosts = read_hostfile(hostfile)
    addr = master_addr or next(iter(hosts))
    return _deepspeed("--hostfile", str(hostfile), "--master_addr", addr, "--master_port", str(master_port),
                      module=["training.run", str(job_file)])  # fmt: skip


# Seconds of warning (SIGUSR1) SLURM gives before the time limit: enough to finish a step and save.
WARNING_SECONDS = 180
# What sbatch accepts for each option we write: names, and SLURM's time formats.
SBATCH_VALUE = re.compile(r"^[A-Za-z0-9._:+,=@%-]+$")
SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass(frozen=True)
class Slurm:
    """An sbatch job: `nodes` × `gpus_per_node` processes, one per GPU."""

    nodes: int
    gpus_per_node: int
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    job_name: str = "gpt1"
    master_port: int = 29500
    cpus_per_gpu: int | None = None

    def problems(self) -> list[str]:
        found = []
        if self.nodes < 1:
            found.append(f"--nodes must be at least 1 (got {self.nodes})")
        if self.gpus_per_node < 1:
            found.append(f"--gpus-per-node must be at least 1 (got {self.gpus_per_node})")
        if self.cpus_per_gpu is not None and self.cpus_per_gpu < 1:
            found.append(f"--cpus-per-gpu must be at least 1 (got {self.cpus_per_gpu})")
        if not 1024 <= self.master_port <= 65535:
            found.append(f"--master-port must be in 1024..65535 (got {self.master_port})")
        for flag, value in (("--partition", self.partition), ("--account", self.account),
                            ("--job-name", self.job_name)):  # fmt: skip
            if value is not None and not SBATCH_VALUE.match(value):
                found.append(f"{flag} {value!r}: only letters, digits and ._:+,=@%- are allowed")
        if self.time is not None and not SLURM_TIME.match(self.time):
            found.append(f"--time {self.time!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
        return found


def slurm_script(job_file: Path, log_dir: Path, opts: Slurm, prepare: list[str] | None = None) -> str:
    """An sbatch script that starts one training process per GPU with `srun` on every node.

    `prepare`, when given, runs first on the job's first node and writes `job_file`: the stages
    before pretraining, skipped where complete, so a script can be rendered before they have run.

    The rendezvous comes from SLURM itself: the master is the first node of the allocation, and
    each process's rank, local rank and world size are SLURM_PROCID, SLURM_LOCALID and
    SLURM_NTASKS (read by `training.run`). SLURM sends SIGUSR1 WARNING_SECONDS before the time
    limit; training then saves a checkpoint and exits with PREEMPTED, and the script requeues the
    job, which resumes from that checkpoint when it starts again.
    """
    problems = opts.problems()
    if problems:
        raise LaunchError("\n".join(problems))
    sbatch = {
        "job-name": opts.job_name, "nodes": opts.nodes, "ntasks-per-node": opts.gpus_per_node,
        "gpus-per-node": opts.gpus_per_node, "cpus-per-gpu": opts.cpus_per_gpu, "partition": opts.partition,
        "account": opts.account, "time": opts.time, "output": f"{log_dir}/slurm-%j.out",
        "signal": f"USR1@{WARNING_SECONDS}", "requeue": True,
    }  # fmt: skip
    lines = ["#!/bin/bash"]
    for key, value in sbatch.items():
        if value is None:
            continue
        if key == "output" and not SBATCH_VALUE.match(str(value).replace("/", "")):
            raise LaunchError(f"output folder {log_dir} has characters sbatch cannot take; choose another run.out_dir")
        lines.append(f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}")
    q = shlex.quote
    lines += [
        "set -euo pipefail",
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MASTER_ADDR MASTER_PORT={q(str(opts.master_port))}",
    ]
    if prepare:
        lines.append(f"{shlex.join(prepare)}  # the stages before pretraining, where not complete; writes the job")
    lines += [
        "status=0",
        f"srun --kill-on-bad-exit=1 {q(sys.executable)} -m training.run {q(str(job_file))} || status=$?",
        f'if [ "$status" -eq {PREEMPTED} ]; then  # stopped at the time-limit warning, checkpoint saved',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def train_on_ray(job_file: Path, num_workers: int, use_gpu: bool) -> None:
    """Ray Train runs `training.run.main` on `num_workers` workers, each in its own process group
    member; call `ensure_ray` (pipeline.parallel) first to pick the cluster."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if num_workers < 1:
        raise LaunchError(f"--num-workers must be at least 1 (got {num_workers})")
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"job": str(job_file)},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="pretrain", storage_path=str(job_file.parent / "ray")),
    )
    trainer.fit()


def _ray_worker(config: dict) -> None:
    from training.run import main

    status = main([config["job"]])
    if status:
        raise RuntimeError(f"training exited with status {status}")
