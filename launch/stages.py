"""The run chain: which stages a run has, in order, each given only its own config sections."""

from __future__ import annotations

from launch.config import Config
from pipeline.runner import Stage, StageContext


def data_stage(cfg: Config) -> Stage:
    def run(ctx: StageContext) -> dict:
        from pipeline.data_stage import run_data

        return run_data(cfg.data, ctx.out_dir)

    return Stage("data", {"data": cfg.data}, run, version=1, resumable=True)


def tokenizer_stage(cfg: Config) -> Stage:
    def run(ctx: StageContext) -> dict:
        from pipeline.tokenizer_stage import run_tokenizer

        return run_tokenizer(cfg.tokenizer, ctx.inputs["data"], ctx.out_dir)

    return Stage("tokenizer", {"tokenizer": cfg.tokenizer}, run, inputs=("data",), version=1)


def shards_stage(cfg: Config) -> Stage:
    def run(ctx: StageContext) -> dict:
        from pipeline.shards import run_shards

        return run_shards(cfg.shards, ctx.inputs["data"], ctx.inputs["tokenizer"], ctx.out_dir)

    return Stage("shards", {"shards": cfg.shards}, run, inputs=("data", "tokenizer"), version=1)


def build_chain(cfg: Config) -> list[Stage]:
    """The stages of a run for this config, in order."""
    return [data_stage(cfg), tokenizer_stage(cfg), shards_stage(cfg)]
