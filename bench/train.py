"""Training step throughput: our DeepSpeed engine against a bare PyTorch loop, same model and batch.

    python -m bench.train [--preset gpt1] [--seq-len 512] [--micro-batch 16,32] [--zero 0,1,2] [--compile off,on]

Every combination of micro-batch, compile and ZeRO stage is measured, each against a bare loop
with the same micro-batch and compile setting. Both loops train the same freshly initialised GPT-1
on the same random token batch in this one
process: the baseline is plain PyTorch (AdamW, fused on GPU; bf16 autocast on GPU; clip 1.0);
ours is `training.engine.build_engine` (DeepSpeed, each ZeRO stage of `--zero`, the precision our
config resolves: bf16 on GPU, fp32 on CPU). Each step is timed in three parts (forward, backward,
optimizer) after warm-up steps, with the device synchronised between parts, then as a whole
without the mid-step synchronisations. Prints tokens/s of each, the ratio ours/bare, and on a GPU
the MFU: (6 N + attention) FLOPs per token × tokens/s over the device's dense bf16 peak, the host
synchronisations in one step (CUDA's sync debug mode) and the peak memory.
Defaults: GPT-1 at context 512 on a GPU, the `mini` preset at context 128 on CPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training.config import DeepSpeedConfig, ModelConfig, TrainConfig
from training.engine import build_engine, param_groups, wrap
from training.metrics import memory_gb, peak_flops
from training.model import GPT, lm_loss
from training.run import init_process

VOCAB = 40_478


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(parts: dict[str, Callable[[], None]], device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds of each part, and of a whole step run without synchronising between parts."""
    for _ in range(warmup):
        for part in parts.values():
            part()
    times: dict[str, list[float]] = {name: [] for name in [*parts, "step"]}
    for _ in range(steps):
        for name, part in parts.items():
            sync(device)
            t0 = time.perf_counter()
            part()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        for part in parts.values():
            part()
        sync(device)
        times["step"].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bare_loop(cfg: ModelConfig, compile_: bool, x: torch.Tensor, y: torch.Tensor,
              device: torch.device) -> dict[str, Callable]:  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    if compile_:
        model.compile()
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, fused=device.type == "cuda")
    if dist.get_world_size() > 1:  # PyTorch's own data parallelism: bucketed all-reduce during backward
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            state["loss"] = lm_loss(model(x).logits, y)

    def backward() -> None:
        state.pop("loss").backward()

    def optimizer() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"forward": forward, "backward": backward, "optimizer": optimizer}


def engine_loop(cfg: ModelConfig, train: TrainConfig, ds: DeepSpeedConfig, x: torch.Tensor, y: torch.Tensor,
                device: torch.device) -> dict[str, Callable]:  # fmt: skip
    torch.manual_seed(0)
    engine = build_engine(
        wrap(GPT(cfg), train), train, ds, device, world_size=dist.get_world_size(), total_steps=10_000
    )
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        state["loss"] = lm_loss(engine(x).logits, y)

    def backward() -> None:
        engine.backward(state.pop("loss"))

    def optimizer() -> None:
        engine.step()

    return {"forward": forward, "backward": backward, "optimizer": optimizer}


def counted_syncs(parts: dict[str, Callable[[], None]], device: torch.device) -> int | None:
    """Host synchronisations in one whole step (CUDA's sync debug mode counts them); None on CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for part in parts.values():
                part()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(parts: dict[str, Callable[[], None]], device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """Timings (see `timed`), host syncs per step and peak device memory of one loop."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result: dict[str, Any] = timed(parts, device, steps, warmup)
    result["syncs"] = counted_syncs(parts, device)
    result["memory_gb"] = memory_gb(device)
    return result


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def switches(text: str) -> list[bool]:
    values = {"off": False, "on": True}
    return [values[v] for v in text.split(",")]


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt1" if gpu else "mini")
    parser.add_argument("--seq-len", type=int, default=512 if gpu else 128)
    parser.add_argument("--micro-batch", type=ints, default=[16] if gpu else [8], help="comma-separated: 16,32")
    parser.add_argument("--steps", type=int, default=20 if gpu else 5)
    parser.add_argument("--warmup", type=int, default=5 if gpu else 2)
    parser.add_argument("--zero", type=ints, default=[1], help="ZeRO stages, comma-separated: 0,1,2")
    parser.add_argument("--compile", type=switches, default=[False], help="off, on or off,on: torch.compile both")
    args = parser.parse_args()

    device = init_process()
    world = dist.get_world_size()
    if dist.get_rank():  # every rank measures; rank 0 prints
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    cfg = ModelConfig(preset=args.preset, vocab_size=VOCAB, n_positions=max(args.seq_len, 512))
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    flops, peak = GPT(cfg).flops_per_token(args.seq_len), peak_flops(device)
    print(f"device: {name}; torch {torch.__version__}; deepspeed {metadata.version('deepspeed')}")
    print(f"model: {args.preset}, {GPT(cfg).num_params():,} parameters, context {args.seq_len}, "
          f"median of {args.steps} steps after {args.warmup} of warm-up; {world} process(es)")  # fmt: skip
    print(f"{'loop':<24}{'batch':>6}{'forward ms':>12}{'backward ms':>13}{'optimizer ms':>14}{'step ms':>10}"
          f"{'tok/s/proc':>12}{'MFU':>7}{'syncs':>7}{'mem GB':>8}{'vs bare':>9}")  # fmt: skip
    for micro in args.micro_batch:
        generator = torch.Generator().manual_seed(0)
        batch = torch.randint(0, VOCAB, (micro, args.seq_len + 1), generator=generator).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        tokens = micro * args.seq_len
        for compile_ in args.compile:
            bare_rate = None
            for zero in [None, *args.zero]:  # None: the bare loop, the baseline of the rows after it
                if zero is None:
                    label, parts = "bare PyTorch", bare_loop(cfg, compile_, x, y, device)
                else:
                    train = TrainConfig(global_batch=micro * world, micro_batch=micro, lr=1e-4, warmup_steps=0,
                                        compile=compile_)  # fmt: skip
                    label, parts = f"ours, ZeRO {zero}", engine_loop(cfg, train, DeepSpeedConfig(zero_stage=zero), x,
                                                                      y, device)  # fmt: skip
                t = measure(parts, device, args.steps, args.warmup)
                del parts
                release(device)
                rate = tokens / t["step"]
                bare_rate = bare_rate or rate
                mfu = f"{rate * flops / peak:.1%}" if peak else "-"
                syncs = "-" if t["syncs"] is None else str(t["syncs"])
                label = f"{label}{', compiled' if compile_ else ''}"
                print(f"{label:<24}{micro:>6}{t['forward'] * 1e3:>12.1f}{t['backward'] * 1e3:>13.1f}"
                      f"{t['optimizer'] * 1e3:>14.1f}{t['step'] * 1e3:>10.1f}{rate:>12,.0f}{mfu:>7}{syncs:>7}"
                      f"{t['memory_gb']:>8.2f}{rate / bare_rate:>9.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
