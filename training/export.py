"""Our GPT-1 checkpoints in `transformers`' `OpenAIGPTLMHeadModel` layout.

Names already match `OpenAIGPTModel`; its projections are `Conv1D` layers, which store the weight
as (in, out), so every linear weight is transposed. The LM head is tied to the token embedding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from training.checkpoint import load_weights, resolve
from training.config import ModelConfig


def hf_config(cfg: ModelConfig) -> dict:
    """`OpenAIGPTConfig` keyword arguments for this model."""
    return {
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "afn": "gelu", "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_std, "architectures": ["OpenAIGPTLMHeadModel"], "model_type": "openai-gpt",
    }  # fmt: skip


def hf_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict keyed as `OpenAIGPTLMHeadModel` expects (the tied `lm_head.weight` left out)."""
    out = {}
    for name, tensor in weights.items():
        is_linear_weight = name.endswith(".weight") and (".c_attn." in name or ".c_proj." in name or ".c_fc." in name)
        out[f"transformer.{name}"] = (tensor.T if is_linear_weight else tensor).contiguous()
    return out


def export_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Write `model.safetensors`, `config.json` and the tokenizer files, so that
    `OpenAIGPTLMHeadModel.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)` load them."""
    from safetensors.torch import save_file

    folder = resolve(checkpoint)
    cfg, weights = load_weights(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(weights), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg), indent=2) + "\n")
    for file in sorted((folder / "tokenizer").iterdir()):
        shutil.copy2(file, out / file.name)
    return out
