"""Task heads on top of the pretrained GPT (`training/model.py`, unchanged): one linear layer on the
final hidden state of the extract token, after dropout, as in the paper.

    classification, entailment   head(h)                  -> (B, classes)
    similarity                   head(h_ab + h_ba)        -> (B, classes), or (B, 1) for a score
    multiple choice              head(h_i) per choice     -> (B, choices), a softmax over choices

The loss is the task's (cross-entropy, or squared error for a score) plus `lm_coef` times the
language-modelling loss on the same inputs, the paper's auxiliary objective.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from eval.tasks import Kind
from eval.transforms import Batch
from training.loss import chunked_lm_loss
from training.model import GPT, Dropout


class TaskOutput(NamedTuple):
    scores: torch.Tensor  # (B, classes | choices | 1)
    lm_loss: torch.Tensor | None  # the LM loss on the inputs; None unless their targets were given


class TaskModel(nn.Module):
    def __init__(self, gpt: GPT, kind: Kind, n_outputs: int, dropout: float):
        super().__init__()
        self.gpt, self.kind = gpt, kind
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(gpt.cfg.n_embd, n_outputs)
        nn.init.normal_(self.head.weight, std=gpt.cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor | None,
                extract: torch.Tensor, lm_targets: torch.Tensor | None = None,
                lm_weights: torch.Tensor | None = None) -> TaskOutput:  # fmt: skip
        """A batch's rows (`eval.transforms.Batch`): tokens, positions and segments (B, T); extract
        (B, S), where each sequence's extract token is; lm_targets and lm_weights (B, T), the next
        tokens (-1 for none) and how many sequences hold each, for the auxiliary LM loss. The LM head
        projects only the tokens that have a next token: padding and extract tokens never reach the
        vocabulary, and scoring, or training without the auxiliary loss, skips the head altogether."""
        hidden = self.gpt(tokens, logits=False, positions=positions, segments=segments).hidden  # (B, T, C)
        h = hidden[torch.arange(tokens.size(0), device=tokens.device)[:, None], extract]  # (B, S, C)
        if self.kind == "multiple_choice":
            scores = self.head(self.dropout(h)).squeeze(-1)  # (B, S): one score per choice
        else:
            scores = self.head(self.dropout(h.sum(dim=1)))  # similarity sums both orders; others have S = 1
        lm = None
        if lm_targets is not None:
            has_next = lm_targets >= 0
            # The output projection is tied to the token embedding (`GPT.lm_head`).
            lm = chunked_lm_loss(hidden[has_next], self.gpt.tokens_embed.weight, lm_targets[has_next],
                                 lm_weights[has_next])  # fmt: skip
        return TaskOutput(scores, lm)


def task_loss(scores: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(scores.float().squeeze(-1), labels)
    return F.cross_entropy(scores.float(), labels)


def loss(output: TaskOutput, batch: Batch, regression: bool, lm_coef: float) -> torch.Tensor:
    """Task loss + lm_coef × LM loss (the model computes the LM term only when given the targets,
    which fine-tuning does when lm_coef is not 0)."""
    total = task_loss(output.scores, batch.labels, regression)
    if lm_coef:
        total = total + lm_coef * output.lm_loss
    return total


def predictions(scores: torch.Tensor, regression: bool) -> torch.Tensor:
    """Predicted class, choice, or score for each example."""
    return scores.float().squeeze(-1) if regression else scores.argmax(dim=-1)
