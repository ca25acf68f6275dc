"""The one place that decides which key a query may see.

Every backend asks these helpers instead of re-deriving the window rule, so the
definition in docs/attention.md ("The contract") lives in exactly one place: :func:`reaches` says
how far a window spans and :func:`in_window` which keys inside it a query sees.
All masks here are boolean with a single meaning: ``True`` = "this key is attended".
"""

from __future__ import annotations

import torch


def reaches(window: int, causal: bool) -> tuple[int, int]:
    """How many window keys a query has (before, after) it, in steps of its dilation.

    Non-causal: ``window/2`` each side; causal: ``window`` before and none after. The blocked
    layout sizes its key spans and the Triton tile plan its tile ranges by this.
    """
    return (window, 0) if causal else (window // 2, window // 2)


def in_window(delta: torch.Tensor, window: int, dilation, causal: bool) -> torch.Tensor:
    """Whether key ``j`` is a window key of query ``i``, given ``delta = i - j``.

    ``dilation`` is an int or a tensor broadcastable against ``delta`` (per head): ``j = i - m*d``
    with ``-after <= m <= before`` (:func:`reaches`).
    """
    before, after = reaches(window, causal)
    return (delta % dilation == 0) & (delta <= before * dilation) & (delta >= -after * dilation)


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


def global_positions(global_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each batch row's global token positions, in sequence order, left-aligned: ``(index, valid)``.

    Both are ``[B, G]`` with G the largest count of the batch (read on the host: one device sync);
    ``valid`` is False on the fill entries of rows with fewer global tokens.
    """
    count = global_mask.sum(dim=1)
    G = int(count.max()) if global_mask.shape[0] else 0
    # A stable sort puts each row's global positions first, in order.
    index = torch.argsort((~global_mask).to(torch.int8), dim=1, stable=True)[:, :G]
    return index, torch.arange(G, device=global_mask.device) < count[:, None]


def band(block: int, span: int, window: int, causal: bool) -> torch.Tensor:
    """``[block, span]`` mask of one query block against its key span in the blocked layout.

    The span starts ``before`` keys (:func:`reaches`) ahead of the block's first query, so query ``a``
    sits at span position ``a + before`` and ``delta = a + before - c`` for span key ``c``. Positions
    here are already de-dilated (dilation 1), see ``blocked.py``.
    """
    before, _ = reaches(window, causal)
    a = torch.arange(block)[:, None]
    c = torch.arange(span)[None, :]
    return in_window(a + before - c, window, 1, causal)


def padding_safe(allowed: torch.Tensor, query_is_padding: torch.Tensor | None) -> torch.Tensor:
    """Let padding queries see every key so no softmax row is empty (their output is zeroed later).

    An all-masked row would give NaN probabilities, and NaN leaks into the gradients of the
    other rows through ``P^T dO`` even when that row's output is discarded.
    """
    if query_is_padding is None:
        return allowed
    return allowed | query_is_padding
