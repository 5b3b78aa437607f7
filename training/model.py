"""GPT-1 (Radford et al., 2018) in plain PyTorch: the architecture only.

A decoder-only transformer: learned token and position embeddings, post-LayerNorm blocks
(x = LN(x + attention(x)); x = LN(x + MLP(x))), GELU (tanh form), dropout on embeddings,
attention weights and residual branches, weights drawn from N(0, 0.02), and an output projection
tied to the token embedding. No final LayerNorm. Parameter names follow `transformers`'
`OpenAIGPTModel`, so export is a rename-free transpose of the projection weights.

On CPU, dropout draws its masks 16 bits an element from 64-bit integers (`dropout`), and attention
with dropout runs as SDPA's own math path with those masks (`attend`): PyTorch's CPU dropout draws
every element on its own, at about 10 ns each, a quarter of the debug model's multiple-choice
fine-tuning step there; drawing in bulk takes 15% off that step.

`forward` returns the final hidden states and the LM logits; task heads (in `eval/`) read the
hidden states, the pretraining loss reads the logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig


class Output(NamedTuple):
    hidden: torch.Tensor  # (B, T, C) final hidden states
    logits: torch.Tensor | None  # (B, T, V) next-token logits; None when not asked for


class Dropout(nn.Dropout):
    """`nn.Dropout` through `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout`; on CPU, each element is kept where 16 random bits, four to a 64-bit draw from
    torch's generator, clear p · 2^16 (3.5× faster forward and backward than F.dropout there)."""
    if not training or not p or x.device.type != "cpu":
        return F.dropout(x, p, training)
    draws = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = draws.view(torch.int16)[: x.numel()].view(x.shape) >= round(p * 2**16) - 2**15
    return x * keep.to(x.dtype).mul_(1 / (1 - p))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, p: float) -> torch.Tensor:
    """Scaled dot-product attention, causal or with `bias` added to the scores (0 where a query may
    attend, -inf where not), with dropout `p` on the weights: SDPA (flash or memory-efficient
    kernels on GPU), or on CPU when training, SDPA's own math path with `dropout`'s masks."""
    if not p or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bias is None, dropout_p=p)
    scores = (q * (1 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # scaling q: (T, hd), not (T, T)
    scores += causal_bias(q.size(-2), q.dtype) if bias is None else bias
    return dropout(scores.softmax(dim=-1), p) @ v


def causal_bias(T: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """(T, T): 0 where a query may attend (itself and before), -inf after. Added to the scores, it
    masks in one pass that needs none in backward, where `masked_fill` takes one each way."""
    return torch.full((T, T), float("-inf"), dtype=dtype, device=device).triu_(1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # Causal attention, or `bias` (B, 1, T, T) where given; flash or memory-efficient kernels on GPU.
        y = attend(q, k, v, bias, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.c_fc = nn.Linear(cfg.n_embd, inner)
        self.c_proj = nn.Linear(inner, cfg.n_embd)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, bias))  # post-LayerNorm, as GPT-1 (GPT-2 moved it before)
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is not set (it comes from the tokenizer)")
        self.cfg = cfg
        self.tokens_embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.positions_embed = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, logits: bool = True, positions: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> Output:  # fmt: skip
        """idx: (B, T) token ids, T <= n_positions. `logits=False` skips the output projection, for
        readers of the hidden states alone (a task head scoring).

        Several sequences that begin alike can share one row (`eval/transforms.py`): `positions`
        (B, T) gives each token its place in its own sequence, and `segments` (B, T) says which
        sequence it belongs to, 0 for the shared beginning. A token then attends to the earlier
        tokens of its segment and of segment 0, and its state is the one it has in its sequence alone."""
        T = idx.size(1)
        if positions is None:
            if self.cfg.n_positions < T:
                raise ValueError(f"sequence of {T} tokens is longer than the {self.cfg.n_positions} positions")
            positions = torch.arange(T, device=idx.device)
        x = self.drop(self.tokens_embed(idx) + self.positions_embed(positions))  # (B, T, C)
        bias = None if segments is None else segment_bias(segments, x.dtype)
        for block in self.h:
            x = block(x, bias)
        return Output(x, self.lm_head(x) if logits else None)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) hidden states -> (..., V) next-token logits: the output projection, tied to the
        token embedding."""
        return hidden @ self.tokens_embed.weight.T

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per parameter plus attention's 12 · layers · width · context
        (PaLM's appendix B), for MFU."""
        return 6 * self.num_params() + 12 * self.cfg.n_layer * self.cfg.n_embd * seq_len


def segment_bias(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) attention bias: causal, within a segment or into segment 0."""
    query, key = segments[:, :, None], segments[:, None, :]
    bias = causal_bias(segments.size(1), dtype, segments.device)
    return bias.masked_fill((key != 0) & (key != query), float("-inf"))[:, None]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy; targets < 0 are ignored (padding). `weights` counts each target
    that many times (a token that several sequences share, read once)."""
    flat, targets = logits.float().view(-1, logits.size(-1)), targets.reshape(-1)
    if weights is None:
        return F.cross_entropy(flat, targets, ignore_index=-1)
    weights = weights.reshape(-1) * (targets >= 0)
    return (F.cross_entropy(flat, targets, ignore_index=-1, reduction="none") * weights).sum() / weights.sum()


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
