"""The eval stage: fine-tune each configured task from a pretrained checkpoint, once per seed and per
variant (the full recipe, plus the ablations asked for), and write `<task>/results.json`.

Variants: `full` (pretrained weights, auxiliary LM loss at `lm_coef`), `no_pretrain` (the same
architecture from random initialisation), `no_aux` (pretrained, `lm_coef` 0). A task's results
file is written when all its runs are done, so an interrupted stage redoes only unfinished tasks.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from eval.config import EvalConfig, TaskConfig
from eval.finetune import Encoded, finetune
from eval.metrics import glue_average
from eval.tasks import PROXIES, Task, get_task, load_split
from pipeline.runner import sha256_file, write_json_atomic
from tokenizer.bpe import BPETokenizer
from training.checkpoint import WEIGHTS, load_weights, resolve
from training.config import ModelConfig
from training.model import GPT

log = logging.getLogger("gpt1.eval")

RESULTS = "results.json"
# variant -> (starts from the pretrained weights, uses the auxiliary LM loss)
VARIANTS = {"full": (True, True), "no_pretrain": (False, True), "no_aux": (True, False)}


def run_eval(cfg: EvalConfig, checkpoint: Path, data_dir: Path | None, out: Path) -> dict[str, Any]:
    """Fine-tune and score every task of `cfg` from `checkpoint` (a step folder or a pretrain output);
    `data_dir` (the data stage's output) feeds the proxy tasks."""
    from training.run import init_process

    if not cfg.tasks:
        return {"tasks": {}, "glue": None}
    device = init_process()
    folder = resolve(checkpoint)
    model_cfg, weights = load_weights(folder)
    tok = BPETokenizer.load(folder / "tokenizer")
    provenance = {"path": str(folder), "sha256": sha256_file(folder / WEIGHTS)}
    tasks = {}
    for task_cfg in cfg.tasks:
        path = out / task_cfg.name / RESULTS
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, eval_task(task_cfg, cfg, model_cfg, weights, tok, data_dir, device, provenance))
        tasks[task_cfg.name] = json.loads(path.read_text())["summary"]
    full = {name: {m: s["mean"] for m, s in metrics.items()}
            for summary in tasks.values() for name, metrics in summary.get("full", {}).items()}  # fmt: skip
    glue = glue_average(full)
    return {"tasks": tasks, "glue": None if glue is None else {"average": glue[0], "tasks": glue[1]}}


def encoded_task(task_cfg: TaskConfig, tok: BPETokenizer, max_len: int,
                 data_dir: Path | None) -> tuple[Task, dict[str, Any], Encoded, dict[str, Encoded]]:  # fmt: skip
    """A task, where its data comes from, and its train split and scored splits, tokenized once (for
    every seed and variant); proxies read the data stage's `data_dir`."""
    task = get_task(task_cfg.name)
    source = {"data_dir": data_dir, "hub": None} if task.name in PROXIES else {"data_dir": task_cfg.data_dir,
                                                                                "hub": task_cfg.hub}  # fmt: skip
    train = Encoded(task, load_split(task, task.train, **source), tok, max_len)
    evals = {name: Encoded(task, load_split(task, split, **source), tok, max_len)
             for name, split in task.scores.items()}  # fmt: skip
    return task, source, train, evals


def eval_task(task_cfg: TaskConfig, cfg: EvalConfig, model_cfg: ModelConfig, weights: dict[str, torch.Tensor],
              tok: BPETokenizer, data_dir: Path | None, device: torch.device,
              provenance: dict) -> dict[str, Any]:  # fmt: skip
    """Every run of one task, and their mean and spread per variant."""
    task, source, train, evals = encoded_task(task_cfg, tok, model_cfg.n_positions, data_dir)
    log.info("%s (%s): %d train examples; scored on %s", task.name, task.kind, len(train),
             ", ".join(f"{name} ({len(data)})" for name, data in evals.items()))  # fmt: skip
    runs = []
    for variant in ["full", *cfg.ablations]:
        pretrained, aux = VARIANTS[variant]
        for seed in cfg.seeds:
            torch.manual_seed(seed)
            gpt = GPT(model_cfg)
            if pretrained:
                gpt.load_state_dict(weights)
            t0 = time.perf_counter()
            scores = finetune(task, gpt, train, evals, cfg, seed, cfg.lm_coef if aux else 0.0, device)
            runs.append({"variant": variant, "seed": seed, "pretrained": pretrained, "lm_coef": cfg.lm_coef if aux
                         else 0.0, "scores": scores, "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
            log.info("%s %s seed %d: %s", task.name, variant, seed, "; ".join(
                f"{name} {task.metric} {s[task.metric]:.2f}" for name, s in scores.items()))  # fmt: skip
    return {
        "task": task.name, "kind": task.kind, "metric": task.metric, "metrics": [task.metric, *task.extra_metrics],
        "labels": list(task.labels), "source": {k: str(v) for k, v in source.items() if v is not None},
        "train": {"split": task.train, "n": len(train)},
        "splits": {name: {"split": split, "n": len(evals[name])} for name, split in task.scores.items()},
        "checkpoint": provenance, "config": cfg.model_dump(mode="json", exclude={"tasks"}),
        "runs": runs, "summary": summarize(runs),
    }  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """variant -> result name -> metric -> mean, standard deviation over seeds, and seeds."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        out[variant] = {
            name: {metric: {"mean": statistics.fmean(r["scores"][name][metric] for r in mine),
                            "std": _spread([r["scores"][name][metric] for r in mine]), "seeds": len(mine)}
                   for metric in metrics}
            for name, metrics in mine[0]["scores"].items()
        }  # fmt: skip
    return out


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
