"""Checkpoints: DeepSpeed's own state, plus what makes a step folder resumable and self-describing.

    <root>/step-00000150/
        mp_rank_00_model_states.pt, *_optim_states.pt   DeepSpeed: module, optimizer, LR schedule
        model.pt           the full fp32 weights, gathered from every rank (export and fine-tuning read this)
        optimizer.pt       AdamW's moments in full, by parameter name, with its step count and the schedule
        checkpoint.json    step, tokens seen, sampler position, layout (processes, ZeRO stage, precision), the job
        rng-rank<r>.pt     each process's torch RNG states (dropout)
        tokenizer/         the tokenizer the model was trained with
    <root>/latest          the newest complete tag, replaced (atomically) only after every rank has written

A checkpoint is written into `step-N.tmp/` and renamed to `step-N/` once every rank has finished,
so a folder killed mid-write is never taken for a checkpoint. Then `latest` moves, and the oldest
checkpoints beyond `train.keep_checkpoints` are deleted, except those `train.keep_every` keeps.

Resuming with the layout a checkpoint was written with loads DeepSpeed's own files and each rank's
RNG, so the run continues bit for bit. With another layout (2 processes → 1, 1 → 8, ZeRO 1 → 2)
DeepSpeed's partitioned files do not fit, and the consolidated `model.pt` and `optimizer.pt` are
loaded instead: they hold every value the partitions held, so the run continues from the same
weights, moments, learning rate and data position on any number of processes; only the summation
order of the gradients and the dropout masks differ. (We write these at save time rather than use
DeepSpeed's universal checkpoints, which need an offline conversion of every rank's files, read
them with `weights_only=False`, and are a third copy of the state.)

Every file loads with `weights_only=True`, DeepSpeed's too (`resume` gives the engine a loader
that allows only the few plain DeepSpeed types its state dicts hold). DeepSpeed is imported only
where it is used, so reading a checkpoint's weights needs torch alone.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.runner import write_json_atomic, write_text_atomic
from training.config import CheckpointError, ModelConfig, TrainJob

log = logging.getLogger("gpt1.train")

LATEST = "latest"
STATE = "checkpoint.json"
WEIGHTS = "model.pt"
OPTIMIZER = "optimizer.pt"
MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's state per parameter (training.engine.optimizer)
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


def _parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The model's parameters under the model's own names (without the activation-checkpoint prefix)."""
    return [(name.replace(WRAPPED, ""), p) for name, p in model.named_parameters()]


def _partitioned(p: nn.Parameter) -> bool:
    """Whether DeepSpeed keeps this parameter's fp32 value and optimizer state in partitions of its
    own (ZeRO 1-3, bf16), reached through its `safe_*` functions, rather than on the parameter."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def _base_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrapper (ZeRO, bf16), or the engine's own without one."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _link_moments(engine: Any, model: nn.Module) -> None:
    """Point each ZeRO 1/2 (or bf16) parameter's fragment at its slice of AdamW's state, for the
    `safe_*_optimizer_state` functions. DeepSpeed 0.19 links them once, right after the first
    group's first step, when the other groups have no state yet, so their moments are unreachable
    ("exp_avg not found in optimizer state fragment") until linked again."""
    base = _base_optimizer(engine)
    for p in model.parameters():
        fragment = getattr(p, "_hp_mapping", None)
        if fragment is not None:
            flat = base.param_groups[fragment.param_group_index]["params"][0]
            fragment.set_optim_state_fragment(flat, base.state[flat])


def full_weights(model: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The model's fp32 weights, whole: ZeRO partitions and fp32 masters gathered. Collective: every
    rank must call it; only where `keep` are the tensors kept (an empty dict elsewhere)."""
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, p in _parameters(model):
        full = safe_get_full_fp32_param(p)  # None when DeepSpeed keeps no separate fp32 copy
        if keep:
            weights[name] = (p.detach() if full is None else full).float().cpu().clone()
    return weights


def full_moments(engine: Any, model: nn.Module, keep: bool = True) -> dict[str, dict[str, torch.Tensor]] | None:
    """AdamW's moments whole, `{"exp_avg": {name: tensor}, "exp_avg_sq": {...}}`; None where
    DeepSpeed's optimizer holds them on flat copies that have no names (fp16 without ZeRO).
    Collective, like `full_weights`."""
    from deepspeed.utils import safe_get_full_optimizer_state

    state = _base_optimizer(engine).state if not _partitioned(next(model.parameters())) else None
    _link_moments(engine, model)
    moments: dict[str, dict[str, torch.Tensor]] = {key: {} for key in MOMENTS}
    for name, p in _parameters(model):
        if state is not None and p not in state:
            return None
        for key in MOMENTS:
            value = state[p][key] if state is not None else safe_get_full_optimizer_state(p, key)
            if keep:
                moments[key][name] = value.float().cpu().clone()
    return moments


def layout(engine: Any) -> dict[str, Any]:
    """What DeepSpeed's own checkpoint files depend on: processes, ZeRO stage and precision."""
    precision = "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"
    return {"world_size": dist.get_world_size(), "zero_stage": engine.zero_optimization_stage(), "precision": precision}


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
    weights = full_weights(model, keep=rank == 0)
    moments = full_moments(engine, model, keep=rank == 0)
    engine.save_checkpoint(str(root), tag=work.name, save_latest=False)
    if rank == 0:
        torch.save(weights, work / WEIGHTS)
        if moments is not None:
            adam_step = next(iter(_base_optimizer(engine).state.values()))["step"]
            torch.save({**moments, "step": float(adam_step), "schedule": engine.lr_scheduler.state_dict()},
                       work / OPTIMIZER)  # fmt: skip
        shutil.copytree(job.tokenizer, work / "tokenizer", ignore=shutil.ignore_patterns("manifest.json", ".*"))
        record = {"step": step, **state, **layout(engine), "job": job.model_dump(mode="json")}
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


def resume(engine: Any, model: nn.Module, folder: Path) -> dict[str, Any]:
    """Load checkpoint `folder` into the engine (built around `model`) and this rank's RNG: from
    DeepSpeed's own files when the layout is the one it was written with, else from the
    consolidated state. Returns its checkpoint.json."""
    record = json.loads((folder / STATE).read_text())
    now = layout(engine)
    if all(record.get(key, value) == value for key, value in now.items()):  # keys it lacks are taken to match
        _resume_deepspeed(engine, folder)
        return record
    was = ", ".join(f"{key} {record.get(key, '?')}" for key in now)
    log.info("%s was written with %s; resuming with %s from its consolidated weights and optimizer state", folder,
             was, ", ".join(f"{key} {value}" for key, value in now.items()))  # fmt: skip
    _resume_consolidated(engine, model, folder, record["step"])
    # The dropout masks cannot continue another layout's streams: a fresh one per rank and step.
    seed = np.random.SeedSequence([record["job"]["seed"], record["step"], dist.get_rank()]).generate_state(1)[0]
    torch.manual_seed(int(seed))
    return record


def _resume_deepspeed(engine: Any, folder: Path) -> None:
    _load_safely(engine)
    path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)  # fmt: skip
    if path is None:
        raise CheckpointError(f"{folder}: DeepSpeed found no checkpoint to load")
    rng_file = folder / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])


def _resume_consolidated(engine: Any, model: nn.Module, folder: Path, step: int) -> None:
    """Every rank takes its partitions of the full weights and moments; then the step count, the
    schedule and DeepSpeed's counters, so the next step is the one the checkpoint stopped before."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if not (folder / OPTIMIZER).is_file():
        raise CheckpointError(f"{folder}: no {OPTIMIZER} (fp16 without ZeRO keeps none), so it resumes only with "
                              "the processes, ZeRO stage and precision it was written with")  # fmt: skip
    weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    saved = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
    params = _parameters(model)
    for name, p in params:
        if _partitioned(p):
            safe_set_full_fp32_param(p, weights[name].to(engine.device))
        else:
            p.data.copy_(weights[name])
    _create_optimizer_state(engine)  # also copies the fp32 weights into the module's own
    _link_moments(engine, model)
    state = _base_optimizer(engine).state
    if not _partitioned(params[0][1]) and any(p not in state for _, p in params):
        raise CheckpointError(f"{folder}: cannot resume into ZeRO stage 0 with {layout(engine)['precision']} from "
                              "another layout (DeepSpeed keeps its moments on unnamed flat copies there); resume "
                              "with deepspeed.zero_stage 1 or 2, or the layout it was written with")  # fmt: skip
    for name, p in params:
        for key in MOMENTS:
            if _partitioned(p):
                safe_set_full_optimizer_state(p, saved[key][name].to(engine.device), key)
            else:
                state[p][key].copy_(saved[key][name])
    for values in state.values():
        values["step"].fill_(saved["step"])
    schedule = engine.lr_scheduler
    schedule.load_state_dict(saved["schedule"])
    for group, lr in zip(schedule.optimizer.param_groups, schedule.get_last_lr()):
        group["lr"] = lr
    engine.global_steps, engine.global_samples = step, step * engine.train_batch_size()


def _create_optimizer_state(engine: Any) -> None:
    """One optimizer step on zero gradients at learning rate 0: AdamW creates its state at its first
    step (there is none to fill before), and DeepSpeed copies the fp32 weights into the module's own
    after a step. At lr 0 the update, weight decay included, leaves every weight as it was."""
    groups = engine.lr_scheduler.optimizer.param_groups
    for group in groups:
        group["lr"] = 0.0
    token = torch.zeros((1, 1), dtype=torch.long, device=engine.device)
    for _ in range(engine.gradient_accumulation_steps()):
        engine.backward(engine(token).logits.sum() * 0.0)
        engine.step()


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
