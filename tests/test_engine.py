"""DeepSpeed config, optimizer groups and learning-rate schedule built from our typed config."""

from __future__ import annotations

import pytest
import torch

from training.checkpoint import WRAPPED, full_weights
from training.config import DeepSpeedConfig, ModelConfig, TrainConfig
from training.engine import (
    accumulation_steps,
    build_engine,
    deepspeed_config,
    lr_schedule,
    param_groups,
    resolve_precision,
    wrap,
)
from training.model import GPT, lm_loss


def test_accumulation_makes_up_the_global_batch_on_any_world_size():
    train = TrainConfig(global_batch=64, micro_batch=8)
    assert [accumulation_steps(train, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ValueError, match=r"not a multiple of train.micro_batch \(8\) × 3 processes"):
        accumulation_steps(train, 3)


def test_deepspeed_config_holds_our_fields_and_passes_extra_keys_through():
    train = TrainConfig(global_batch=64, micro_batch=16, grad_clip=1.0)
    extra = {"zero_optimization": {"reduce_bucket_size": 123}, "comms_logger": {"enabled": True}}
    config = deepspeed_config(train, DeepSpeedConfig(zero_stage=2, extra=extra), world_size=2, precision="bf16")
    assert config["train_batch_size"] == 64 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"]["stage"] == 2 and config["zero_optimization"]["reduce_bucket_size"] == 123
    assert config["comms_logger"] == {"enabled": True}
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_gradients_accumulate_in_fp32_under_zero(stage):
    config = deepspeed_config(TrainConfig(global_batch=64, micro_batch=8), DeepSpeedConfig(zero_stage=stage), 2, "bf16")
    assert config["data_types"] == {"grad_accum_dtype": "fp32"}
    for precision in ("fp32", "fp16"):
        assert "data_types" not in deepspeed_config(TrainConfig(), DeepSpeedConfig(zero_stage=stage), 1, precision)


def test_bf16_without_zero_warns_that_accumulation_stays_in_bf16(caplog):
    """DeepSpeed 0.19 refuses fp32 accumulation without ZeRO ("unsupported mix"), so it is not set."""
    ds = DeepSpeedConfig(zero_stage=0)
    assert "data_types" not in deepspeed_config(TrainConfig(global_batch=64, micro_batch=64), ds, 1, "bf16")
    assert not caplog.records
    assert "data_types" not in deepspeed_config(TrainConfig(global_batch=64, micro_batch=8), ds, 1, "bf16")
    assert "accumulates gradients in bf16 over 8 micro-batches" in caplog.text


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_reduces_during_backward_in_buckets_smaller_than_gpt1(stage):
    zero = deepspeed_config(TrainConfig(), DeepSpeedConfig(zero_stage=stage), 1, "fp32")["zero_optimization"]
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] < 116_534_784 / 2  # GPT-1's parameters
    assert deepspeed_config(TrainConfig(), DeepSpeedConfig(zero_stage=0), 1, "fp32")["zero_optimization"] == {
        "stage": 0}  # fmt: skip


def test_extra_keys_may_not_override_fields_we_own():
    ds = DeepSpeedConfig(extra={"train_batch_size": 32, "zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match=r"train_batch_size, zero_optimization\.stage"):
        deepspeed_config(TrainConfig(), ds, 1, "fp32")


def test_adamw_clips_at_zero_0_in_fp32_and_the_engine_reports_the_norm():
    """There DeepSpeed's clipping is off and our AdamW clips: one step through the engine moves the
    weights as clipping by hand then AdamW does, and the engine reports the norm before clipping."""
    from training.run import init_process

    device = init_process()
    train = TrainConfig(global_batch=4, micro_batch=4, lr=1e-2, warmup_steps=1, grad_clip=0.1)
    clipping = {(stage, precision): deepspeed_config(train, DeepSpeedConfig(zero_stage=stage), 1, precision)[
        "gradient_clipping"] for stage in (0, 1) for precision in ("fp32", "bf16")}  # fmt: skip
    assert clipping == {(0, "fp32"): 0.0, (0, "bf16"): 0.1, (1, "fp32"): 0.1, (1, "bf16"): 0.1}
    torch.manual_seed(0)
    cfg = ModelConfig(preset="debug", vocab_size=50, n_positions=16, dropout=0.0)
    model, by_hand = GPT(cfg), GPT(cfg)
    by_hand.load_state_dict(model.state_dict())
    engine = build_engine(model, train, DeepSpeedConfig(zero_stage=0), device, 1, 10)
    reference = torch.optim.AdamW(param_groups(by_hand, train.weight_decay), lr=train.lr, betas=train.betas)
    tokens = torch.randint(0, 50, (4, 16))
    targets = torch.cat([tokens[:, 1:], torch.full((4, 1), -1)], dim=1)
    engine.backward(lm_loss(engine(tokens).logits, targets))
    lm_loss(by_hand(tokens).logits, targets).backward()
    norm = torch.nn.utils.clip_grad_norm_(by_hand.parameters(), train.grad_clip)
    assert norm > train.grad_clip  # so that clipping changes the step
    engine.step()
    reference.step()
    assert float(engine.get_global_grad_norm()) == pytest.approx(norm.item(), rel=1e-5)
    for ours, theirs in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_weight_decay_skips_biases_and_gains():
    model = GPT(ModelConfig(preset="debug", vocab_size=50, n_positions=16))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.tokens_embed.weight for p in decay["params"])


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    train = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    factor = lr_schedule(train, total_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 110))


def test_linear_decay_falls_in_a_straight_line_to_zero():
    factor = lr_schedule(TrainConfig(lr=6.25e-5, warmup_steps=2, decay="linear"), total_steps=102)
    assert [factor(s) for s in (0, 1, 2, 52, 102)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])


def test_half_precision_on_cpu_falls_back_to_fp32():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "fp32"


def test_activation_checkpointing_keeps_names_and_gradients():
    cfg = ModelConfig(preset="debug", vocab_size=97, dropout=0.0)
    torch.manual_seed(0)
    plain = GPT(cfg)
    wrapped = wrap(GPT(cfg), TrainConfig(activation_checkpointing=True))
    wrapped.load_state_dict(plain.state_dict())
    assert any(WRAPPED in name for name, _ in wrapped.named_parameters())
    assert full_weights(wrapped).keys() == plain.state_dict().keys()
    x = torch.randint(0, 97, (2, 16))
    for model in (plain, wrapped):
        lm_loss(model(x[:, :-1]).logits, x[:, 1:]).backward()
    grads = {name.replace(WRAPPED, ""): p.grad for name, p in wrapped.named_parameters()}
    for name, p in plain.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-6), name


def test_compile_keeps_parameter_names():
    cfg = ModelConfig(preset="debug", vocab_size=97)
    names = list(GPT(cfg).state_dict())
    assert list(wrap(GPT(cfg), TrainConfig(compile=True)).state_dict()) == names
