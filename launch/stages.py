"""The run chain: which stages a run has, in order, each given only its own config sections."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from launch.config import Config
from pipeline.runner import Stage, StageContext, StageError, write_json_atomic

JOB = "job.json"
RESULT = "result.json"  # written by the last training process when the last step is done

# Starts training from a job file and returns when it has finished (a launcher).
Start = Callable[[Path], None]


def data_stage(cfg: Config) -> Stage:
    """Keyed by the config and by the identity of the local files it reads (paths, sizes, mtimes)."""
    from pipeline.sources import input_identity

    def run(ctx: StageContext) -> dict:
        from pipeline.data_stage import run_data

        return run_data(cfg.data, ctx.out_dir)

    sections = {"data": cfg.data, "inputs": input_identity(cfg.data)}
    return Stage("data", sections, run, version=1, resumable=True)


def tokenizer_stage(cfg: Config) -> Stage:
    """Keyed by the config and, unless a trained tokenizer is given, by the style's rules as well."""
    from tokenizer.bpe import rules_digest

    def run(ctx: StageContext) -> dict:
        from pipeline.tokenizer_stage import run_tokenizer

        return run_tokenizer(cfg.tokenizer, ctx.inputs["data"], ctx.out_dir)

    sections: dict = {"tokenizer": cfg.tokenizer}
    if cfg.tokenizer.path is None:
        sections["rules"] = rules_digest(cfg.tokenizer.style)
    return Stage("tokenizer", sections, run, inputs=("data",), version=1)


def shards_stage(cfg: Config) -> Stage:
    def run(ctx: StageContext) -> dict:
        from pipeline.shards import run_shards

        return run_shards(cfg.shards, ctx.inputs["data"], ctx.inputs["tokenizer"], ctx.out_dir)

    return Stage("shards", {"shards": cfg.shards}, run, inputs=("data", "tokenizer"), version=1)


def write_job(cfg: Config, tokenizer: Path, shards: Path, out: Path) -> Path:
    """The job every training process reads: model, train and deepspeed sections, absolute paths,
    and the vocabulary size of the tokenizer the shards were built with."""
    from pipeline.shard_format import read_index
    from training.config import TrainJob

    vocab = read_index(shards)["vocab_size"]
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < vocab:
        raise StageError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's {vocab} ids")
    job = TrainJob(model=cfg.model.model_copy(update={"vocab_size": cfg.model.vocab_size or vocab}),
                   train=cfg.train, deepspeed=cfg.deepspeed, shards=shards.resolve(), tokenizer=tokenizer.resolve(),
                   out=out.resolve(), seed=cfg.run.seed)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / JOB, job.model_dump(mode="json"))
    return out / JOB


def pretrain_stage(cfg: Config, start: Start) -> Stage:
    """Pretraining, started by `start` (a launcher); an interrupted attempt resumes from its latest
    checkpoint. A job finished elsewhere (e.g. under SLURM) is only recorded."""

    def run(ctx: StageContext) -> dict:
        result = ctx.out_dir / RESULT
        if not result.exists():
            start(write_job(cfg, ctx.inputs["tokenizer"], ctx.inputs["shards"], ctx.out_dir))
        if not result.exists():
            raise StageError(f"pretraining ended without writing {result}")
        return {"result": json.loads(result.read_text())}

    sections = {"model": cfg.model, "train": cfg.train, "deepspeed": cfg.deepspeed, "seed": cfg.run.seed}
    return Stage("pretrain", sections, run, inputs=("tokenizer", "shards"), version=1, resumable=True)


def eval_stage(cfg: Config, checkpoint: Path | None = None) -> Stage:
    """Fine-tuning and scoring every task of `eval`, from the pretrain stage's latest checkpoint or
    from `checkpoint` (then recorded by content). Reads the data stage only for the proxy tasks."""
    from eval.tasks import PROXIES

    sections: dict = {"eval": cfg.eval}
    inputs = ("data",) if any(t.name in PROXIES for t in cfg.eval.tasks) else ()
    if checkpoint is None:
        inputs += ("pretrain",)
    else:
        from pipeline.runner import sha256_file
        from training.checkpoint import WEIGHTS, resolve

        sections["checkpoint"] = sha256_file(resolve(checkpoint) / WEIGHTS)

    def run(ctx: StageContext) -> dict:
        from eval.evaluate import run_eval

        return run_eval(cfg.eval, checkpoint or ctx.inputs["pretrain"], ctx.inputs.get("data"), ctx.out_dir)

    return Stage("eval", sections, run, inputs=inputs, version=1, resumable=True)


def report_stage(cfg: Config) -> Stage:
    """report.md and report.html from every other stage's output."""
    from launch.config import config_hash

    digest = config_hash(cfg)

    def run(ctx: StageContext) -> dict:
        from eval.report import write_report

        written = write_report(dict(ctx.inputs), cfg.report, cfg.run.name, ctx.out_dir, digest)
        return {"report": written, "config_hash": digest}

    inputs = ("data", "tokenizer", "shards", "pretrain", "eval")
    return Stage("report", {"report": cfg.report}, run, inputs=inputs, version=1)


def build_chain(cfg: Config, start: Start) -> list[Stage]:
    """The stages of a run for this config, in order; `start` launches pretraining."""
    return [data_stage(cfg), tokenizer_stage(cfg), shards_stage(cfg), pretrain_stage(cfg, start), eval_stage(cfg),
            report_stage(cfg)]  # fmt: skip
