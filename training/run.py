"""One pretraining process: `python -m training.run OUT/job.json`, started once per rank by a launcher
(`deepspeed`, `srun`, Ray Train). Needs torch, deepspeed, numpy and pydantic; never Ray or the CLI.

A run resumes from `OUT/checkpoints/latest` whenever there is one: the model, optimizer, LR
schedule, sampler position and RNG come back, so the loss curve continues exactly (bit for bit on
CPU) where it stopped. On another number of processes it continues too, with the same global
batch (accumulation recomputed), learning rate and next batch (see `training.checkpoint`). When the
last step is already done it only writes `result.json`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from pipeline.log import setup_logging
from pipeline.progress import progress_bar
from pipeline.runner import write_json_atomic
from training import checkpoint
from training.config import PREEMPTED, TrainConfig, TrainJob
from training.data import Sampler, TokenWindows
from training.engine import build_engine, wrap
from training.metrics import Metrics, memory_gb, peak_flops, read_metrics
from training.model import GPT, lm_loss, perplexity

log = logging.getLogger("gpt1.train")

RESULT = "result.json"


# How long a rank waits in a collective for the others before giving up: a backstop, since the
# launchers (deepspeed, srun --kill-on-bad-exit, Ray Train) stop every rank as soon as one fails.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class Preempted(Exception):
    """The run stopped early on request, with a checkpoint of where it was."""


class StopRequest:
    """SIGTERM or SIGUSR1 (a scheduler's warning before the time limit) asks the run to stop after a
    checkpoint. Ranks agree through a one-number all-reduce per step, so they all stop at the same
    step, whichever of them got the signal. It goes over gloo on the host, never through the GPU,
    and is started after one step and read after the next, so it neither syncs the device nor
    waits for the network: the run stops one step after the step in progress."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.signal: int | None = None
        self.group = group
        self._pending: tuple[dist.Work, torch.Tensor] | None = None
        if threading.current_thread() is threading.main_thread():  # Ray Train runs us in a thread
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def agreed(self) -> bool:
        """Whether any rank had been asked to stop when the previous step ended."""
        asked = self.close()
        flag = torch.tensor([float(self.signal is not None)])
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flag)
        return asked

    def close(self) -> bool:
        """Finish the all-reduce in flight (every rank has one, after the same step); its answer."""
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        work.wait()
        return bool(flag.item())


def host_group() -> dist.ProcessGroup | None:
    """A gloo group over every rank for small host-side agreements; None when the default group is
    gloo already (CPU runs)."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def total_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    steps = math.ceil(train.epochs * steps_per_epoch)
    return min(steps, train.max_steps) if train.max_steps else steps


def free_port() -> int:
    """A TCP port nothing listens on now, for a rendezvous on this host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process() -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPU) from the launcher's environment."""
    import deepspeed

    _from_slurm()
    if "WORLD_SIZE" not in os.environ:  # one process, started directly: a private rendezvous
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))  # fmt: skip
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        _skip_shared_memory_op()
        keep_freed_memory()
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return device


def exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's last garbage collections: they walk every object torch and
    DeepSpeed made, about 1 s in each process of every launch, after the files and the process
    group are closed and nothing is left that needs collecting."""
    gc.freeze()
    sys.exit(code)


def leave_process_group() -> None:
    """Leave the group before the interpreter exits: a gloo group still alive at exit can abort the
    process ("terminate called without an active exception") after its work is done."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _skip_shared_memory_op() -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce op when it joins the group (about 35 s
    on each new machine or environment) and maps a 69 MB /dev/shm buffer per rank that it never
    removes. The op serves only DeepSpeed's inference all-reduce: training's collectives go through
    torch.distributed (gloo), so training never builds it."""
    import importlib

    comm = importlib.import_module("deepspeed.comm.torch")  # the attribute deepspeed.comm.torch is torch itself
    comm.build_shm_op = lambda: None


# glibc's mallopt options, and the largest mmap threshold it accepts on 64-bit.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


def keep_freed_memory() -> None:
    """Have glibc keep the memory a CPU step frees for the steps after it. By default it gives blocks
    above its mmap threshold (128 KB, raised to the largest block freed so far) back to the OS and
    trims the heap's top, so activations whose size changes with every batch are faulted in again,
    4 KB at a time: 700k page faults in two epochs of the demo's `proxy_order` on 2 cores, 180k with
    blocks of up to 32 MB kept in the heap, system time halved and a median 10% off a whole
    `proxy_order` fine-tune (five interleaved pairs of processes; `proxy_shuffle`'s smaller tensors
    within the noise). A process then holds its peak heap, which training reaches every step anyway."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def _from_slurm() -> None:
    """Under `srun` (no launcher), torch's variables come from SLURM's."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:
        os.environ.update(RANK=os.environ["SLURM_PROCID"], LOCAL_RANK=os.environ["SLURM_LOCALID"],
                          WORLD_SIZE=os.environ["SLURM_NTASKS"])  # fmt: skip


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on the device; to a GPU through pinned memory, so the copy does not wait for the
    kernels already queued."""
    return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch


def train_step(engine: Any, windows: TokenWindows, indices: list[int], micro: int,
               device: torch.device) -> torch.Tensor:  # fmt: skip
    """One optimizer step over this rank's share of the global batch; returns its mean loss."""
    losses = []
    for at in range(0, len(indices), micro):
        x, y = (to_device(t, device) for t in windows.batch(indices[at : at + micro]))
        loss = lm_loss(engine(x).logits, y)
        engine.backward(loss)
        engine.step()  # DeepSpeed steps the optimizer and schedule at the accumulation boundary
        losses.append(loss.detach())
    return torch.stack(losses).mean()


@torch.no_grad()
def evaluate(engine: Any, windows: TokenWindows, train: TrainConfig, device: torch.device) -> float:
    """Mean loss over the first eval_batches × micro_batch validation windows, split over the ranks:
    the same windows on any number of processes (rounded down to a multiple of it)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n = min(len(windows), train.eval_batches * train.micro_batch) // world * world
    mine = list(range(rank, n, world))  # the same count on every rank, so ZeRO-3 gathers stay in step
    total = torch.zeros(2, dtype=torch.float64, device=device)
    engine.eval()
    for at in range(0, len(mine), train.micro_batch):
        x, y = (to_device(t, device) for t in windows.batch(mine[at : at + train.micro_batch]))
        total[0] += lm_loss(engine(x).logits, y).double() * len(x)
        total[1] += len(x)
    engine.train()
    dist.all_reduce(total)
    return (total[0] / total[1]).item() if total[1] else float("nan")


def gathered(indices: list[int]) -> list[int]:
    """Every rank's windows of this step, in rank order: the step's global batch."""
    parts: list[list[int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, indices)
    return [i for part in parts for i in part]


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def train(job: TrainJob) -> dict[str, Any]:
    device = init_process()
    rank, world = dist.get_rank(), dist.get_world_size()
    job.out.mkdir(parents=True, exist_ok=True)
    data = TokenWindows(job.shards, "train")
    val = TokenWindows(job.shards, "val")
    sampler = Sampler(len(data), job.train.global_batch, job.seed, rank, world)
    steps = total_steps(job.train, sampler.steps_per_epoch)
    torch.manual_seed(job.seed)  # the same initial weights on every rank
    model = wrap(GPT(job.model), job.train)
    engine = build_engine(model, job.train, job.deepspeed, device, world, steps)

    step, tokens = 0, 0
    found = checkpoint.latest(job.out / "checkpoints")
    if found:
        record = checkpoint.resume(engine, model, found)
        step, tokens = record["step"], record["tokens"]
        sampler.load_state_dict(record["sampler"])
        log.info("resumed from %s (step %d of %d)", found, step, steps)
    else:
        torch.manual_seed(job.seed + rank)  # dropout differs between ranks
    metrics = Metrics(job.out, step, enabled=rank == 0)
    stop = StopRequest(host_group())
    step_tokens = job.train.global_batch * data.seq_len
    flops, peak = model.flops_per_token(data.seq_len), peak_flops(device)
    plan = {"world_size": world, "micro_batch": job.train.micro_batch,
            "accumulation": engine.gradient_accumulation_steps(), "global_batch": job.train.global_batch,
            "tokens_per_step": step_tokens, "steps": steps, "tokens": steps * step_tokens,
            "epochs": steps / sampler.steps_per_epoch, "start_step": step}  # fmt: skip
    metrics.write("run", step, plan)
    log.info("%d %s process(es): %d sequences × %d accumulation × %d processes = %d sequences (%s tokens) per step; "
             "%s steps (%.2f epochs), %s tokens%s", world, device.type, plan["micro_batch"], plan["accumulation"],
             world, plan["global_batch"], f"{step_tokens:,}", f"{steps:,}", plan["epochs"], f"{plan['tokens']:,}",
             f", from step {step:,}" if step else "")  # fmt: skip
    estimated = False

    with progress_bar() as progress:
        bar = progress.add_task("train", total=steps, completed=step, visible=rank == 0)
        since, since_step = time.perf_counter(), step
        while step < steps:
            lr, indices = engine.get_lr()[0], sampler.next_batch()
            if job.train.record_windows:
                metrics.write("windows", step + 1, {"windows": gathered(indices)})
            loss = train_step(engine, data, indices, job.train.micro_batch, device)
            step, tokens = step + 1, tokens + step_tokens
            progress.advance(bar)
            last = step == steps
            if step % job.train.log_every == 0 or last:
                mean_loss = mean_over_ranks(loss)
                seconds = time.perf_counter() - since
                rate = step_tokens * (step - since_step) / seconds
                grad_norm = engine.get_global_grad_norm()
                seconds_left = (steps - step) * step_tokens / rate
                metrics.write("train", step, {
                    "loss": mean_loss, "lr": lr, "tokens": tokens, "tokens_per_s": rate,
                    "grad_norm": None if grad_norm is None else float(grad_norm),
                    "mfu": rate * flops / (peak * world) if peak else None, "memory_gb": memory_gb(device),
                    "eta_s": seconds_left,
                })  # fmt: skip
                progress.update(bar, description=f"train loss {mean_loss:.3f}, {rate:,.0f} tokens/s")
                if not estimated:
                    log.info("at %s tokens/s, about %s to go", f"{rate:,.0f}", _duration(seconds_left))
                    estimated = True
                since, since_step = time.perf_counter(), step
            if step % job.train.eval_every == 0 or last:
                val_loss = evaluate(engine, val, job.train, device)
                metrics.write("val", step, {"loss": val_loss, "perplexity": perplexity(val_loss)})
                log.info("step %d/%d: val loss %.4f, perplexity %.2f", step, steps, val_loss, perplexity(val_loss))
            stopping = not last and stop.agreed()
            if step % job.train.checkpoint_every == 0 or last or stopping:
                folder = checkpoint.save(engine, model, job, step, {"tokens": tokens, "sampler": sampler.state_dict()})
                log.info("step %d/%d: saved %s", step, steps, folder)
            if stopping:
                stop.close()
                metrics.close()
                log.warning("stopped by a signal at step %d of %d, checkpoint saved; start again to continue",
                            step, steps)  # fmt: skip
                raise Preempted
            if step % job.train.eval_every == 0 or step % job.train.checkpoint_every == 0:
                since, since_step = time.perf_counter(), step  # evaluating and saving are not training time
    stop.close()
    metrics.close()
    result = summarize(job.out)
    if rank == 0:
        write_json_atomic(job.out / RESULT, result)
    dist.barrier()
    return result


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def summarize(out: Path) -> dict[str, Any]:
    """What a finished run reports: steps, tokens, final losses, mean throughput, final checkpoint."""
    records = read_metrics(out)
    trained = [r for r in records if r["split"] == "train"]
    evaluated = [r for r in records if r["split"] == "val"]
    final = checkpoint.latest(out / "checkpoints")
    return {
        "steps": trained[-1]["step"] if trained else 0,
        "tokens": trained[-1]["tokens"] if trained else 0,
        "train_loss": trained[-1]["loss"] if trained else None,
        "val_loss": evaluated[-1]["loss"] if evaluated else None,
        "val_perplexity": evaluated[-1]["perplexity"] if evaluated else None,
        "tokens_per_s": sum(r["tokens_per_s"] for r in trained) / len(trained) if trained else None,
        "checkpoint": str(final.relative_to(out)) if final else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _from_slurm()
    setup_logging(1 if os.environ.get("GPT1_DEBUG") else 0)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)  # DeepSpeed's call
    if len(args) != 1:
        log.error("usage: python -m training.run JOB.json")
        return 2
    try:
        job = TrainJob.model_validate_json(Path(args[0]).read_text())
        train(job)
        leave_process_group()
    except Preempted:
        return PREEMPTED
    except (OSError, ValueError) as e:  # a bad job, missing shards or checkpoint, impossible batch
        log.error("error: %s", str(e).replace("\n", "; "))
        log.debug("traceback", exc_info=True)
        return 2
    except Exception as e:  # one line here; the launcher stops the other ranks
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        log.error("rank %s failed: %s: %s (GPT1_DEBUG=1 shows the traceback)", os.environ.get("RANK", "0"),
                  type(e).__name__, message)  # fmt: skip
        log.debug("traceback", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    exit_now(main())
