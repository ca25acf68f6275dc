"""Encoder self-attention for Longformer-RoBERTa: sliding window plus per-token global attention.

A drop-in replacement for fairseq's ``MultiheadAttention`` inside an encoder layer. The local
projections keep fairseq's parameter names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) so a
RoBERTa state dict loads strictly; ``q_global``, ``k_global``, ``v_global`` are the extra projections
global tokens use (paper §3.1, "Linear Projections for Global Attention").
"""

from __future__ import annotations

import torch
import torch.nn as nn

from triton_kernels import longformer_attention

from .layout import merge_heads, split_heads

LOCAL_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
GLOBAL_PROJECTIONS = ("q_global", "k_global", "v_global")


class LongformerSelfAttention(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attention_window: int,
        dropout: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if attention_window < 0 or attention_window % 2:
            raise ValueError(
                f"attention_window={attention_window} must be an even int >= 0 "
                "(window/2 keys on each side of a token)"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attention_window = attention_window
        self.dropout = dropout
        self.backend = backend
        for name in LOCAL_PROJECTIONS + ("out_proj",) + GLOBAL_PROJECTIONS:
            setattr(self, name, nn.Linear(embed_dim, embed_dim))

    def forward(
        self,
        query: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        global_mask: torch.Tensor | None = None,
        global_index: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``query``: ``[T, B, C]``; masks ``[B, T]`` bool (True = padding / global). Returns ``[T, B, C]``.

        ``global_mask`` is ``None`` when no token of the batch is global (the encoder checks this once for
        all layers): the global projections are then skipped (see ``_keep_global_projections_in_graph`` for
        why they still get a gradient). ``global_index`` is ``global_mask.nonzero(as_tuple=True)``, which the
        encoder also computes once; it is derived here when not given.
        """
        q, k, v = (split_heads(getattr(self, name)(query), self.num_heads) for name in LOCAL_PROJECTIONS)
        global_qkv = {}
        if global_mask is not None:
            if global_index is None:
                global_index = global_mask.nonzero(as_tuple=True)
            # the op's keyword names are the same as the projections' ("q_global", ...)
            global_qkv = {
                "q_global": split_heads(self._global_queries(query, global_index), self.num_heads),
                "k_global": split_heads(self.k_global(query), self.num_heads),
                "v_global": split_heads(self.v_global(query), self.num_heads),
            }
        out = longformer_attention(
            q, k, v, self.attention_window,
            key_padding_mask=key_padding_mask,
            global_mask=global_mask,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,
            **global_qkv,
        )
        out = self.out_proj(merge_heads(out))
        if global_mask is None:
            out = self._keep_global_projections_in_graph(out)
        return out

    def _global_queries(self, query: torch.Tensor, global_index) -> torch.Tensor:
        """``q_global`` at the global tokens, zero elsewhere: ``[T, B, C]``.

        The op reads ``q_global`` only at global tokens (docs/attention.md, "The contract"), so projecting
        just those rows gives the same result for a fraction of the cost; the other rows get a zero
        gradient, as they would anyway.
        """
        batch, position = global_index
        rows = self.q_global(query[position, batch])  # [G_total, C]
        return query.new_zeros(query.shape).index_put((position, batch), rows)

    def _keep_global_projections_in_graph(self, out: torch.Tensor) -> torch.Tensor:
        """Add an exact zero that depends on Qg/Kg/Vg when they were not used.

        Masked-LM batches have no global token, so without this the global projections would get no
        gradient and PyTorch's DistributedDataParallel would stop with "parameters that were not used
        in producing loss" unless ``--find-unused-parameters`` is on. A zero-valued term makes their
        gradient an exact 0 and costs three reductions.
        """
        if not (self.training and torch.is_grad_enabled()):
            return out
        params = [p for name in GLOBAL_PROJECTIONS for p in getattr(self, name).parameters() if p.requires_grad]
        if not params:
            return out
        return out + 0.0 * sum(p.sum() for p in params).to(out.dtype)

    def upgrade_state_dict_named(self, state_dict: dict, name: str) -> None:
        """Split fairseq's old fused ``in_proj_weight``/``in_proj_bias`` into q/k/v (very old checkpoints)."""
        prefix = f"{name}." if name else ""
        for kind in ("weight", "bias"):
            fused = state_dict.pop(f"{prefix}in_proj_{kind}", None)
            if fused is None:
                continue
            for proj, part in zip(LOCAL_PROJECTIONS, fused.chunk(3, dim=0)):
                state_dict[f"{prefix}{proj}.{kind}"] = part
