"""Fine-tuning and scoring throughput: the old path against ours, same task, same session.

    python -m bench.eval [--config configs/tiny.yaml] [--tasks proxy_shuffle,proxy_order] [--seeds 0,1]
    python -m bench.eval --race 512 [--preset gpt1]     # on a GPU: RACE's shape, no run needed

Fine-tunes each task from the run's pretrained checkpoint (the `full` variant: pretrained, with
the auxiliary loss), once per seed along each path:
- `old`, fine-tuning as it first ran: the plain shuffle (`eval.length_buckets: 0`), each sequence
  in a row of its own (a multiple-choice context once per choice), the LM head projecting every
  position (padding and extract tokens too) in training and in scoring, scoring `micro_batch`
  examples at a time, torch's dropout on CPU, AdamW's per-parameter loop on CPU, DeepSpeed
  clipping the gradients one at a time, and DeepSpeed reducing the gradients of its one process;
- `ours`, the code and config as they are: batches of about one length, an example's sequences
  in one row that holds their shared beginning once (built once, when the task is tokenised), the
  LM head only where there is a next token and never when scoring, scoring `score_batch` examples
  at a time under inference mode, `training.model.dropout`, fused AdamW clipping with torch's
  foreach kernels (`training.engine.optimizer_clips`), no reduction alone;
- `pool`, when the config's `eval.workers` is above 1: ours as the eval stage runs it, one pool of
  worker processes (`eval.pool`) for every task and seed, started once. A task's row is its runs'
  own times in their workers divided by the number of workers; the total over every task is the
  pool's wall time, from the workers' start to the last score.
Prints examples/s of fine-tuning and of scoring, the ratio, where the time goes (set-up, data,
forward, backward, optimizer, scoring: wall time of each outermost call), and each path's dev
scores with their spread over the seeds. Needs the run's pretrain stage (`gpt1 train CONFIG`).
`--race N` times instead N RACE-shaped examples (made-up words: every choice 512 tokens, four to an
example) on the preset at random weights, with the paper's batch of 32 in micro-batches of 8.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from deepspeed.runtime.engine import DeepSpeedEngine

import eval.finetune as finetuning
from eval.config import EvalConfig, TaskConfig
from eval.evaluate import Runs, workers
from eval.finetune import Encoded, finetune
from eval.heads import TaskModel, TaskOutput
from eval.pool import Pool
from eval.tasks import Example, Task, get_task
from eval.transforms import Batch, Row, sequences
from launch.config import load_config
from tokenizer.config import TokenizerConfig
from tokenizer.train import train as train_tokenizer
from training.checkpoint import resolve
from training.config import ModelConfig, TrainConfig
from training.engine import build_engine, load_optimizer_imports, param_groups
from training.model import GPT, lm_loss
from training.run import init_process

GPT1_VOCAB = 40_478  # the paper's BPE vocabulary
PARTS = ["set-up", "data", "forward", "backward", "optimizer", "scoring"]


class Parts:
    """Wall time of each part of a fine-tune: every call to a timed function that no other timed
    call encloses (a forward pass while scoring is scoring's)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.depth += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth:
                self.seconds[name] += time.perf_counter() - t0

    def timed(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        return call

    def timed_batches(self, batches: Callable) -> Callable:
        """`Encoded.batches`, each batch's making timed as data."""

        def each(data: Encoded, *args, **kwargs) -> Iterator[Batch]:
            made = batches(data, *args, **kwargs)
            while True:
                with self.part("data"):
                    batch = next(made, None)
                if batch is None:
                    return
                yield batch

        return each

    def patches(self) -> list:
        """Timers around fine-tuning's parts as they are when called (the old path's, once patched)."""
        return [mock.patch.object(finetuning, "build_engine", self.timed("set-up", finetuning.build_engine)),
                mock.patch.object(Encoded, "batches", self.timed_batches(Encoded.batches)),
                mock.patch.object(DeepSpeedEngine, "forward", self.timed("forward", DeepSpeedEngine.forward)),
                mock.patch.object(DeepSpeedEngine, "backward", self.timed("backward", DeepSpeedEngine.backward)),
                mock.patch.object(DeepSpeedEngine, "step", self.timed("optimizer", DeepSpeedEngine.step)),
                mock.patch.object(finetuning, "score", self.timed("scoring", finetuning.score))]  # fmt: skip


def old_optimizer(model: torch.nn.Module, train: TrainConfig, device: torch.device,
                  clip: bool = False) -> torch.optim.AdamW:  # fmt: skip
    """AdamW as first built: fused on CUDA only, the per-parameter loop on CPU; DeepSpeed clipped
    (`old_code` turns `training.engine.optimizer_clips` off, so `clip` is always False)."""
    return torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=train.betas,
                             fused=device.type == "cuda")  # fmt: skip


def old_engine(*args, **kwargs):
    """`build_engine` with DeepSpeed reducing the gradients of its one process, as it first did."""
    engine = build_engine(*args, **kwargs)
    engine.enable_backward_allreduce = True
    return engine


def old_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, p: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bias is None, dropout_p=p)


def old_code() -> list:
    """The code of the old path where it differs from ours but for the task model and batches."""
    return [mock.patch("training.model.dropout", F.dropout), mock.patch("training.model.attend", old_attend),
            mock.patch("training.engine.optimizer", old_optimizer),
            mock.patch("training.engine.optimizer_clips", lambda ds, precision: False),
            mock.patch("eval.finetune.build_engine", old_engine)]  # fmt: skip


def unpacked(rows: list[Row], labels: list[float], pad: int, regression: bool) -> Batch:
    """A batch as fine-tuning first built one: every sequence in a row of its own, (B, S, T)."""
    encoded = [sequences(r) for r in rows]
    T = max(len(seq) for seqs in encoded for seq in seqs)
    tokens = torch.full((len(encoded), len(encoded[0]), T), pad, dtype=torch.long)
    targets = torch.full_like(tokens, -1)
    extract = torch.zeros(tokens.shape[:2], dtype=torch.long)
    for b, seqs in enumerate(encoded):
        for s, seq in enumerate(seqs):
            tokens[b, s, : len(seq)], targets[b, s, : len(seq) - 1] = torch.tensor(seq), torch.tensor(seq[1:])
            extract[b, s] = len(seq) - 1
    return Batch(tokens, None, None, extract, targets, None, torch.tensor(labels, dtype=torch.float if regression
                                                                           else torch.long))  # fmt: skip


class EveryPosition(TaskModel):
    """The task model as it first ran, on `unpacked` batches: the LM head projects every position of
    every sequence, in training and in scoring, and the loss then ignores padding."""

    def forward(self, tokens: torch.Tensor, positions: None, segments: None, extract: torch.Tensor,
                lm_targets: torch.Tensor | None = None, lm_weights: None = None) -> TaskOutput:  # fmt: skip
        B, S, T = tokens.shape
        out = self.gpt(tokens.view(B * S, T))
        h = out.hidden[torch.arange(B * S, device=tokens.device), extract.view(-1)].view(B, S, -1)
        head = self.head(self.dropout(h if self.kind == "multiple_choice" else h.sum(dim=1)))
        scores = head.squeeze(-1) if self.kind == "multiple_choice" else head
        lm = None if lm_targets is None else lm_loss(out.logits, lm_targets.view(B * S, T))
        return TaskOutput(scores, lm)


def pretrained(run_dir: Path) -> tuple[Path, Path]:
    """The run's pretrained checkpoint folder and its data stage's output."""
    stages = json.loads((run_dir / "stages.json").read_text())
    if "pretrain" not in stages:
        raise SystemExit(f"error: {run_dir} has no pretrain stage: run gpt1 train on this config first")
    return resolve(Path(stages["pretrain"]["dir"])), Path(stages["data"]["dir"])


def race_shaped(preset: str, examples: int) -> tuple[Task, Encoded, dict[str, Encoded], ModelConfig,
                                                      dict[str, torch.Tensor]]:  # fmt: skip
    """RACE's shape in made-up words: a passage long enough that every choice's sequence fills 512
    positions, four 8-word answers; `examples` to train on and half as many to score, and the model
    at random weights with GPT-1's 40,478-id vocabulary (throughput does not depend on the weights)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(400)]

    def example() -> Example:
        passage = " ".join(rng.choices(words, k=600))
        return Example(passage, choices=tuple(" ".join(rng.choices(words, k=8)) for _ in range(4)),
                       label=rng.randrange(4))  # fmt: skip

    tok = train_tokenizer(TokenizerConfig(merges=600, min_frequency=1), lambda: iter([" ".join(words)] * 4))
    task = get_task("race")
    model_cfg = ModelConfig(preset=preset, vocab_size=GPT1_VOCAB, n_positions=512)
    torch.manual_seed(0)
    weights = GPT(model_cfg).state_dict()
    train, dev = (Encoded(task, [example() for _ in range(n)], tok, 512) for n in (examples, examples // 2))
    return task, train, {task.name: dev}, model_cfg, weights


def compare(task: Task, train: Encoded, evals: dict[str, Encoded], model_cfg: ModelConfig,
            weights: dict[str, torch.Tensor], cfg: EvalConfig, seeds: list[int],
            device: torch.device) -> list[dict]:  # fmt: skip
    """One fine-tune per path and seed of one task; each row its time, parts and dev scores."""
    old = cfg.model_copy(update={"length_buckets": 0, "score_batch": cfg.micro_batch})
    paths = {"old": (old, [mock.patch("eval.finetune.TaskModel", EveryPosition),
                           mock.patch("eval.finetune.collate_rows", unpacked), *old_code()]),
             "ours": (cfg, [])}  # fmt: skip
    rows = []
    # Seed by seed, each path in turn: a slow spell of the host then falls on both paths, not on one.
    for seed in seeds:
        for label, (path_cfg, patches) in paths.items():
            torch.manual_seed(seed)
            gpt = GPT(model_cfg)
            gpt.load_state_dict(weights)
            parts = Parts()
            with contextlib.ExitStack() as stack:
                for patch in patches:
                    stack.enter_context(patch)
                for patch in parts.patches():
                    stack.enter_context(patch)
                t0 = time.perf_counter()
                scores = finetune(task, gpt, train, evals, path_cfg, seed, cfg.lm_coef, device)
                seconds = time.perf_counter() - t0
            scored = sum(len(data) for data in evals.values())
            rows.append({"task": task.name, "path": label, "seed": seed, "seconds": seconds,
                         "parts": {name: parts.seconds[name] for name in PARTS},
                         "train_per_s": len(train) * path_cfg.epochs / (seconds - parts.seconds["scoring"]),
                         "score_per_s": scored / parts.seconds["scoring"],
                         "score": scores[task.name][task.metric]})  # fmt: skip
            print(f"{task.name} {label} seed {seed}: {seconds:.1f} s, {task.metric} {rows[-1]['score']:.2f}",
                  flush=True)  # fmt: skip
    return rows


def pooled(cfg: EvalConfig, task_cfgs: list[TaskConfig], folder: Path, data_dir: Path, seeds: list[int],
           examples: dict[str, int]) -> tuple[list[dict], float]:  # fmt: skip
    """Our path as the eval stage runs it with `eval.workers` above 1: one pool of worker processes
    for every task and seed, started once, as the stage starts one for all its fine-tunes. Returns a
    row per run, whose time is the run's own in its worker divided by the number of workers (its
    share of the pool while every worker is busy), and the pool's wall time per seed, from the
    workers' start to the last score (start-up included)."""
    n = workers(cfg)
    t0 = time.perf_counter()
    with Pool(Runs, (folder, data_dir), n) as pool:
        jobs = [(t, pool.submit("run", t, cfg, "full", seed)) for t in task_cfgs for seed in seeds]
        runs = [(t, job.result()[1]) for t, job in jobs]
    seconds = time.perf_counter() - t0
    print(f"every task, {n} workers, seeds {seeds}: {seconds:.1f} s", flush=True)
    rows = []
    for task_cfg, run in runs:
        task = get_task(task_cfg.name)
        share = run["seconds"] / n
        rows.append({"task": task.name, "path": "pool", "seed": run["seed"], "seconds": share, "parts": None,
                     "train_per_s": examples[task.name] * cfg.epochs / share, "score_per_s": None,
                     "score": run["scores"][task.name][task.metric]})  # fmt: skip
    return rows, seconds / len(seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--tasks", help="comma-separated (default: every task of the config's eval section)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    parser.add_argument(
        "--race",
        type=int,
        metavar="EXAMPLES",
        help="instead, RACE-shaped examples (512 tokens, 4 choices) on a random-weight model",
    )
    parser.add_argument("--preset", default="gpt1", help="the model for --race (debug: a CPU dry run)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    device = init_process()
    load_optimizer_imports()  # before timing any path
    rows, pool_wall = [], None
    if args.race:
        cfg = EvalConfig(batch_size=32, micro_batch=8, score_batch=32, epochs=1)  # the paper's batch, as 4 × 8
        rows = compare(*race_shaped(args.preset, args.race), cfg, seeds, device)
        names, where = ["race"], f"RACE-shaped, {args.race} examples, {args.preset} preset, {device}"
    else:
        config = load_config(args.config)
        cfg = config.eval
        names = args.tasks.split(",") if args.tasks else [t.name for t in cfg.tasks]
        folder, data_dir = pretrained(config.run_dir)
        here = Runs(folder, data_dir)  # the checkpoint and tasks, loaded as the eval stage does
        task_cfgs, examples = [], {}
        for name in names:
            task_cfg = next((t for t in cfg.tasks if t.name == name), None)
            if task_cfg is None:
                raise SystemExit(f"error: {name} is not one of the config's eval.tasks")
            task, _, train, evals = here.task(task_cfg)
            rows += compare(task, train, evals, here.model_cfg, here.weights, cfg, seeds, device)
            task_cfgs.append(task_cfg)
            examples[name] = len(train)
        if workers(cfg) > 1:
            pool_rows, pool_wall = pooled(cfg, task_cfgs, folder, data_dir, seeds, examples)
            rows += pool_rows
        where = f"{config.run_dir}, {args.config}'s eval section"

    print(f"\n{where}, seeds {seeds}, {torch.get_num_threads()} threads")
    print(f"{'task':<16}{'path':<6}{'train ex/s':>11}{'score ex/s':>11}"
          + "".join(f"{name:>10}" for name in PARTS) + f"{'total s':>9}  dev score (mean ± spread)")  # fmt: skip
    labels = dict.fromkeys(r["path"] for r in rows)
    totals = dict.fromkeys(labels, 0.0)
    for name in names:
        mean = {}
        for label in labels:
            mine = [r for r in rows if r["task"] == name and r["path"] == label]
            mean[label] = {key: statistics.fmean(r[key] for r in mine) for key in ("train_per_s", "seconds")}
            mean[label]["score_per_s"] = None if mine[0]["parts"] is None else statistics.fmean(
                r["score_per_s"] for r in mine)  # fmt: skip
            scores = [r["score"] for r in mine]
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            totals[label] += mean[label]["seconds"]
            if mine[0]["parts"] is None:  # run elsewhere: only its wall time is known
                measured = f"{'-':>11}" + "".join(f"{'-':>10}" for _ in PARTS)
            else:
                parts = {part: statistics.fmean(r["parts"][part] for r in mine) for part in PARTS}
                measured = f"{mean[label]['score_per_s']:>11.1f}" + "".join(
                    f"{parts[part]:>10.1f}" for part in PARTS)  # fmt: skip
            print(f"{name:<16}{label:<6}{mean[label]['train_per_s']:>11.1f}" + measured
                  + f"{mean[label]['seconds']:>9.1f}  {statistics.fmean(scores):.2f} ± {spread:.2f}")  # fmt: skip
        for label in [label for label in labels if label != "old"]:
            scoring = mean[label]["score_per_s"]
            print(f"{name:<16}{label} / old: fine-tuning "
                  f"{mean[label]['train_per_s'] / mean['old']['train_per_s']:.2f}×, "
                  + ("" if scoring is None else f"scoring {scoring / mean['old']['score_per_s']:.2f}×, ")
                  + f"whole run {mean['old']['seconds'] / mean[label]['seconds']:.2f}×")  # fmt: skip
    if pool_wall is not None:
        totals["pool"] = pool_wall  # the pool's wall time, its start-up included, not the sum of its runs' shares
    print(
        "every task, one seed: "
        + ", ".join(f"{label} {totals[label]:.0f} s" for label in labels)
        + "; "
        + ", ".join(f"{label} {totals['old'] / totals[label]:.2f}×" for label in labels if label != "old")
    )


if __name__ == "__main__":
    main()
