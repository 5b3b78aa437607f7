"""The LM loss read straight from hidden states, a chunk of tokens at a time, with its gradient
taken in the same pass.

`lm_loss(hidden @ weight.T, ...)` makes the (N, V) logits and their log-probabilities, then in
backward a zero (N, V) tensor for the targets and the softmax's gradient: passes over tensors
that, for a few thousand tokens and a vocabulary of thousands, outgrow the CPU's caches. Here each
chunk of tokens is projected and its softmax taken while it is still in cache: the loss is minus
the log of each target's probability, and since the loss is a sum over tokens, its gradient with
respect to the logits is the softmax minus the target, times the token's share of the mean. The
two gradient products follow at once; backward only scales what forward kept, (N, C) and (V, C),
never (N, V). Same value and gradients as `training.model.lm_loss`, to float rounding, but for a
target given a probability under 1e-38 (a logit 87 below the rest): it counts 87 nats, not more;
its gradient is still exact.

On 2 CPU cores this takes 9-19% off a fine-tuning step with the auxiliary loss (the debug model,
a 2,158-id vocabulary; `proxy_shuffle` and `proxy_order`, interleaved runs), and the softmax in
place of log-softmax then exp (one exponential an element, not two) a median 7% more of a
`proxy_order` epoch (1-16% in five interleaved pairs). What is left is mostly the three matrix
products.
"""

from __future__ import annotations

import torch

# On CPU a chunk's fp32 logits take about a core's L2 cache (1 MB here), and at least MIN_ROWS
# tokens: fewer make the products slower than the cache saves (measured 64-512 rows a chunk, and
# all). On a GPU chunks only bound memory: 256 MB of logits, 1,600 tokens of a 40k vocabulary.
CHUNK_BYTES = 1 << 20
GPU_CHUNK_BYTES = 1 << 28
MIN_ROWS = 128
TINY = torch.finfo(torch.float).tiny  # a probability's floor: exp(-87.3)


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Weighted mean next-token cross-entropy of `hidden` (N, C) projected by `weight` (V, C): each
    target (N,), all >= 0, counts `weights` (N,) times."""
    budget = CHUNK_BYTES if hidden.device.type == "cpu" else GPU_CHUNK_BYTES
    rows = max(MIN_ROWS, budget // (4 * weight.size(0)))
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedLMLoss.apply(hidden, weight, targets, weights.float(), rows, grads)


class _ChunkedLMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, rows: int, grads: bool):
        # fp16's range would flush to zero the small gradients DeepSpeed's loss scale is there to
        # keep: the products take fp32 then. bf16 has fp32's range, so they stay in bf16.
        dtype = torch.float if hidden.dtype == torch.float16 else hidden.dtype
        scale = (weights / weights.sum())[:, None]  # (N, 1): each token's share of the mean
        total = hidden.new_zeros((), dtype=torch.float)
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if grads else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float, device=weight.device) if grads else None
        w = weight.to(dtype)
        for at in range(0, hidden.size(0), rows):
            h, t, s = hidden[at : at + rows].to(dtype), targets[at : at + rows, None], scale[at : at + rows]
            probs = torch.softmax((h @ w.T).float(), dim=-1)  # (rows, V)
            total -= (probs.gather(1, t).clamp_(min=TINY).log_() * s).sum()
            if grads:
                # d loss / d logits is (softmax - one-hot) · s: s scales the (rows, C) sides instead.
                g = probs.scatter_add_(1, t, torch.full_like(s, -1.0)).to(dtype)
                torch.mul(g @ w, s, out=grad_hidden[at : at + rows])
                grad_weight += g.T @ (h * s.to(dtype))  # summed over chunks in fp32
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        grad_hidden, grad_weight = ctx.saved_tensors
        dtype_hidden, dtype_weight = ctx.dtypes
        return (grad_hidden * grad).to(dtype_hidden), (grad_weight * grad).to(dtype_weight), None, None, None, None
