"""Checkpoint cost: our save against DeepSpeed's `save_checkpoint` alone, and resuming from
DeepSpeed's files against resuming from the consolidated state.

    python -m bench.checkpoint [--preset gpt1] [--zero 1] [--out DIR]

Our save writes DeepSpeed's files plus what lets a checkpoint resume on any number of processes:
the full fp32 weights (`model.pt`) and AdamW's moments (`optimizer.pt`), gathered from every
partition. The ratio says what that costs over DeepSpeed's own save of the same engine, in this
one process, after one training step: the median of a few saves taken in turns, each until its
files are on disk (`os.sync`). Resuming is timed both ways: with the layout the checkpoint
was written with (DeepSpeed's files) and with another ZeRO stage (the consolidated state, as on
another number of processes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.train import VOCAB
from training import checkpoint
from training.config import DeepSpeedConfig, ModelConfig, TrainConfig, TrainJob
from training.engine import build_engine
from training.model import GPT, lm_loss
from training.run import init_process


def seconds(work: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """`work(*args, **kwargs)` until what it wrote is on disk (else the next call pays for its writes)."""
    os.sync()
    t0 = time.perf_counter()
    work(*args, **kwargs)
    os.sync()
    return time.perf_counter() - t0


def gigabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9


def trained_engine(cfg: ModelConfig, train: TrainConfig, zero: int, device: torch.device) -> tuple[GPT, Any]:
    """A fresh engine after one optimizer step, so that AdamW has its state."""
    torch.manual_seed(0)
    model = GPT(cfg)
    engine = build_engine(model, train, DeepSpeedConfig(zero_stage=zero), device, world_size=1, total_steps=1_000)
    batch = torch.randint(0, VOCAB, (train.micro_batch, 129), device=device)
    engine.backward(lm_loss(engine(batch[:, :-1]).logits, batch[:, 1:]))
    engine.step()
    return model, engine


def time_saves(cfg: ModelConfig, train: TrainConfig, job: TrainJob, device: torch.device,
               repeats: int) -> tuple[float, float]:  # fmt: skip
    """Median seconds of DeepSpeed's save_checkpoint and of ours, of the same engine, taken in turns."""
    model, engine = trained_engine(cfg, train, job.deepspeed.zero_stage, device)
    theirs, ours = [], []
    for i in range(repeats):
        theirs.append(seconds(engine.save_checkpoint, str(job.out.parent / "deepspeed"), tag=f"step-{i}",
                              save_latest=False))  # fmt: skip
        ours.append(seconds(checkpoint.save, engine, model, job, i + 1, {"tokens": 0, "sampler": {}}))
    return statistics.median(theirs), statistics.median(ours)


def time_resume(cfg: ModelConfig, train: TrainConfig, zero: int, folder: Path, device: torch.device) -> float:
    model, engine = trained_engine(cfg, train, zero, device)
    return seconds(checkpoint.resume, engine, model, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt1")
    parser.add_argument("--zero", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="Where to write (a temporary folder by default).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = init_process()
    cfg = ModelConfig(preset=args.preset, vocab_size=VOCAB)
    train = TrainConfig(global_batch=1, micro_batch=1, lr=1e-4, warmup_steps=0)
    out = Path(tempfile.mkdtemp(prefix="bench-checkpoint-", dir=args.out))
    tokenizer = out / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    job = TrainJob(model=cfg, train=train, deepspeed=DeepSpeedConfig(zero_stage=args.zero), shards=out,
                   tokenizer=tokenizer, out=out / "ours")  # fmt: skip

    theirs, ours = time_saves(cfg, train, job, device, args.repeats)
    folder = checkpoint.latest(job.out / "checkpoints")
    other = 2 if args.zero != 2 else 1
    resumed = {
        f"resume, ZeRO {args.zero} (DeepSpeed's files)": time_resume(cfg, train, args.zero, folder, device),
        f"resume, ZeRO {other} (consolidated)": time_resume(cfg, train, other, folder, device),
    }

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {args.preset}, {GPT(cfg).num_params():,} parameters, "
          f"ZeRO {args.zero}, 1 process")  # fmt: skip
    print(f"{'operation':<40}{'seconds':>9}{'GB written':>12}")
    print(f"{'save: DeepSpeed save_checkpoint':<40}{theirs:>9.2f}{gigabytes(out / 'deepspeed') / args.repeats:>12.2f}")
    print(f"{'save: ours (+ model.pt, optimizer.pt)':<40}{ours:>9.2f}{gigabytes(folder):>12.2f}")
    for label, t in resumed.items():
        print(f"{label:<40}{t:>9.2f}")
    print(f"ratio ours / DeepSpeed (save): {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
