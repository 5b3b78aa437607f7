"""Typed config sections owned by evaluation: `eval` and `report`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TaskConfig(BaseModel):
    """One fine-tuning task, read from a local directory or the Hugging Face hub."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1)
    """Task name from the registry (rte, sst2, mnli, race, ...)."""
    data_dir: str | None = None
    """Directory holding the files as the benchmark distributes them."""
    hub: str | None = None
    """Hugging Face dataset id to read instead of data_dir."""

    @model_validator(mode="after")
    def _known_with_one_source(self) -> TaskConfig:
        from eval.tasks import PROXIES, TASKS

        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; known tasks: {', '.join(TASKS)}")
        if self.name in PROXIES:
            if self.data_dir or self.hub:
                raise ValueError(f"{self.name} is built from the run's validation documents: give no data_dir or hub")
        elif (self.data_dir is None) == (self.hub is None):
            raise ValueError(f"{self.name}: give exactly one of data_dir (the benchmark's files) or hub (a dataset id)")
        elif self.hub and not TASKS[self.name].hub_splits:
            raise ValueError(f"{self.name} is not on the hub as Parquet; download it and give data_dir")
        return self


class EvalConfig(BaseModel):
    """Fine-tuning with the paper's settings on each configured task."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tasks: list[TaskConfig] = Field(default_factory=list)
    """Tasks to fine-tune and score."""
    lr: float = Field(6.25e-5, gt=0)
    """Peak fine-tuning learning rate."""
    batch_size: int = Field(32, gt=0)
    """Examples per optimiser step."""
    micro_batch: int = Field(8, gt=0)
    """Examples per forward pass; accumulation makes up batch_size. Must divide it."""
    score_batch: int = Field(64, gt=0, json_schema_extra={"hashed": False})
    """Examples per forward pass when scoring (no gradients, so larger than micro_batch)."""
    length_buckets: int = Field(32, ge=0)
    """Batches sorted by length together within each epoch's shuffle, so that little of a batch is
    padding; 0 keeps the plain shuffle."""
    epochs: int = Field(3, gt=0)
    """Passes over each task's training split."""
    warmup_fraction: float = Field(0.002, ge=0.0, lt=1.0)
    """Fraction of steps spent warming up linearly, then linear decay to 0."""
    lm_coef: float = Field(0.5, ge=0.0)
    """Weight of the auxiliary language-modelling loss; 0 turns it off."""
    clf_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout before the task head."""
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of train held out to pick the best epoch; 0 scores the final model (the paper's way)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Numeric precision; auto is bf16 on GPUs that have it, fp32 on CPU."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """One fine-tune per seed; several give a mean and spread."""
    ablations: list[Literal["no_pretrain", "no_aux"]] = Field(default_factory=list)
    """Extra runs: from random initialisation, and without the auxiliary LM loss."""
    workers: int | None = Field(None, gt=0, json_schema_extra={"hashed": False})
    """Fine-tunes run at once, each in a worker process with its own GPU, or on CPU its share of the
    threads; null is one per GPU, or one on CPU (`eval/pool.py` says when more pay on CPU)."""

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> EvalConfig:
        if self.batch_size % self.micro_batch:
            raise ValueError(f"batch_size ({self.batch_size}) is not a multiple of micro_batch ({self.micro_batch})")
        return self


class ReportConfig(BaseModel):
    """The final report comparing our scores with the paper's."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    title: str = "GPT-1 reproduction"
    """Heading of the report."""
    formats: list[Literal["md", "html"]] = Field(default_factory=lambda: ["md", "html"], min_length=1)
    """Files to write: report.md and/or a self-contained report.html."""
