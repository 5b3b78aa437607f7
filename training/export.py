"""Our GPT-1 weights in `transformers`' `OpenAIGPTLMHeadModel` layout.

Names already match `OpenAIGPTModel`; its projections are `Conv1D` layers, which store the weight
as (in, out), so every linear weight is transposed. The LM head is tied to the token embedding.
"""

from __future__ import annotations

import torch

from training.config import ModelConfig
from training.model import GPT


def hf_config(cfg: ModelConfig) -> dict:
    """`OpenAIGPTConfig` keyword arguments for this model."""
    return {
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "afn": "gelu", "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_std, "architectures": ["OpenAIGPTLMHeadModel"], "model_type": "openai-gpt",
    }  # fmt: skip


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Tensors keyed as `OpenAIGPTLMHeadModel` expects (the tied `lm_head.weight` left out)."""
    out = {}
    for name, tensor in model.state_dict().items():
        is_linear_weight = name.endswith(".weight") and (".c_attn." in name or ".c_proj." in name or ".c_fc." in name)
        out[f"transformer.{name}"] = (tensor.T if is_linear_weight else tensor).contiguous()
    return out
