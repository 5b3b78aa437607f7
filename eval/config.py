"""Typed config sections owned by evaluation: `eval` and `report`."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TaskConfig(BaseModel):
    """One fine-tuning task, read from a local directory or the Hugging Face hub."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1)
    """Task name from the registry (rte, sst2, mnli, race, ...)."""
    data_dir: str | None = None
    """Directory holding the files as the benchmark distributes them."""
    hub: str | None = None
    """Hugging Face dataset id to read instead of data_dir."""


class EvalConfig(BaseModel):
    """Fine-tuning with the paper's settings on each configured task."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tasks: list[TaskConfig] = Field(default_factory=list)
    """Tasks to fine-tune and score."""
    lr: float = Field(6.25e-5, gt=0)
    """Peak fine-tuning learning rate."""
    batch_size: int = Field(32, gt=0)
    """Examples per optimiser step."""
    epochs: int = Field(3, gt=0)
    """Passes over each task's training split."""
    warmup_fraction: float = Field(0.002, ge=0.0, lt=1.0)
    """Fraction of steps spent warming up linearly, then linear decay to 0."""
    lm_coef: float = Field(0.5, ge=0.0)
    """Weight of the auxiliary language-modelling loss; 0 turns it off."""
    clf_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout before the task head."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """One fine-tune per seed; several give a mean and spread."""
    ablations: list[Literal["no_pretrain", "no_aux"]] = Field(default_factory=list)
    """Extra runs: from random initialisation, and without the auxiliary LM loss."""


class ReportConfig(BaseModel):
    """The final report comparing our scores with the paper's."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    title: str = "GPT-1 reproduction"
    """Heading of the report."""
    formats: list[Literal["md", "html"]] = Field(default_factory=lambda: ["md", "html"], min_length=1)
    """Files to write: report.md and/or a self-contained report.html."""
