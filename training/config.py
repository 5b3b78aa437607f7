"""Typed config sections owned by training: `model`, `train` and `deepspeed`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Exit status (EX_TEMPFAIL) of a training process stopped by a signal after saving a checkpoint; here,
# beside the configs, so launchers can use it without importing torch.
PREEMPTED = 75


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or not ours. (Defined here, beside the
    configs, so the CLI can catch it without importing torch.)"""


# Model sizes by name. `gpt1` is the paper's; `debug` is small enough for a CPU test in seconds.
PRESETS: dict[str, dict[str, int]] = {
    "gpt1": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 512},
    "mini": {"n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 512},
    "debug": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 512},
}


class ModelConfig(BaseModel):
    """The GPT-1 architecture: a named preset, any field of which can be overridden."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    preset: str = "gpt1"
    """Size preset filling the fields not given: one of PRESETS (gpt1, mini, debug)."""
    n_layer: int = Field(12, gt=0)
    """Number of transformer blocks."""
    n_head: int = Field(12, gt=0)
    """Attention heads per block; must divide n_embd."""
    n_embd: int = Field(768, gt=0)
    """Width of the residual stream."""
    n_inner: int | None = Field(None, gt=0)
    """Feed-forward width; null means 4 × n_embd (3072 for GPT-1)."""
    n_positions: int = Field(512, gt=0)
    """Size of the learned position table: the longest context the model can read."""
    vocab_size: int | None = Field(None, gt=0)
    """Token vocabulary size; null takes it from the trained tokenizer."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on embeddings, attention weights and residual branches."""
    init_std: float = Field(0.02, gt=0.0)
    """Standard deviation of the normal initialisation of weights."""
    layer_norm_eps: float = Field(1e-5, gt=0.0)
    """Epsilon of every LayerNorm."""

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset", "gpt1")
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return {**PRESETS[name], **data}

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class TrainConfig(BaseModel):
    """Pretraining: batch, schedule, optimiser, precision and how often to evaluate and save."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    global_batch: int = Field(64, gt=0)
    """Sequences per optimiser step, summed over processes and accumulation steps."""
    micro_batch: int = Field(8, gt=0)
    """Sequences per process per forward pass; accumulation makes up the global batch."""
    epochs: float = Field(100.0, gt=0)
    """Passes over the training shards."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimiser steps even if epochs are left; null means no cap."""
    lr: float = Field(2.5e-4, gt=0)
    """Peak learning rate of Adam."""
    min_lr: float = Field(0.0, ge=0)
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = Field(2000, ge=0)
    """Linear warm-up from 0 to lr over this many steps."""
    decay: Literal["cosine", "linear"] = "cosine"
    """Shape of the decay from lr to min_lr after warm-up."""
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay, applied to weight matrices only (not biases, gains)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's beta1 and beta2."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value; 0 disables clipping."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Numeric precision; auto picks bf16 on GPUs that have it and fp32 on CPU."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    activation_checkpointing: bool = Field(False, json_schema_extra={"hashed": False})
    """Recompute block activations in the backward pass to save memory."""
    log_every: int = Field(10, gt=0, json_schema_extra={"hashed": False})
    """Write training metrics every this many steps."""
    eval_every: int = Field(500, gt=0)
    """Measure validation loss every this many steps (and at the end)."""
    eval_batches: int = Field(20, gt=0)
    """Micro-batches of validation data per evaluation, in all: split over the processes, so the
    validation loss is over the same windows whatever their number."""
    checkpoint_every: int = Field(1000, gt=0, json_schema_extra={"hashed": False})
    """Save a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = Field(3, ge=1, json_schema_extra={"hashed": False})
    """How many of the newest checkpoints to keep; older ones are deleted unless kept by keep_every."""
    keep_every: int | None = Field(None, gt=0, json_schema_extra={"hashed": False})
    """Also keep, for good, every checkpoint whose step is a multiple of this; null keeps none."""
    record_windows: bool = Field(False, json_schema_extra={"hashed": False})
    """Write the window indices each step trains on (every rank's, in rank order) to metrics.jsonl:
    an audit of the data order across restarts and changes in the number of processes."""

    @model_validator(mode="after")
    def _micro_fits_global(self) -> TrainConfig:
        if self.micro_batch > self.global_batch:
            raise ValueError(f"micro_batch ({self.micro_batch}) is larger than global_batch ({self.global_batch})")
        return self


class DeepSpeedConfig(BaseModel):
    """The DeepSpeed settings we own, plus any other DeepSpeed keys passed through untouched."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    zero_stage: int = Field(1, ge=0, le=3)
    """ZeRO optimisation stage, 0 (off) to 3."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Further DeepSpeed config keys, merged into the generated config as they are."""


class TrainJob(BaseModel):
    """One pretraining job: what every process reads from `job.json` in the output folder.

    Launchers write it once; each rank (local, hostfile, SLURM or Ray) starts from it alone, so a
    rank needs neither the YAML config nor the CLI.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: ModelConfig
    """The architecture, with vocab_size taken from the tokenizer."""
    train: TrainConfig
    """Batch, schedule, optimiser and cadence."""
    deepspeed: DeepSpeedConfig
    """ZeRO stage and DeepSpeed pass-through keys."""
    shards: Path
    """Token shards folder (the shards stage's output)."""
    tokenizer: Path
    """Tokenizer folder, copied into every checkpoint so it describes itself."""
    out: Path
    """Output folder: checkpoints, metrics.jsonl, tensorboard/, result.json."""
    seed: int = Field(1234, ge=0)
    """Seed for initialisation, dropout and data order."""

    @model_validator(mode="after")
    def _vocab_known(self) -> TrainJob:
        if self.model.vocab_size is None:
            raise ValueError("model.vocab_size must be set in a job (it comes from the tokenizer)")
        return self
