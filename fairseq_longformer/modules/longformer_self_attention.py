"""Encoder self-attention for Longformer-RoBERTa: sliding window plus per-token global attention.

A drop-in replacement for fairseq's ``MultiheadAttention`` inside an encoder layer. The local
projections keep fairseq's parameter names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) so a
RoBERTa state dict loads strictly; ``q_global``, ``k_global``, ``v_global`` are the extra projections
global tokens use (paper §3.1, "Linear Projections for Global Attention").

``k_global``/``v_global`` feed only the global tokens' own rows (every key scored against a global query),
so with few global tokens the module folds them into those queries instead of projecting every token
(``global_rows_folded``): the same rows for a fraction of the work. With many global tokens it projects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from triton_kernels import longformer_attention
from triton_kernels.masks import global_positions

from .layout import merge_heads, split_heads

LOCAL_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
GLOBAL_PROJECTIONS = ("q_global", "k_global", "v_global")


@dataclass(frozen=True)
class GlobalTokens:
    """Where a batch's global tokens are, worked out once per forward for all layers (one host sync each).

    ``batch``/``position`` (``[G_total]``) list them in row-major order (``mask.nonzero``); ``index``/``valid``
    (``[B, G]``, G the largest count of a row) hold each row's positions left-aligned, fill entries invalid.
    """

    batch: torch.Tensor
    position: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def of(cls, mask: torch.Tensor) -> "GlobalTokens":
        return cls(*mask.nonzero(as_tuple=True), *global_positions(mask))

    @property
    def most_per_row(self) -> int:
        return self.index.shape[1]


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
        global_tokens: GlobalTokens | None = None,
    ) -> torch.Tensor:
        """``query``: ``[T, B, C]``; masks ``[B, T]`` bool (True = padding / global). Returns ``[T, B, C]``.

        ``global_mask`` is ``None`` when no token of the batch is global (the encoder checks this once for
        all layers): the global projections are then skipped (see ``_keep_global_projections_in_graph`` for
        why they still get a gradient). ``global_tokens`` (``GlobalTokens.of(global_mask)``) is what the
        encoder computes once for all layers; it is derived here when not given.
        """
        q, k, v = (split_heads(getattr(self, name)(query), self.num_heads) for name in LOCAL_PROJECTIONS)
        dropout_p = self.dropout if self.training else 0.0
        if global_mask is None:
            out = merge_heads(self._attention(q, k, v, key_padding_mask, dropout_p))
            return self._keep_global_projections_in_graph(self.out_proj(out))

        if global_tokens is None:  # a global token that is also padding counts as padding (the op's rule)
            global_tokens = GlobalTokens.of(global_mask if key_padding_mask is None else global_mask & ~key_padding_mask)
        if self.folds_global_projections(global_tokens.most_per_row, q.dtype):
            # The op's own global rows come from stand-ins (the local q, k, v: free) and are replaced.
            out = merge_heads(self._attention(q, k, v, key_padding_mask, dropout_p, global_mask,
                                              q_global=q, k_global=k, v_global=v))
            rows = global_rows_folded(query, global_tokens, self.q_global, self.k_global, self.v_global,
                                      self.num_heads, key_padding_mask, dropout_p)
            out = out.index_put((global_tokens.position, global_tokens.batch), rows)
        else:
            # the op's keyword names are the same as the projections' ("q_global", ...)
            global_qkv = {
                "q_global": split_heads(self._global_queries(query, global_tokens), self.num_heads),
                "k_global": split_heads(self.k_global(query), self.num_heads),
                "v_global": split_heads(self.v_global(query), self.num_heads),
            }
            out = merge_heads(self._attention(q, k, v, key_padding_mask, dropout_p, global_mask, **global_qkv))
        return self.out_proj(out)

    def folds_global_projections(self, most_per_row: int, dtype: torch.dtype) -> bool:
        """Folding costs ~``T*C*H*G`` per row against ``T*C*C`` for projecting keys and values: cheaper
        while ``H * G < C`` (fewer than 64 global tokens a row at base size). Not in half precision, where
        the folded scores would be rounded to it before the softmax (the op keeps scores in float32)."""
        full_precision = dtype in (torch.float32, torch.float64)
        return full_precision and self.num_heads * most_per_row < self.embed_dim

    def _attention(self, q, k, v, key_padding_mask, dropout_p, global_mask=None, **global_qkv):
        return longformer_attention(q, k, v, self.attention_window, key_padding_mask=key_padding_mask,
                                    global_mask=global_mask, dropout_p=dropout_p, backend=self.backend,
                                    **global_qkv)

    def _global_queries(self, query: torch.Tensor, tokens: GlobalTokens) -> torch.Tensor:
        """``q_global`` at the global tokens, zero elsewhere: ``[T, B, C]``.

        The op reads ``q_global`` only at global tokens (docs/attention.md, "The contract"), so projecting
        just those rows gives the same result for a fraction of the cost; the other rows get a zero
        gradient, as they would anyway.
        """
        rows = self.q_global(query[tokens.position, tokens.batch])  # [G_total, C]
        return query.new_zeros(query.shape).index_put((tokens.position, tokens.batch), rows)

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


def global_rows_folded(query: torch.Tensor, tokens: GlobalTokens, q_global: nn.Linear, k_global: nn.Linear,
                       v_global: nn.Linear, num_heads: int, key_padding_mask: torch.Tensor | None,
                       dropout_p: float) -> torch.Tensor:
    """The global tokens' attention rows, ``[G_total, C]`` in ``tokens.batch``/``position`` order, without
    projecting any key or value.

    A global query of head ``h`` scores token ``x`` as ``s * q . (Wk_h x + bk_h) = x . (s Wk_h^T q) + s q . bk_h``
    and reads ``sum_t p_t (Wv_h x_t + bv_h) = Wv_h (sum_t p_t x_t) + bv_h sum_t p_t``: so each (token, head)
    query is folded into one ``C``-wide vector scored against the raw inputs, and the probability-weighted
    inputs are projected afterwards. ``sum_t p_t`` is 1 except under dropout. Padding keys are not scored.
    """
    T, B, C = query.shape
    H, D, G = num_heads, C // num_heads, tokens.most_per_row
    inputs = query.transpose(0, 1)  # [B, T, C]
    at_globals = inputs.gather(1, tokens.index[..., None].expand(B, G, C))  # [B, G, C]; fill entries unused
    queries = q_global(at_globals).view(B, G, H, D) * D ** -0.5
    folded = torch.einsum("bghd,hdc->bhgc", queries, k_global.weight.view(H, D, C)).reshape(B, H * G, C)
    shift = torch.einsum("bghd,hd->bhg", queries, k_global.bias.view(H, D)).reshape(B, H * G, 1)
    # ``shift`` is the same for every key, so it cancels in the softmax; adding it keeps the scores those of the
    # projected keys and k_global.bias in the graph (DistributedDataParallel wants every parameter used).
    scores = torch.matmul(folded, inputs.transpose(1, 2)) + shift  # [B, H*G, T]
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
    probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout_p, training=dropout_p > 0)
    pooled = torch.matmul(probs, inputs).view(B, H, G, C)
    rows = torch.einsum("bhgc,hdc->bghd", pooled, v_global.weight.view(H, D, C))
    rows = rows + v_global.bias.view(H, D) * probs.sum(dim=-1).view(B, H, G).transpose(1, 2)[..., None]
    return rows.reshape(B, G, C)[tokens.valid]
