"""The DeepSpeed pieces we own, built from our typed config: batch arithmetic, precision, ZeRO,
AdamW parameter groups (and, at ZeRO stage 0 in fp32, its gradient clipping) and the learning-rate
schedule. Every other DeepSpeed key passes through `deepspeed.extra` untouched.

Infrastructure wraps a plain model in a fixed order and never edits it: `wrap` adds activation
checkpointing around each block, then `torch.compile`; `build_engine` then puts it in the DeepSpeed
engine (ZeRO, precision, accumulation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from training.config import DeepSpeedConfig, TrainConfig
from training.model import Block

log = logging.getLogger(__name__)

# Keys this module sets from `train`/`deepspeed`; `deepspeed.extra` may not set them a second way.
OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
         "zero_optimization.stage", "bf16", "fp16", "optimizer", "scheduler")  # fmt: skip


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on a GPU that has it, else fp32; fp16/bf16 on CPU fall back to fp32 with a warning."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and device.type != "cuda":
        log.warning("train.precision=%s needs a GPU; using fp32 on %s", precision, device.type)
        return "fp32"
    return precision


def accumulation_steps(train: TrainConfig, world_size: int) -> int:
    """Micro-batches per process per optimizer step, so that micro × steps × processes = global batch."""
    per_step = train.micro_batch * world_size
    if train.global_batch % per_step:
        raise ValueError(
            f"train.global_batch ({train.global_batch}) is not a multiple of train.micro_batch ({train.micro_batch}) "
            f"× {world_size} processes; choose a micro_batch that divides {train.global_batch // world_size or 1}"
        )
    return train.global_batch // per_step


def deepspeed_config(train: TrainConfig, ds: DeepSpeedConfig, world_size: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed config dict: our fields first, then `ds.extra` merged in (deeply)."""
    config: dict[str, Any] = {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": accumulation_steps(train, world_size),
        "gradient_clipping": 0.0 if optimizer_clips(ds, precision) else train.grad_clip,
        "zero_optimization": zero_optimization(ds),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 1 << 30,  # we log ourselves
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,  # torch's AdamW under ZeRO
    }
    if precision == "bf16" and ds.zero_stage:
        # DeepSpeed accumulates (and reduces) gradients in the model's dtype unless told otherwise:
        # bf16 sums lose low bits with every micro-batch. Under ZeRO 1 this selects its BF16_Optimizer.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    elif precision == "bf16" and config["gradient_accumulation_steps"] > 1:
        log.warning("bf16 with ZeRO stage 0 accumulates gradients in bf16 over %d micro-batches (DeepSpeed "
                    "accumulates in fp32 only under ZeRO 1-3); use deepspeed.zero_stage 1 or 2",
                    config["gradient_accumulation_steps"])  # fmt: skip
    clashes = [key for key in OWNED if _has(ds.extra, key)]
    if clashes:
        raise ValueError(
            f"deepspeed.extra sets {', '.join(clashes)}, which come from train/deepspeed fields "
            "(global_batch, micro_batch, grad_clip, precision, zero_stage, lr ...): set those instead"
        )
    return _merge(config, ds.extra)


# Gradient bucket size (elements) for ZeRO's reductions and gathers. DeepSpeed's 5e8 default holds
# all of GPT-1's 117M gradients in one bucket, so nothing is sent until backward ends; 5e7 (100 MB in
# bf16) cuts it into a few buckets that go out while backward is still running.
BUCKET_ELEMENTS = 50_000_000


def zero_optimization(ds: DeepSpeedConfig) -> dict[str, Any]:
    """ZeRO settings, explicit rather than DeepSpeed's defaults: gradients reduced while backward
    runs (overlap_comm) into contiguous buckets of BUCKET_ELEMENTS. Stage 0 has no such options:
    DeepSpeed all-reduces its gradients after backward. `deepspeed.extra` may override any of them."""
    if ds.zero_stage == 0:
        return {"stage": 0}
    return {"stage": ds.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
            "reduce_bucket_size": BUCKET_ELEMENTS, "allgather_bucket_size": BUCKET_ELEMENTS}  # fmt: skip


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decoupled weight decay on weight matrices and embeddings; none on biases and LayerNorm gains."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_clips(ds: DeepSpeedConfig, precision: str) -> bool:
    """Whether our AdamW clips the gradients rather than DeepSpeed: at ZeRO stage 0 in fp32, where
    DeepSpeed hands the optimizer the gradients as they are and clips them one parameter at a time
    in Python, keeping no norm: 0.95 ms of a debug-model fine-tuning step on `proxy_shuffle`,
    0.48 ms with torch's foreach kernels, 5% of an epoch on one thread. Under ZeRO or in fp16/bf16,
    DeepSpeed's own optimizers clip their buffers."""
    return ds.zero_stage == 0 and precision == "fp32"


class ClippedAdamW(torch.optim.AdamW):
    """AdamW that first clips the gradients' global norm to `max_norm` (inf: never), and leaves the
    norm before clipping where DeepSpeed's engine reads it (`engine.get_global_grad_norm()`)."""

    def __init__(self, params: list[dict[str, Any]], max_norm: float, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.max_norm = max_norm
        self._global_grad_norm: torch.Tensor | None = None

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        params = [p for group in self.param_groups for p in group["params"]]  # those without a gradient are skipped
        self._global_grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)
        return super().step(closure)


def optimizer(model: nn.Module, train: TrainConfig, device: torch.device, clip: bool = False) -> torch.optim.AdamW:
    """AdamW; the fused kernel where the device has one (CUDA, and CPU, where it is several times
    faster than the per-parameter loop on a small model). With `clip`, it clips to train.grad_clip
    itself (`optimizer_clips`)."""
    fused = device.type in ("cuda", "cpu")
    groups = param_groups(model, train.weight_decay)
    if clip:
        return ClippedAdamW(groups, train.grad_clip or math.inf, lr=train.lr, betas=train.betas, fused=fused)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=fused)


def lr_schedule(train: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of train.lr at a step: linear warm-up from 0, then a cosine (or a straight line, for
    `train.decay: linear`) down to min_lr at the last step."""
    floor = train.min_lr / train.lr

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        progress = min(1.0, (step - train.warmup_steps) / max(1, total_steps - train.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if train.decay == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return factor


def wrap(model: nn.Module, train: TrainConfig) -> nn.Module:
    """Activation checkpointing (per block), then torch.compile; parameter names stay the model's
    (in the state dict; `named_parameters` gains the wrapper's prefix)."""
    if train.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                       check_fn=lambda m: isinstance(m, Block))  # fmt: skip
    if train.compile:
        model.compile()
    return model


def build_engine(model: nn.Module, train: TrainConfig, ds: DeepSpeedConfig, device: torch.device, world_size: int,
                 total_steps: int) -> Any:  # fmt: skip
    """The DeepSpeed engine training `model` (wrapped in place by `wrap` first): our AdamW and
    schedule, batch arithmetic, precision and ZeRO stage. Pretraining and fine-tuning both use it."""
    import deepspeed

    precision = resolve_precision(train.precision, device)
    opt = optimizer(model, train, device, clip=optimizer_clips(ds, precision))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(train, total_steps))
    config = deepspeed_config(train, ds, world_size, precision)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=schedule, config=config,
                                      dist_init_required=False)  # fmt: skip
    if world_size == 1 and ds.zero_stage == 0:
        # One process: nothing to reduce, but DeepSpeed would still flatten every gradient and all-reduce
        # it alone (and give parameters without one a zero gradient), about 1 ms a step on CPU.
        engine.enable_backward_allreduce = False
    log.info("%s parameters, %s, ZeRO stage %d; %d sequences × %d accumulation × %d processes = %d per step",
             f"{sum(p.numel() for p in model.parameters()):,}", precision, ds.zero_stage, train.micro_batch,
             config["gradient_accumulation_steps"], world_size, train.global_batch)  # fmt: skip
    return engine


def load_optimizer_imports() -> None:
    """Import now what torch.optim imports on its first use: torch._dynamo, 1.4-1.7 s here and all
    a process's first engine costs over the next. Processes that time their fine-tunes (the eval
    stage's workers, `bench.eval`) call this as they start, so that no run's time includes it."""
    import torch._dynamo  # noqa: F401


def _has(config: dict[str, Any], dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if head not in config:
        return False
    return not rest or (isinstance(config[head], dict) and _has(config[head], rest))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
