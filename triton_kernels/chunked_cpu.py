"""Window attention as a few key chunks per query block, merged by log-sum-exp, on CPU flash kernels.

Each query block scores a handful of key chunks (the key blocks at fixed offsets from it, plus the
global keys) with ATen's CPU flash-attention kernel, which also returns each row's log-sum-exp.
Merging the chunks by their log-sum-exp gives the exact softmax over their union.

The backward runs the same kernel's backward once per chunk, but with the *merged* output and
log-sum-exp: it then recomputes each chunk's true probabilities and returns that chunk's exact share
of dq, dk and dv (the split-KV trick of FlashAttention). Nothing wider than one key block is ever
materialised, so peak memory stays a few multiples of q/k/v, forward and backward.

Interior chunks that lie wholly inside every query's window need no band mask: only key validity,
as a ``[N, 1, 1, block]`` row broadcast over queries. Only the outermost chunks carry a band.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def supported(q: torch.Tensor, dropout_p: float) -> bool:
    """The CPU flash kernel has no dropout and no other device."""
    return q.device.type == "cpu" and dropout_p == 0.0


@dataclass
class Chunk:
    """Keys ``rows[start : start + N*block]`` of a token-major buffer, seen through ``mask``."""

    start: int
    mask: torch.Tensor  # additive, 0 or -inf, broadcastable to [N, 1, block, block]
    has_key: torch.Tensor  # bool, broadcastable to [N, 1, block]: the row sees at least one key


def chunked_attention(queries, key_rows, value_rows, chunks, extra, scale):
    """``queries`` ``[N, Hg, block, D]``; ``key_rows``/``value_rows`` ``[R, Hg*D]`` token-major buffers.

    ``extra``: ``None`` or ``(keys, values, mask, has_key)`` with ``[N, Hg, G, D]`` tensors seen by
    every block. Returns ``[N, Hg, block, D]``.
    """
    extra_kv = (None, None) if extra is None else extra[:2]
    extra_masks = None if extra is None else extra[2:]
    return _ChunkedAttention.apply(queries, key_rows, value_rows, *extra_kv, chunks, extra_masks, scale)


def _chunk_view(rows: torch.Tensor, start: int, like: torch.Tensor) -> torch.Tensor:
    N, Hg, block, D = like.shape
    return rows[start:start + N * block].view(N, block, Hg, D).transpose(1, 2)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, key_rows, value_rows, extra_k, extra_v, chunks, extra_masks, scale):
        parts = [(_chunk_view(key_rows, c.start, queries), _chunk_view(value_rows, c.start, queries),
                  c.mask, c.has_key) for c in chunks]
        if extra_k is not None:
            parts.append((extra_k, extra_v, *extra_masks))
        outs, lses = [], []
        for keys, values, mask, has_key in parts:
            out, lse = _flash(queries, keys, values, attn_mask=mask, scale=scale)
            outs.append(out)
            # A row with no visible key in this chunk must not count (the kernel reports lse 0).
            lses.append(lse.masked_fill(~has_key, float("-inf")))
        lse = torch.logsumexp(torch.stack(lses), dim=0)
        # Padding queries see no key at all; keep them finite (the caller zeroes their output).
        lse = lse.masked_fill(torch.isinf(lse), 0.0)
        out = torch.zeros_like(outs[0])
        for part_out, part_lse in zip(outs, lses):
            out.addcmul_(part_out, torch.exp(part_lse - lse)[..., None].to(out.dtype))
        ctx.save_for_backward(queries, key_rows, value_rows, extra_k, extra_v, out, lse)
        ctx.chunks, ctx.extra_masks, ctx.scale = chunks, extra_masks, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        queries, key_rows, value_rows, extra_k, extra_v, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_q = torch.zeros_like(queries, memory_format=torch.contiguous_format)
        grad_k_rows, grad_v_rows = torch.zeros_like(key_rows), torch.zeros_like(value_rows)

        def chunk_grads(keys, values, mask):
            return _flash_backward(grad_out, queries, keys, values, out, lse, 0.0, False,
                                   attn_mask=mask, scale=ctx.scale)

        for c in ctx.chunks:
            dq, dk, dv = chunk_grads(_chunk_view(key_rows, c.start, queries),
                                     _chunk_view(value_rows, c.start, queries), c.mask)
            grad_q += dq
            _chunk_view(grad_k_rows, c.start, queries).add_(dk)
            _chunk_view(grad_v_rows, c.start, queries).add_(dv)
        grad_extra_k = grad_extra_v = None
        if extra_k is not None:
            dq, grad_extra_k, grad_extra_v = chunk_grads(extra_k, extra_v, ctx.extra_masks[0])
            grad_q += dq
        return grad_q, grad_k_rows, grad_v_rows, grad_extra_k, grad_extra_v, None, None, None
