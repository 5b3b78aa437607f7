"""The eval stage: fine-tune each configured task from a pretrained checkpoint, once per seed and per
variant (the full recipe, plus the ablations asked for), and write `<task>/results.json`.

Variants: `full` (pretrained weights, auxiliary LM loss at `lm_coef`), `no_pretrain` (the same
architecture from random initialisation), `no_aux` (pretrained, `lm_coef` 0). A task's results
file is written when all its runs are done, so an interrupted stage redoes only unfinished tasks.
With `eval.workers` above 1 the runs go to that many worker processes (`eval.pool`).
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
from eval.pool import Pool
from eval.tasks import PROXIES, Task, get_task, load_split
from pipeline.runner import sha256_file, write_json_atomic
from tokenizer.bpe import BPETokenizer
from training.checkpoint import WEIGHTS, load_weights, resolve
from training.model import GPT

log = logging.getLogger("gpt1.eval")

RESULTS = "results.json"
# variant -> (starts from the pretrained weights, uses the auxiliary LM loss)
VARIANTS = {"full": (True, True), "no_pretrain": (False, True), "no_aux": (True, False)}


def run_eval(cfg: EvalConfig, checkpoint: Path, data_dir: Path | None, out: Path) -> dict[str, Any]:
    """Fine-tune and score every task of `cfg` from `checkpoint` (a step folder or a pretrain output);
    `data_dir` (the data stage's output) feeds the proxy tasks. The runs of every unfinished task go
    out at once, to `workers` processes (`eval.pool`); a task's results are written as its last run ends."""
    if not cfg.tasks:
        return {"tasks": {}, "glue": None}
    folder = resolve(checkpoint)
    provenance = {"path": str(folder), "sha256": sha256_file(folder / WEIGHTS)}
    pending = [t for t in cfg.tasks if not (out / t.name / RESULTS).exists()]
    variants = ["full", *cfg.ablations]
    if pending:
        n_runs = len(pending) * len(variants) * len(cfg.seeds)
        with Pool(Runs, (folder, data_dir), min(workers(cfg), n_runs)) as pool:
            jobs = [(t, [pool.submit("run", t, cfg, variant, seed) for variant in variants for seed in cfg.seeds])
                    for t in pending]  # fmt: skip
            config = cfg.model_dump(mode="json", exclude={"tasks"})
            for task_cfg, task_runs in jobs:
                done = [job.result() for job in task_runs]
                runs = [run for _, run in done]
                result = done[0][0] | {"checkpoint": provenance, "config": config, "runs": runs,
                                       "summary": summarize(runs)}  # fmt: skip
                path = out / task_cfg.name / RESULTS
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, result)
    tasks = {t.name: json.loads((out / t.name / RESULTS).read_text())["summary"] for t in cfg.tasks}
    full = {name: {m: s["mean"] for m, s in metrics.items()}
            for summary in tasks.values() for name, metrics in summary.get("full", {}).items()}  # fmt: skip
    glue = glue_average(full)
    return {"tasks": tasks, "glue": None if glue is None else {"average": glue[0], "tasks": glue[1]}}


def workers(cfg: EvalConfig) -> int:
    """`eval.workers`, or by default one per GPU (one on CPU)."""
    return cfg.workers or max(1, torch.cuda.device_count())


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


class Runs:
    """One process's share of the stage, made once there: the process group and device, the
    checkpoint's weights and tokenizer, and each task tokenised once, for every variant and seed."""

    def __init__(self, checkpoint: Path, data_dir: Path | None):
        from training.engine import load_optimizer_imports
        from training.run import init_process

        self.device = init_process()
        load_optimizer_imports()
        self.model_cfg, self.weights = load_weights(checkpoint)
        self.tok = BPETokenizer.load(checkpoint / "tokenizer")
        self.data_dir = data_dir
        self.tasks: dict[str, tuple[Task, dict[str, Any], Encoded, dict[str, Encoded]]] = {}
        self.described: dict[str, dict[str, Any]] = {}

    def task(self, task_cfg: TaskConfig) -> tuple[Task, dict[str, Any], Encoded, dict[str, Encoded]]:
        """The task tokenised, the first time it is asked for, and what its results say of it and its data."""
        if task_cfg.name not in self.tasks:
            task, source, train, evals = encoded_task(task_cfg, self.tok, self.model_cfg.n_positions, self.data_dir)
            log.info("%s (%s): %d train examples; scored on %s", task.name, task.kind, len(train),
                     ", ".join(f"{name} ({len(data)})" for name, data in evals.items()))  # fmt: skip
            self.tasks[task_cfg.name] = task, source, train, evals
            self.described[task_cfg.name] = {
                "task": task.name, "kind": task.kind, "metric": task.metric,
                "metrics": [task.metric, *task.extra_metrics], "labels": list(task.labels),
                "source": {k: str(v) for k, v in source.items() if v is not None},
                "train": {"split": task.train, "n": len(train)},
                "splits": {name: {"split": split, "n": len(evals[name])} for name, split in task.scores.items()},
            }  # fmt: skip
        return self.tasks[task_cfg.name]

    def run(self, task_cfg: TaskConfig, cfg: EvalConfig, variant: str, seed: int) -> tuple[dict, dict]:
        """One fine-tune of a task: what the task's results say of the task and its data, and the run
        with its scores."""
        task, _, train, evals = self.task(task_cfg)
        pretrained, aux = VARIANTS[variant]
        torch.manual_seed(seed)
        gpt = GPT(self.model_cfg)
        if pretrained:
            gpt.load_state_dict(self.weights)
        t0 = time.perf_counter()
        scores = finetune(task, gpt, train, evals, cfg, seed, cfg.lm_coef if aux else 0.0, self.device)
        log.info("%s %s seed %d: %s", task.name, variant, seed, "; ".join(
            f"{name} {task.metric} {s[task.metric]:.2f}" for name, s in scores.items()))  # fmt: skip
        run = {"variant": variant, "seed": seed, "pretrained": pretrained, "lm_coef": cfg.lm_coef if aux else 0.0,
               "scores": scores, "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
        return self.described[task_cfg.name], run


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
