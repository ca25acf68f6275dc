"""Extractive-QA head: one linear layer giving every token a start and an end logit.

Longformer paper (Beltagy et al., 2020), appendix B (TriviaQA): "we add one layer that predicts the
beginning and end of the answer span". The model keeps its span heads in ``span_heads`` (a ModuleDict,
the way RoBERTa keeps ``classification_heads``), so they are saved and loaded with checkpoints; a
pretrained directory without one gets a freshly initialised head (see :func:`upgrade_span_heads`).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

SPAN_HEAD = "span_qa"  # the name the span-QA task registers and its criterion calls
PREFIX = "span_heads."


class SpanHead(nn.Module):
    """``features [B, T, C] -> logits [B, T, 2]`` (``[..., 0]`` start, ``[..., 1]`` end)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.out_proj = nn.Linear(embed_dim, 2)
        nn.init.normal_(self.out_proj.weight, std=0.02)  # BERT's initialisation, as fairseq's heads
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(features)


def upgrade_span_heads(model: nn.Module, state_dict: dict, prefix: str, load_checkpoint_heads: bool) -> None:
    """Reconcile a checkpoint's span heads with the model's before a strict load.

    * a head the model has and the checkpoint lacks (finetuning starts from a pretrained model) keeps
      the model's fresh weights;
    * a head the checkpoint has and the model lacks is registered when ``load_checkpoint_heads`` (the hub
      loader), otherwise dropped with a warning (e.g. masked-LM training restored from a QA checkpoint).
    """
    heads = model.span_heads
    stored = {key[len(prefix + PREFIX):].split(".")[0] for key in state_dict if key.startswith(prefix + PREFIX)}
    for name in sorted(stored - set(heads)):
        if load_checkpoint_heads:
            model.register_span_head(name)
        else:
            logger.warning("dropping span head %r from the checkpoint: the model has no such head", name)
            for key in [k for k in state_dict if k.startswith(f"{prefix}{PREFIX}{name}.")]:
                del state_dict[key]
    for key, value in heads.state_dict().items():
        if prefix + PREFIX + key not in state_dict:
            logger.info("span head %s: new weights (not in the checkpoint)", key)
            state_dict[prefix + PREFIX + key] = value
