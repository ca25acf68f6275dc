"""One pre-LayerNorm decoder block of the character LM: windowed relative attention + GeLU FFN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .relative_window_attention import RelativeWindowSelfAttention


class CausalWindowDecoderLayer(nn.Module):
    """``x + drop(attn(LN(x)))`` then ``x + drop(FFN(LN(x)))`` (pre-LN, Xiong et al. 2020), T x B x C."""

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        window: int,
        dilation: int,
        dilated_heads: int,
        rel_dim: int | None,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        backend: str,
    ):
        super().__init__()
        self.self_attn = RelativeWindowSelfAttention(
            embed_dim, num_heads, window, dilation, dilated_heads, rel_dim, attention_dropout, backend
        )
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_attn(self.attn_norm(x), key_padding_mask)
        x = x + F.dropout(h, self.dropout, self.training)
        h = F.dropout(F.gelu(self.fc1(self.ffn_norm(x))), self.activation_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.dropout, self.training)
