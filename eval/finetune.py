"""Fine-tune one task with the paper's recipe and score it, through the same engine code as
pretraining (`training.engine.build_engine`: AdamW without decay on biases and gains, DeepSpeed
precision and clipping), on one process, CPU or GPU.

The schedule is linear warm-up over `warmup_fraction` of the steps, then linear decay to 0; each
epoch visits the training examples in a new order seeded by (seed, epoch), in full batches of
examples of about one length (`epoch_order`; the last partial batch is dropped), each padded to
its longest sequence. The score reported is the final model's. With
`validation_fraction` > 0, that share of train is held out and the epoch that scores best on it is
the one scored instead (model selection without looking at dev).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from eval.config import EvalConfig
from eval.heads import TaskModel, loss, predictions
from eval.metrics import METRICS
from eval.tasks import Example, Task, TaskDataError
from eval.transforms import Batch, collate_rows, encode, row
from pipeline.progress import progress_bar
from tokenizer.bpe import BPETokenizer
from training.config import DeepSpeedConfig, TrainConfig
from training.engine import build_engine
from training.model import GPT

log = logging.getLogger(__name__)

WEIGHT_DECAY, GRAD_CLIP = 0.01, 1.0  # as in pretraining


class Encoded:
    """A task split, tokenized once: each example's row (`eval.transforms.row`) and label."""

    def __init__(self, task: Task, examples: list[Example], tok: BPETokenizer, max_len: int):
        self.rows = [row(encode(e, task.kind, tok, max_len)) for e in examples]
        self.labels = [e.label for e in examples]
        self.pad, self.regression = tok.specials.pad, is_regression(task)

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        """Each example's row length: what its batch is padded to."""
        return np.array([r.fields.shape[1] for r in self.rows])

    def batches(self, indices: list[int] | np.ndarray, size: int) -> Iterator[Batch]:
        for at in range(0, len(indices), size):
            chunk = indices[at : at + size]
            yield collate_rows([self.rows[i] for i in chunk], [self.labels[i] for i in chunk], self.pad,
                               self.regression)  # fmt: skip

    def subset(self, indices: list[int] | np.ndarray) -> Encoded:
        part = copy.copy(self)
        part.rows, part.labels = [self.rows[i] for i in indices], [self.labels[i] for i in indices]
        return part


def is_regression(task: Task) -> bool:
    return task.kind != "multiple_choice" and not task.labels


def train_config(cfg: EvalConfig, steps: int) -> TrainConfig:
    """The fine-tuning recipe as a training config for the shared engine."""
    return TrainConfig(global_batch=cfg.batch_size, micro_batch=cfg.micro_batch, epochs=cfg.epochs, lr=cfg.lr,
                       min_lr=0.0, warmup_steps=math.ceil(cfg.warmup_fraction * steps), decay="linear",
                       weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP, precision=cfg.precision)  # fmt: skip


def epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, buckets: int) -> np.ndarray:
    """The examples of one epoch, in whole batches: a permutation seeded by (seed, epoch), cut into
    chunks of `buckets` batches, each chunk sorted by length and cut into batches, and the batches
    shuffled. Batches then hold examples of about one length, so little of each is padding, and the
    order is still random and reproducible from the seed. `buckets` 0 keeps the permutation as it is."""
    rng = np.random.default_rng([seed, epoch + 1])
    order = rng.permutation(len(lengths))[: len(lengths) // batch_size * batch_size]
    if not buckets:
        return order
    chunk = buckets * batch_size
    order = np.concatenate([part[np.argsort(lengths[part], kind="stable")]
                            for part in np.split(order, range(chunk, len(order), chunk))])  # fmt: skip
    batches = order.reshape(-1, batch_size)
    return batches[rng.permutation(len(batches))].reshape(-1)


@torch.inference_mode()
def score(engine: torch.nn.Module, data: Encoded, task: Task, batch_size: int,
          device: torch.device) -> dict[str, float]:  # fmt: skip
    """Every metric of the task on `data`, from the model as it is now: in batches of examples of
    about one length (sorted), put back in order for the metrics."""
    engine.eval()
    order = np.argsort(data.lengths(), kind="stable")
    preds = torch.empty(len(data), dtype=torch.float if data.regression else torch.long)
    for at, batch in zip(range(0, len(order), batch_size), data.batches(order, batch_size)):
        out = engine(*batch.to(device).inputs())
        preds[order[at : at + batch_size]] = predictions(out.scores, data.regression).cpu()
    engine.train()
    return {m: METRICS[m](preds.numpy(), np.asarray(data.labels)) for m in (task.metric, *task.extra_metrics)}


def finetune(task: Task, gpt: GPT, train: Encoded, evals: dict[str, Encoded], cfg: EvalConfig, seed: int,
             lm_coef: float, device: torch.device) -> dict[str, dict[str, float]]:  # fmt: skip
    """Fine-tune `gpt` (modified in place) on `train`; the scores on each of `evals`."""
    rng = np.random.default_rng([seed, 0])
    held_out = None
    if cfg.validation_fraction:
        order = rng.permutation(len(train))
        cut = int(len(train) * cfg.validation_fraction)
        held_out, train = train.subset(order[:cut]), train.subset(order[cut:])
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise TaskDataError(f"{task.name}: {len(train)} training examples are fewer than one batch ({cfg.batch_size})")
    total = steps_per_epoch * cfg.epochs
    torch.manual_seed(seed)
    model = TaskModel(gpt, task.kind, task.n_outputs, cfg.clf_dropout)
    engine = build_engine(model, train_config(cfg, total), DeepSpeedConfig(zero_stage=0), device, 1, total)
    best: tuple[float, dict] | None = None
    accumulation = cfg.batch_size // cfg.micro_batch
    lengths = train.lengths()
    with progress_bar() as progress:
        bar = progress.add_task(f"fine-tune {task.name} (seed {seed})", total=total)
        for epoch in range(cfg.epochs):
            order = epoch_order(lengths, cfg.batch_size, seed, epoch, cfg.length_buckets)
            for batch in train.batches(order, cfg.micro_batch):
                batch = batch.to(device)
                out = engine(*batch.inputs(lm=bool(lm_coef)))
                engine.backward(loss(out, batch, train.regression, lm_coef))
                engine.step()  # the optimizer steps once per batch_size / micro_batch micro-batches
                progress.advance(bar, 1 / accumulation)
            if held_out is not None:
                value = score(engine, held_out, task, cfg.score_batch, device)[task.metric]
                log.info("%s seed %d epoch %d: validation %s %.2f", task.name, seed, epoch + 1, task.metric, value)
                if best is None or value > best[0]:
                    best = (value, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best is not None:
        model.load_state_dict(best[1])
    return {name: score(engine, data, task, cfg.score_batch, device) for name, data in evals.items()}
