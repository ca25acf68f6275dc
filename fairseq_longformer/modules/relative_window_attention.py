"""Causal windowed self-attention with Transformer-XL relative sinusoidal position terms.

Transformer-XL (Dai et al., 2019) scores query i against key j as

    ((q_i + u) . k_j  +  (q_i + v) . W_R R_{i-j}) / sqrt(D)

with ``R_r = [sin(r w_f), cos(r w_f)]_f`` a sinusoid of the offset ``r = i - j``. Because a sinusoid
of a difference separates into products of sinusoids of i and of j, the position term is a plain dot
product ``a_i . b_j``:

    p_i = W_R^T (q_i + v) = [p_sin, p_cos]
    a_i = [p_sin sin(i w) + p_cos cos(i w),  p_cos sin(i w) - p_sin cos(i w)]
    b_j = [cos(j w), sin(j w)]

so ``q' = [q_i + u, a_i]`` and ``k' = [k_j, b_j]`` reproduce the exact Transformer-XL score with one
ordinary attention call. Any ``longformer_attention`` backend then computes it for the offsets inside
the window only: no T x T tensor, no per-offset position matrix. ``v`` is padded with zeros to the
head size of ``q'`` (the op needs equal shapes) and the padding is sliced off the output.
"""

from __future__ import annotations

import math
import torch
from torch import nn

from triton_kernels import longformer_attention

from .layout import merge_heads, split_heads


def sinusoid_frequencies(rel_dim: int) -> torch.Tensor:
    """Transformer-XL's ``1 / 10000^(2f / rel_dim)`` for ``f < rel_dim / 2``, in float64."""
    return 1.0 / (10000.0 ** (torch.arange(0, rel_dim, 2, dtype=torch.float64) / rel_dim))


def relative_sinusoid(offsets: torch.Tensor, rel_dim: int) -> torch.Tensor:
    """``R_r = [sin(r w), cos(r w)]`` for integer offsets ``r`` (float64), shape ``[..., rel_dim]``."""
    angles = offsets.to(torch.float64)[..., None] * sinusoid_frequencies(rel_dim).to(offsets.device)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def head_dilations(num_heads: int, dilation: int, dilated_heads: int) -> list[int]:
    """Per-head dilation: the last ``dilated_heads`` heads get ``dilation``, the others 1."""
    return [1] * (num_heads - dilated_heads) + [dilation] * dilated_heads


class RelativeWindowSelfAttention(nn.Module):
    """Multi-head causal sliding-window self-attention, T x B x C in and out.

    ``window`` keys back (``i - m*d`` for ``m`` in ``[0, window]``, the contract in docs/attention.md),
    dilation ``d`` on ``dilated_heads`` heads only, Transformer-XL relative position terms with
    ``rel_dim`` sinusoid dimensions per head (Transformer-XL itself uses ``rel_dim = embed_dim``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        window: int,
        dilation: int = 1,
        dilated_heads: int = 2,
        rel_dim: int | None = None,
        attention_dropout: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.rel_dim = self.head_dim if rel_dim is None else rel_dim
        if self.rel_dim <= 0 or self.rel_dim % 2:
            raise ValueError(f"rel_dim must be a positive even number (sin and cos halves), got {self.rel_dim}")
        if not 0 <= dilated_heads <= num_heads:
            raise ValueError(f"dilated_heads={dilated_heads} must lie in [0, num_heads={num_heads}]")
        self.window = window
        self.dilation = head_dilations(num_heads, dilation, dilated_heads) if dilation > 1 else 1
        self.attention_dropout = attention_dropout
        self.backend = backend

        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # W_R per head maps the rel_dim sinusoid to the head's D dims (Transformer-XL's r_net).
        self.rel_proj = nn.Parameter(torch.empty(num_heads, self.head_dim, self.rel_dim))
        self.content_bias = nn.Parameter(torch.empty(num_heads, self.head_dim))  # u
        self.position_bias = nn.Parameter(torch.empty(num_heads, self.head_dim))  # v
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        bound = 1.0 / math.sqrt(self.rel_dim)  # as nn.Linear(rel_dim, D) would draw it
        nn.init.uniform_(self.rel_proj, -bound, bound)
        nn.init.normal_(self.content_bias, std=0.02)
        nn.init.normal_(self.position_bias, std=0.02)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        T, B, C = x.shape
        q, k, v = (split_heads(t, self.num_heads) for t in self.in_proj(x).chunk(3, dim=-1))
        q_ext, k_ext, v_ext = self.extended_qkv(q, k, v)
        out = longformer_attention(
            q_ext, k_ext, v_ext, self.window,
            dilation=self.dilation,
            causal=True,
            key_padding_mask=key_padding_mask,
            scale=self.head_dim ** -0.5,  # Transformer-XL scales by the content head size
            dropout_p=self.attention_dropout if self.training else 0.0,
            backend=self.backend,
        )
        return self.out_proj(merge_heads(out[..., : self.head_dim].contiguous()))

    def extended_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """``q' = [q + u, a]``, ``k' = [k, b]``, ``v' = [v, 0]`` (see the module docstring)."""
        B, H, T, D = q.shape
        half = self.rel_dim // 2
        # Absolute angles in float64 (positions reach 23K; float32 would lose the phase), then cast.
        angles = torch.arange(T, dtype=torch.float64, device=q.device)[:, None] * sinusoid_frequencies(
            self.rel_dim
        ).to(q.device)
        sin, cos = angles.sin().to(q.dtype), angles.cos().to(q.dtype)  # [T, half]

        p = torch.einsum("bhtd,hdr->bhtr", q + self.position_bias[None, :, None, :], self.rel_proj)
        p_sin, p_cos = p[..., :half], p[..., half:]
        a = torch.cat([p_sin * sin + p_cos * cos, p_cos * sin - p_sin * cos], dim=-1)
        b = torch.cat([cos, sin], dim=-1).expand(B, H, T, self.rel_dim)

        q_ext = torch.cat([q + self.content_bias[None, :, None, :], a], dim=-1)
        k_ext = torch.cat([k, b], dim=-1)
        v_ext = torch.cat([v, v.new_zeros(B, H, T, self.rel_dim)], dim=-1)
        return q_ext, k_ext, v_ext

