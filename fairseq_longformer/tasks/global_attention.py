"""Which tokens get global attention in a finetuning task: the one rule every task and the hub use.

Modes (paper §6: global attention on the few tokens the task needs):

* ``cls``: the first token ``<s>`` only (classification);
* ``first-segment``: ``<s>`` and every token of the first input, up to its closing ``</s>`` (pairs such
  as ``<s> question </s></s> document </s>``: the question attends to everything and everything to it);
* ``none``: no token (sliding window only).

Padding is never global. Works on one sample ``[T]`` or a batch ``[B, T]``.
"""
from __future__ import annotations

import torch
from fairseq.data import BaseWrapperDataset

GLOBAL_ATTENTION_MODES = ("cls", "first-segment", "none")


def global_attention_mask(tokens: torch.Tensor, mode: str, eos: int, pad: int) -> torch.Tensor:
    """Bool mask of ``tokens``' shape, True where the token gets global attention."""
    if mode not in GLOBAL_ATTENTION_MODES:
        raise ValueError(f"--global-attention {mode!r}: choose one of {', '.join(GLOBAL_ATTENTION_MODES)}")
    positions = torch.arange(tokens.shape[-1], device=tokens.device)
    if mode == "none":
        mask = torch.zeros_like(tokens, dtype=torch.bool)
    elif mode == "cls":
        mask = positions == 0
    else:
        is_eos = tokens.eq(eos)
        # index of the first </s> per row (a row without one is all first segment)
        first_eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), tokens.shape[-1])
        mask = positions < first_eos.unsqueeze(-1)
    return mask.expand_as(tokens) & tokens.ne(pad)


class GlobalAttentionMaskDataset(BaseWrapperDataset):
    """Bool mask of each item's global tokens (:func:`global_attention_mask`); pad with ``RightPadDataset(.., 0)``."""

    def __init__(self, tokens, mode: str, eos: int, pad: int):
        super().__init__(tokens)
        self.mode, self.eos, self.pad = mode, eos, pad

    def __getitem__(self, index):
        return global_attention_mask(self.dataset[index], self.mode, self.eos, self.pad)

    def collater(self, samples):
        raise NotImplementedError("wrap in RightPadDataset(..., pad_idx=0)")
