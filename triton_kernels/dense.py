"""Dense reference backend: materialises every T x T score. O(T^2); only for checking the others."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .api import AttentionSpec
from .masks import dense_allowed, padding_safe


def attention(spec: AttentionSpec) -> torch.Tensor:
    q, k, v = spec.q, spec.k, spec.v
    B, H, T, D = q.shape
    dilation = torch.tensor(spec.dilation, device=q.device)
    pad = spec.key_padding_mask
    query_pad = None if pad is None else pad[:, None, :, None]

    allowed = dense_allowed(T, spec.window, dilation, spec.causal, pad, spec.global_mask)
    out = _softmax_attend(q, k, v, padding_safe(allowed, query_pad), spec)

    if spec.global_mask is not None:
        every_key = torch.ones(1, 1, T, T, dtype=torch.bool, device=q.device)
        if pad is not None:
            every_key = every_key & ~pad[:, None, None, :]
        out_global = _softmax_attend(
            spec.q_global, spec.k_global, spec.v_global, padding_safe(every_key, query_pad), spec
        )
        out = torch.where(spec.global_mask[:, None, :, None], out_global, out)

    if pad is not None:
        out = out.masked_fill(query_pad, 0.0)
    return out


def _softmax_attend(q, k, v, allowed, spec: AttentionSpec) -> torch.Tensor:
    # Scores and softmax in float32 (float64 stays float64) whatever the input dtype.
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bhid,bhjd->bhij", q.to(compute), k.to(compute)) * spec.scale
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    if spec.dropout_p > 0:
        probs = F.dropout(probs, spec.dropout_p)
    return torch.einsum("bhij,bhjd->bhid", probs, v.to(compute)).to(q.dtype)
