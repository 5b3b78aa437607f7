"""The end-to-end part of the GPU check: `gpt1 train` as a user runs it, stopped, resumed, exported.

    python -m bench.gpu_check [--dry-run]

On a copy of the tiny run's shards (`.gpu/runs`, from `bench/gpu.sh --prepare`), it trains GPT-1
(the `gpt1` preset, bf16) for about two minutes through the `deepspeed` launcher, sends SIGTERM
to the job once the first checkpoint is written, as a scheduler does, and runs the same command
again, which must resume and finish. It then exports the run with `gpt1 export`, loads it in
`transformers` and compares the logits with our model's. Prints the throughput, MFU and memory
from metrics.jsonl, and each check's outcome; exits 1 if one fails. `--dry-run`: the debug preset
for a few steps on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RUNS = Path(".gpu/runs")
GPU_RUN = {"model.preset": "gpt1", "model.n_positions": 512, "train.global_batch": 64, "train.micro_batch": 16,
           "train.max_steps": 2000, "train.warmup_steps": 100, "train.lr": 2.5e-4, "train.precision": "bf16",
           "train.log_every": 50, "train.eval_every": 500, "train.checkpoint_every": 500}  # fmt: skip
LATEST = "*/pretrain/*/checkpoints/latest"
DRY_RUN = {"train.max_steps": 30, "train.log_every": 5, "train.eval_every": 10, "train.checkpoint_every": 10}


def gpt1(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", *args]


def train_command(runs: Path, settings: dict[str, object]) -> list[str]:
    sets = [f"--set={key}={value}" for key, value in {"run.out_dir": runs, **settings}.items()]
    return gpt1("train", "configs/tiny.yaml", *sets)


def stop_at_first_checkpoint(command: list[str], runs: Path) -> tuple[int, int]:
    """Start training, SIGTERM the whole job once a checkpoint exists, as a scheduler does, and wait
    for every process of it (the launcher dies at once; the ranks save first); (exit status, step saved)."""
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list(runs.glob(LATEST)):
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    status = proc.wait(timeout=180)
    while time.monotonic() < deadline + 180:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    (latest,) = runs.glob(LATEST)
    return status, int(latest.read_text().removeprefix("step-"))


def throughput(folder: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"][1:]  # the first window holds start-up and compile
    val = [r for r in records if r["split"] == "val"]
    mfu = [r["mfu"] for r in train if r.get("mfu")]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in train),
            "mfu": f"{statistics.median(mfu):.1%}" if mfu else "-",
            "memory_gb": max(r["memory_gb"] for r in train), "val_loss": val[-1]["loss"]}  # fmt: skip


def export_matches(folder: Path, out: Path) -> float:
    """Largest logit difference between our model and the exported `transformers` one."""
    from transformers import OpenAIGPTLMHeadModel

    from training.checkpoint import load_weights
    from training.model import GPT

    subprocess.run(gpt1("export", str(folder), str(out), "--format", "hf"), check=True, stdout=subprocess.DEVNULL)
    cfg, weights = load_weights(folder)
    ours = GPT(cfg)
    ours.load_state_dict(weights)
    theirs = OpenAIGPTLMHeadModel.from_pretrained(out)
    tokens = torch.randint(0, cfg.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (ours.eval()(tokens).logits - theirs.eval()(tokens).logits).abs().max().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the debug preset for a few steps on CPU")
    args = parser.parse_args()
    if not RUNS.is_dir():
        print(f"error: no {RUNS}: run bench/gpu.sh --prepare first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        shutil.copytree(RUNS, runs, ignore=shutil.ignore_patterns("pretrain", "eval", "report", "slurm"))
        command = train_command(runs, DRY_RUN if args.dry_run else GPU_RUN)
        t0 = time.monotonic()
        status, saved = stop_at_first_checkpoint(command, runs)
        resumed = subprocess.run(command, capture_output=True, text=True)
        seconds = time.monotonic() - t0
        folder = Path(resumed.stdout.strip().splitlines()[-1]) if resumed.returncode == 0 else None
        checks = {
            f"SIGTERM stopped the job after a checkpoint (step {saved}, exit {status})": status != 0 and saved > 0,
            "the rerun resumed from it and finished": resumed.returncode == 0 and "resumed from" in resumed.stderr,
        }
        if folder is None:
            print(resumed.stderr[-3000:], file=sys.stderr)
        else:
            seen = throughput(folder)
            print(f"gpt1 train, {' '.join(command[4:])}")
            print(f"{seconds:.0f} s in all; median {seen['tokens_per_s']:,.0f} tokens/s, MFU {seen['mfu']}, "
                  f"peak memory {seen['memory_gb']:.2f} GB, final val loss {seen['val_loss']:.3f}")  # fmt: skip
            difference = export_matches(folder, Path(tmp) / "hf")
            checks[f"the export loads in transformers with the same logits (max diff {difference:.1e})"] = (
                difference < 1e-3
            )
    for label, ok in checks.items():
        print(f"{'pass' if ok else 'FAIL'}  {label}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
