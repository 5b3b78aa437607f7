"""Fine-tuning and scoring throughput: batches of one length against the plain shuffle, same task.

    python -m bench.eval [--config configs/tiny.yaml] [--task proxy_shuffle] [--seeds 0,1]

Fine-tunes one task of the config from its run's pretrained checkpoint (the `full` variant:
pretrained, with the auxiliary loss), once per seed along each path, in this one process: `plain`
is the plain shuffle (`eval.length_buckets: 0`) scored `micro_batch` examples at a time, as
fine-tuning ran before length buckets; `ours` is the config as it is. (Both skip the LM head when
scoring, so the scoring ratio is that of the batch size alone.) Prints examples/s of
fine-tuning and of scoring, the ratio, where the time goes (set-up, data, forward, backward,
optimizer, scoring; from cProfile, whose overhead both paths pay), and each path's dev scores with
their spread over the seeds. Needs the run's pretrain stage (`gpt1 train CONFIG`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from eval.config import EvalConfig
from eval.evaluate import encoded_task
from eval.finetune import finetune
from launch.config import load_config
from tokenizer.bpe import BPETokenizer
from training.checkpoint import load_weights, resolve
from training.model import GPT
from training.run import init_process

# Where the time goes: (label, file suffix, function) whose cumulative time cProfile reports.
PARTS = [("set-up", "training/engine.py", "build_engine"), ("data", "eval/finetune.py", "batches"),
         ("forward", "deepspeed/runtime/engine.py", "forward"), ("backward", "deepspeed/runtime/engine.py", "backward"),
         ("optimizer", "deepspeed/runtime/engine.py", "step"), ("scoring", "eval/finetune.py", "score")]  # fmt: skip


def cumulative(stats: pstats.Stats, suffix: str, function: str) -> float:
    """Seconds spent in a function and what it calls (outermost calls only)."""
    return sum(row[3] for (file, _, name), row in stats.stats.items() if file.endswith(suffix) and name == function)


def run(cfg: EvalConfig, task_name: str, run_dir: Path, seeds: list[int]) -> list[dict]:
    stages = json.loads((run_dir / "stages.json").read_text())
    if "pretrain" not in stages:
        raise SystemExit(f"error: {run_dir} has no pretrain stage: run gpt1 train on this config first")
    folder = resolve(Path(stages["pretrain"]["dir"]))
    model_cfg, weights = load_weights(folder)
    tok = BPETokenizer.load(folder / "tokenizer")
    task_cfg = next((t for t in cfg.tasks if t.name == task_name), None)
    if task_cfg is None:
        raise SystemExit(f"error: {task_name} is not one of the config's eval.tasks")
    task, _, train, evals = encoded_task(task_cfg, tok, model_cfg.n_positions, Path(stages["data"]["dir"]))
    device = init_process()
    paths = {"plain": cfg.model_copy(update={"length_buckets": 0, "score_batch": cfg.micro_batch}), "ours": cfg}
    rows = []
    for label, path_cfg in paths.items():
        for seed in seeds:
            torch.manual_seed(seed)
            gpt = GPT(model_cfg)
            gpt.load_state_dict(weights)
            profile = cProfile.Profile()
            t0 = time.perf_counter()
            scores = profile.runcall(finetune, task, gpt, train, evals, path_cfg, seed, cfg.lm_coef, device)
            seconds = time.perf_counter() - t0
            stats = pstats.Stats(profile)
            parts = {name: cumulative(stats, suffix, function) for name, suffix, function in PARTS}
            scored = sum(len(data) for data in evals.values())
            rows.append({"path": label, "seed": seed, "seconds": seconds, "parts": parts,
                         "train_per_s": len(train) * path_cfg.epochs / (seconds - parts["scoring"]),
                         "score_per_s": scored / parts["scoring"],
                         "score": {name: s[task.metric] for name, s in scores.items()}})  # fmt: skip
            print(f"{label} seed {seed}: {seconds:.1f} s, {rows[-1]['score']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--task", default="proxy_shuffle")
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    args = parser.parse_args()
    cfg = load_config(args.config)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = run(cfg.eval, args.task, cfg.run_dir, seeds)

    print(f"\n{args.task} from {cfg.run_dir}, {args.config}'s eval section, seeds {seeds}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'path':<7}{'train ex/s':>11}{'score ex/s':>11}" + "".join(f"{name:>11}" for name, _, _ in PARTS)
          + f"{'total s':>9}  dev scores (mean ± spread)")  # fmt: skip
    summary = {}
    for label in ("plain", "ours"):
        mine = [r for r in rows if r["path"] == label]
        mean = {key: statistics.fmean(r[key] for r in mine) for key in ("train_per_s", "score_per_s", "seconds")}
        parts = {name: statistics.fmean(r["parts"][name] for r in mine) for name, _, _ in PARTS}
        scores = {name: [r["score"][name] for r in mine] for name in mine[0]["score"]}
        spread = {name: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for name, v in scores.items()}
        summary[label] = mean
        print(f"{label:<7}{mean['train_per_s']:>11.1f}{mean['score_per_s']:>11.1f}"
              + "".join(f"{parts[name]:>11.1f}" for name, _, _ in PARTS) + f"{mean['seconds']:>9.1f}  "
              + "; ".join(f"{name} {m:.2f} ± {s:.2f}" for name, (m, s) in spread.items()))  # fmt: skip
    print(f"ratio ours / plain: fine-tuning {summary['ours']['train_per_s'] / summary['plain']['train_per_s']:.2f}×, "
          f"scoring {summary['ours']['score_per_s'] / summary['plain']['score_per_s']:.2f}×, "
          f"whole run {summary['plain']['seconds'] / summary['ours']['seconds']:.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
