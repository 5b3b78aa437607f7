"""GPT-1: size, causality, initialisation, and agreement with `transformers`' implementation."""

from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig
from training.export import hf_config, hf_state_dict
from training.model import GPT, attend, dropout, lm_loss, segment_bias


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(preset="debug", vocab_size=101, n_positions=32, **overrides)


def test_gpt1_has_the_papers_parameter_count():
    with torch.device("meta"):
        model = GPT(ModelConfig(preset="gpt1", vocab_size=40_478))
    assert model.num_params() == 116_534_784  # transformers' openai-gpt


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 101, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 101
    before, after = model(idx).logits, model(changed).logits
    assert torch.allclose(before[:, :12], after[:, :12], atol=1e-6)
    assert not torch.allclose(before[:, 12:], after[:, 12:])


def test_future_tokens_do_not_change_past_logits_while_training_either():
    model = GPT(tiny(dropout=0.3)).train()  # CPU: attention through `attend`'s math path
    idx = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 101
    torch.manual_seed(1)
    before = model(idx).logits
    torch.manual_seed(1)  # the same dropout masks
    after = model(changed).logits
    assert torch.allclose(before[:, :12], after[:, :12], atol=1e-6)


def test_cpu_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales_it():
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.1)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.003)
    assert torch.allclose(y[kept], torch.tensor(1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where the element was kept, rescaled
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1), y)  # torch's generator decides: seeded, the same masks
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x


def test_attention_with_dropout_is_on_average_attention_without_it():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    exact = attend(q, k, v, None, 0.0)  # SDPA, causal
    mean = torch.stack([attend(q, k, v, None, 0.2) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, exact, atol=0.05)


@pytest.mark.parametrize("segmented", [False, True])
def test_cpu_attention_for_training_is_sdpa_where_dropout_keeps_every_weight(segmented):
    """The math path with masks drawn (p small enough that every weight is kept) against SDPA: causal,
    and with a segment bias (segment 0 shared, two more, padding -1)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 7, 8).unbind(0)
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, -1], [0, 1, 1, 1, 2, 2, 2]])
    bias = segment_bias(segments, q.dtype) if segmented else None
    torch.testing.assert_close(attend(q, k, v, bias, 1e-9), attend(q, k, v, bias, 0.0))


def test_weights_start_from_normal_0_02_and_biases_from_zero():
    torch.manual_seed(0)
    model = GPT(ModelConfig(preset="mini", vocab_size=1000))
    assert model.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.h[0].attn.c_attn.bias.abs().max().item() == 0
    assert model.h[0].ln_1.weight.eq(1).all()


def test_logits_match_transformers_openai_gpt_with_the_same_weights():
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    torch.manual_seed(0)
    cfg = tiny(n_layer=3, n_head=4)
    ours = GPT(cfg).eval()
    theirs = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**hf_config(cfg))).eval()
    missing, unexpected = theirs.load_state_dict(hf_state_dict(ours.state_dict()), strict=False)
    assert not unexpected and all(k == "lm_head.weight" or k.endswith(".attn.bias") for k in missing)
    theirs.tie_weights()
    idx = torch.randint(0, 101, (2, 32))
    out = ours(idx)
    hf = theirs(idx, output_hidden_states=True)
    assert torch.allclose(out.logits, hf.logits, atol=1e-5)
    assert torch.allclose(out.hidden, hf.hidden_states[-1], atol=1e-5)


def test_lm_loss_ignores_padding_and_starts_near_log_vocab():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 101, (4, 16))
    targets = idx.roll(-1, dims=1)
    loss = lm_loss(model(idx).logits, targets)
    assert abs(loss.item() - torch.log(torch.tensor(101.0)).item()) < 0.5
    padded = targets.clone()
    padded[:, 8:] = -1
    assert lm_loss(model(idx).logits, padded).isfinite()


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="vocab_size is not set"):
        GPT(ModelConfig(preset="debug"))
    with pytest.raises(ValueError, match="longer than the 32 positions"):
        GPT(tiny())(torch.zeros(1, 33, dtype=torch.long))
