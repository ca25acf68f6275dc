"""fairseq runs T x B x C; the attention ops run B x H x T x D. Convert once, here."""

from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[T, B, H*D] -> [B, H, T, D]``."""
    T, B, C = x.shape
    return x.view(T, B, num_heads, C // num_heads).permute(1, 2, 0, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, D] -> [T, B, H*D]``."""
    B, H, T, D = x.shape
    return x.permute(2, 0, 1, 3).reshape(T, B, H * D)
