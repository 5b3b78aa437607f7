"""Training step throughput: our DeepSpeed engine against a bare PyTorch loop, same model and batch.

    python -m bench.train [--preset gpt1] [--seq-len 512] [--micro-batch 16] [--steps 20] [--zero 1]

Both loops train the same freshly initialised GPT-1 on the same random token batch in this one
process: the baseline is plain PyTorch (AdamW, fused on GPU; bf16 autocast on GPU; clip 1.0);
ours is `training.engine.build_engine` (DeepSpeed, ZeRO stage `--zero`, the precision our config
resolves: bf16 on GPU, fp32 on CPU). Each step is timed in three parts (forward, backward,
optimizer) after warm-up steps, with the device synchronised between parts, then as a whole
without the mid-step synchronisations. Prints tokens/s of each, the ratio ours/bare, and on a GPU
the MFU: (6 N + attention) FLOPs per token × tokens/s over the device's dense bf16 peak.
Defaults: GPT-1 at context 512 on a GPU, the `mini` preset at context 128 on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from training.config import DeepSpeedConfig, ModelConfig, TrainConfig
from training.engine import build_engine, param_groups, wrap
from training.metrics import peak_flops
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
    engine = build_engine(wrap(GPT(cfg), train), train, ds, device, world_size=1, total_steps=10_000)
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        state["loss"] = lm_loss(engine(x).logits, y)

    def backward() -> None:
        engine.backward(state.pop("loss"))

    def optimizer() -> None:
        engine.step()

    return {"forward": forward, "backward": backward, "optimizer": optimizer}


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt1" if gpu else "mini")
    parser.add_argument("--seq-len", type=int, default=512 if gpu else 128)
    parser.add_argument("--micro-batch", type=int, default=16 if gpu else 8)
    parser.add_argument("--steps", type=int, default=20 if gpu else 5)
    parser.add_argument("--warmup", type=int, default=5 if gpu else 2)
    parser.add_argument("--zero", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()

    device = init_process()
    cfg = ModelConfig(preset=args.preset, vocab_size=VOCAB, n_positions=max(args.seq_len, 512))
    train = TrainConfig(global_batch=args.micro_batch, micro_batch=args.micro_batch, lr=1e-4, warmup_steps=0,
                        compile=args.compile)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, VOCAB, (args.micro_batch, args.seq_len + 1), generator=generator).to(device)
    x, y = batch[:, :-1], batch[:, 1:]
    tokens = args.micro_batch * args.seq_len

    bare = bare_loop(cfg, args.compile, x, y, device)
    results = {"bare PyTorch": timed(bare, device, args.steps, args.warmup)}
    del bare
    ours = engine_loop(cfg, train, DeepSpeedConfig(zero_stage=args.zero), x, y, device)
    results["ours (DeepSpeed)"] = timed(ours, device, args.steps, args.warmup)

    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    model = GPT(cfg)
    flops, peak = model.flops_per_token(args.seq_len), peak_flops(device)
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: {args.preset}, {model.num_params():,} parameters, context {args.seq_len}, micro-batch "
          f"{args.micro_batch} ({tokens:,} tokens), ZeRO {args.zero}, median of {args.steps} steps")  # fmt: skip
    print(f"{'loop':<18}{'forward ms':>12}{'backward ms':>13}{'optimizer ms':>14}{'step ms':>10}{'tokens/s':>12}"
          f"{'MFU':>8}")  # fmt: skip
    rates = {}
    for label, t in results.items():
        rates[label] = tokens / t["step"]
        mfu = f"{rates[label] * flops / peak:.1%}" if peak else "-"
        print(f"{label:<18}{t['forward'] * 1e3:>12.1f}{t['backward'] * 1e3:>13.1f}{t['optimizer'] * 1e3:>14.1f}"
              f"{t['step'] * 1e3:>10.1f}{rates[label]:>12,.0f}{mfu:>8}")  # fmt: skip
    print(f"ratio ours / bare: {rates['ours (DeepSpeed)'] / rates['bare PyTorch']:.3f}")


if __name__ == "__main__":
    main()
