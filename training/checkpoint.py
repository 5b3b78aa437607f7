"""Checkpoints: DeepSpeed's own state, plus what makes a step folder resumable and self-describing.

    <root>/step-00000150/
        mp_rank_00_model_states.pt, *_optim_states.pt   DeepSpeed: module, optimizer, LR schedule
        model.pt           the full fp32 weights, gathered from every rank (export and fine-tuning read this)
        checkpoint.json    step, tokens seen, sampler position, world size, the job
        rng-rank<r>.pt     each process's torch RNG states (dropout)
        tokenizer/         the tokenizer the model was trained with
    <root>/latest          the newest complete tag, replaced (atomically) only after every rank has written

A checkpoint is written into `step-N.tmp/` and renamed to `step-N/` once every rank has finished,
so a folder killed mid-write is never taken for a checkpoint. Then `latest` moves, and the oldest
checkpoints beyond `train.keep_checkpoints` are deleted, except those `train.keep_every` keeps.

Every file loads with `weights_only=True`, DeepSpeed's too (`resume` gives the engine a loader
that allows only the few plain DeepSpeed types its state dicts hold). DeepSpeed is imported only
where it is used, so reading a checkpoint's weights needs torch alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.runner import write_json_atomic, write_text_atomic
from training.config import CheckpointError, ModelConfig, TrainJob

LATEST = "latest"
STATE = "checkpoint.json"
WEIGHTS = "model.pt"
# Added to parameter names by torch's activation-checkpoint wrapper; not part of the model's names.
WRAPPED = "_checkpoint_wrapped_module."


def _load_safely(engine: Any) -> None:
    """Have DeepSpeed load this engine's checkpoint files with `weights_only=True`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]  # the non-tensor types it saves

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    engine.checkpoint_engine = SafeCheckpointEngine(engine._config)


def tag(step: int) -> str:
    return f"step-{step:08d}"


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None when there is none."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / STATE).is_file() else None


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's fp32 weights, whole on every rank: ZeRO partitions and fp32 masters gathered.
    Collective: every rank must call it."""
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, p in model.named_parameters():
        full = safe_get_full_fp32_param(p)  # None when DeepSpeed keeps no separate fp32 copy
        weights[name.replace(WRAPPED, "")] = (p.detach() if full is None else full).float().cpu().clone()
    return weights


def save(engine: Any, model: nn.Module, job: TrainJob, step: int, state: dict[str, Any]) -> Path:
    """Write checkpoint `step` under `job.out/checkpoints` from every rank; `latest` moves last."""
    root = job.out / "checkpoints"
    folder, work = root / tag(step), root / f"{tag(step)}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(work, ignore_errors=True)  # left by an attempt killed mid-write
        work.mkdir(parents=True)
    dist.barrier()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, work / f"rng-rank{rank}.pt")
    weights = full_weights(model)
    engine.save_checkpoint(str(root), tag=work.name, save_latest=False)
    if rank == 0:
        torch.save(weights, work / WEIGHTS)
        shutil.copytree(job.tokenizer, work / "tokenizer", ignore=shutil.ignore_patterns("manifest.json", ".*"))
        record = {"step": step, **state, "world_size": dist.get_world_size(), "job": job.model_dump(mode="json")}
        write_json_atomic(work / STATE, record)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
        write_text_atomic(root / LATEST, tag(step))
        prune(root, job.train.keep_checkpoints, job.train.keep_every)
    dist.barrier()
    return folder


def prune(root: Path, keep: int, keep_every: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and those at multiples of `keep_every`), and any
    unfinished `.tmp` folder; returns what was deleted."""
    steps = sorted(int(p.name.removeprefix("step-")) for p in root.glob("step-*") if p.name[5:].isdigit())
    doomed = [root / tag(s) for s in steps[:-keep] if not (keep_every and s % keep_every == 0)]
    doomed += list(root.glob("step-*.tmp"))
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def resume(engine: Any, folder: Path) -> dict[str, Any]:
    """Load checkpoint `folder` into the engine and this rank's RNG; returns its checkpoint.json."""
    record = json.loads((folder / STATE).read_text())
    _load_safely(engine)
    path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)  # fmt: skip
    if path is None:
        raise CheckpointError(f"{folder}: DeepSpeed found no checkpoint to load")
    rng_file = folder / f"rng-rank{dist.get_rank()}.pt"
    if record["world_size"] == dist.get_world_size() and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return record


def resolve(folder: str | Path) -> Path:
    """The step folder meant by `folder`: a step folder itself, or the newest checkpoint of a folder
    holding `latest` (a checkpoints root, or a pretraining output with `checkpoints/` inside)."""
    folder = Path(folder)
    for root in (folder, folder / "checkpoints"):
        if (root / LATEST).is_file():
            found = latest(root)
            if found is None:
                raise CheckpointError(f"{root / LATEST} points to an incomplete checkpoint")
            return found
    if not (folder / STATE).is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (no {STATE} and {WEIGHTS}, nor a 'latest' pointer)")
    return folder


def load_weights(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A checkpoint's model config and fp32 weights, for export and fine-tuning (no DeepSpeed needed)."""
    folder = resolve(folder)
    record = json.loads((folder / STATE).read_text())
    cfg = ModelConfig.model_validate(record["job"]["model"])
    return cfg, torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
