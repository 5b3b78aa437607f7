"""The chunked LM loss: the value and gradients of the loss over the whole logits."""

from __future__ import annotations

import math

import pytest
import torch

import training.loss
from training.loss import chunked_lm_loss
from training.model import lm_loss


def case(dtype: torch.dtype = torch.float) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 16, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(50, 16, generator=g) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (300,), generator=g)
    weights = torch.randint(1, 4, (300,), generator=g).float()  # a token shared by several sequences counts more
    return hidden, weight, targets, weights


@pytest.fixture
def small_chunks(monkeypatch):
    """64 rows a chunk, so 300 tokens take five, the last a partial one."""
    monkeypatch.setattr(training.loss, "MIN_ROWS", 64)
    monkeypatch.setattr(training.loss, "CHUNK_BYTES", 64 * 4 * 50)


def test_chunked_lm_loss_has_the_value_and_gradients_of_the_loss_over_all_logits(small_chunks):
    hidden, weight, targets, weights = case()
    (3 * lm_loss(hidden @ weight.T, targets, weights)).backward()  # a scaled loss, as DeepSpeed's fp16 scaler does
    expected = lm_loss(hidden @ weight.T, targets, weights).item(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss = chunked_lm_loss(hidden, weight, targets, weights)
    (3 * loss).backward()
    assert loss.item() == pytest.approx(expected[0], rel=1e-6)
    torch.testing.assert_close(hidden.grad, expected[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, expected[2], rtol=1e-5, atol=1e-7)


def test_chunked_lm_loss_takes_no_gradients_where_none_are_wanted(small_chunks):
    hidden, weight, targets, weights = case()
    with torch.no_grad():
        loss = chunked_lm_loss(hidden, weight, targets, weights)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(lm_loss(hidden @ weight.T, targets, weights).item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_lm_loss_in_half_precision_gives_gradients_of_the_inputs_dtype(small_chunks, dtype):
    hidden, weight, targets, weights = case(dtype)
    reference = [t.detach().float().requires_grad_() for t in (hidden, weight)]
    lm_loss(reference[0] @ reference[1].T, targets, weights).backward()
    loss = chunked_lm_loss(hidden, weight, targets, weights)
    loss.backward()
    assert loss.dtype == torch.float and hidden.grad.dtype == weight.grad.dtype == dtype
    assert loss.item() == pytest.approx(lm_loss((reference[0] @ reference[1].T).detach(), targets, weights).item(),
                                        rel=1e-2)  # fmt: skip
    for grad, exact in zip((hidden.grad, weight.grad), reference):
        torch.testing.assert_close(grad.float(), exact.grad, rtol=0.05, atol=2e-4)


def test_a_target_far_below_the_rest_counts_87_nats_with_its_exact_gradient():
    """A logit 200 below another gives the target probability e^-200, under float's range: its loss
    is floored at -log(1e-38), and its gradient (softmax minus one-hot) is that of the full loss."""
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    weight = torch.tensor([[200.0, 0.0], [0.0, 0.0], [0.0, 3.0]], requires_grad=True)
    targets, weights = torch.tensor([1, 2]), torch.ones(2)
    lm_loss(hidden @ weight.T, targets, weights).backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss = chunked_lm_loss(hidden, weight, targets, weights)
    loss.backward()
    second = -torch.log_softmax(torch.tensor([0.0, 0.0, 3.0]), 0)[2]  # the other token's loss, in range
    assert loss.item() == pytest.approx((-math.log(torch.finfo(torch.float).tiny) + second.item()) / 2, rel=1e-6)
    torch.testing.assert_close((hidden.grad, weight.grad), expected)
