"""The one place that decides which key a query may see.

Every backend asks these helpers instead of re-deriving the window rule, so the
definition in DESIGN.md §3 lives in exactly one function: :func:`in_window`.
All masks here are boolean with a single meaning: ``True`` = "this key is attended".
"""

from __future__ import annotations

import torch


def in_window(delta: torch.Tensor, window: int, dilation, causal: bool) -> torch.Tensor:
    """Whether key ``j`` is a window key of query ``i``, given ``delta = i - j``.

    ``dilation`` is an int or a tensor broadcastable against ``delta`` (per head).
    Non-causal: ``j = i + m*d`` with ``|m| <= window/2``. Causal: ``j = i - m*d`` with
    ``0 <= m <= window``.
    """
    if causal:
        return (delta >= 0) & (delta % dilation == 0) & (delta <= window * dilation)
    return (delta % dilation == 0) & (delta.abs() <= (window // 2) * dilation)


def dense_allowed(
    seq_len: int,
    window: int,
    dilation: torch.Tensor,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    global_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Full ``[B or 1, H, T, T]`` mask of keys seen by *local* (non-global) queries. O(T^2).

    ``dilation`` is an int64 tensor of H per-head dilations. Global tokens are visible to every
    query; padding keys to none. Only the dense reference may afford this.
    """
    device = dilation.device
    pos = torch.arange(seq_len, device=device)
    delta = pos[:, None] - pos[None, :]  # [T, T], i - j
    allowed = in_window(delta[None], window, dilation[:, None, None], causal)[None]  # [1,H,T,T]
    if global_mask is not None:
        allowed = allowed | global_mask[:, None, None, :]
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return allowed


def reach(window: int, causal: bool) -> int:
    """How many keys before a query its window can touch (dilation 1)."""
    return window if causal else window // 2


def band(block: int, span: int, window: int, causal: bool) -> torch.Tensor:
    """``[block, span]`` mask of one query block against its key span in the blocked layout.

    The span starts ``reach`` keys before the block's first query, so query ``a`` sits at span
    position ``a + reach`` and ``delta = a + reach - c`` for span key ``c``. Positions here are
    already de-dilated (dilation 1), see ``blocked.py``.
    """
    a = torch.arange(block)[:, None]
    c = torch.arange(span)[None, :]
    return in_window(a + reach(window, causal) - c, window, 1, causal)


def padding_safe(allowed: torch.Tensor, query_is_padding: torch.Tensor | None) -> torch.Tensor:
    """Let padding queries see every key so no softmax row is empty (their output is zeroed later).

    An all-masked row would give NaN probabilities, and NaN leaks into the gradients of the
    other rows through ``P^T dO`` even when that row's output is discarded.
    """
    if query_is_padding is None:
        return allowed
    return allowed | query_is_padding
