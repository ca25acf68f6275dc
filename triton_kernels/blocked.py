"""The ``torch`` backend: blocked sliding-window attention over ``scaled_dot_product_attention``.

O(T·w) time and memory, forward and backward, no T x T tensor anywhere.

* **Blocks.** Queries are cut into blocks of ``b``; block ``j`` only needs the key span reaching
  ``reach`` keys before (and, non-causal, after) it. Spans are overlapping views (``unfold``) of the
  padded keys, so one batched flash-attention call scores every block against its own span under
  one shared band mask (on CPU with its own span-folding backward, ``_SpanAttention``).
* **Dilation.** Heads with dilation ``d`` see only keys in their query's residue class mod ``d``.
  Regrouping tokens by residue (NATTEN's trick) turns the dilated window into a contiguous one on
  ``d`` sequences of length ``T/d``: the same work as no dilation.
* **Global tokens.** Their local keys form one extra key block that every query sees (minus those
  already inside its window, so no key counts twice); their queries are ``G`` extra rows, scored
  with the global projections against every key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .api import AttentionSpec
from .masks import band, in_window, reach

# Query block length. Spans cost (b + 2*reach) keys per block for 2*reach + 1 useful ones; smaller
# blocks waste less but give SDPA smaller matmuls. Measured on CPU (benchmarks/attention_cpu.py).
MIN_BLOCK = 32
MAX_BLOCK = 256


def attention(spec: AttentionSpec) -> torch.Tensor:
    q, k, v = spec.q, spec.k, spec.v
    B, H, T, D = q.shape
    out_dtype = q.dtype
    if q.dtype in (torch.float16, torch.bfloat16) and not q.is_cuda:
        # The CPU SDPA kernels may keep half-precision softmax; the contract says float32.
        q, k, v = q.float(), k.float(), v.float()

    padding = spec.key_padding_mask
    globals_ = _GlobalTokens.gather(spec.global_mask) if spec.global_mask is not None else None
    if globals_ is not None and globals_.index.shape[1] == 0:
        globals_ = None  # a global_mask with no True in it

    heads_by_dilation: dict[int, list[int]] = {}
    for head, d in enumerate(spec.dilation):
        heads_by_dilation.setdefault(d, []).append(head)

    parts, order = [], []
    for d, heads in heads_by_dilation.items():
        index = None if len(heads) == H else torch.tensor(heads, device=q.device)
        pick = (lambda t: t) if index is None else (lambda t: t.index_select(1, index))
        extra = None
        if globals_ is not None:
            extra = (globals_.take(pick(k)), globals_.take(pick(v)))
        parts.append(_dilated_window(pick(q), pick(k), pick(v), d, spec, padding, globals_, extra))
        order += heads
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if order != list(range(H)):
        out = out.index_select(1, torch.tensor(order, device=q.device).argsort())

    if globals_ is not None:
        out = globals_.overwrite_rows(out, _global_rows(spec, globals_, padding, q.dtype))
    if padding is not None:
        out = out.masked_fill(padding[:, None, :, None], 0.0)
    return out.to(out_dtype)


class _GlobalTokens:
    """Positions of each row's global tokens, left-aligned and padded to the batch's largest count."""

    def __init__(self, index: torch.Tensor, valid: torch.Tensor):
        self.index = index  # [B, G] token positions
        self.valid = valid  # [B, G] False for the fill entries of rows with fewer globals

    @classmethod
    def gather(cls, global_mask: torch.Tensor) -> "_GlobalTokens":
        count = int(global_mask.sum(dim=1).max())
        # A stable sort puts each row's global positions first, in order.
        index = torch.argsort((~global_mask).to(torch.int8), dim=1, stable=True)[:, :count]
        return cls(index, global_mask.gather(1, index))

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, D] -> [B, H, G, D]`` at the global positions."""
        B, H, _, D = x.shape
        return x.gather(2, self.index[:, None, :, None].expand(B, H, -1, D))

    def overwrite_rows(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Replace the global tokens' output rows by ``rows`` (fill entries keep what was there)."""
        B, H, _, D = out.shape
        index = self.index[:, None, :, None].expand(B, H, -1, D)
        rows = torch.where(self.valid[:, None, :, None], rows.to(out.dtype), out.gather(2, index))
        return out.scatter(2, index, rows)


def _global_rows(spec: AttentionSpec, globals_: _GlobalTokens, padding, compute_dtype) -> torch.Tensor:
    """Global queries attend every non-padding key with the global projections: ``[B, H, G, D]``."""
    q_rows = globals_.take(spec.q_global).to(compute_dtype)
    keys_ok = torch.ones_like(spec.global_mask) if padding is None else ~padding
    # Fill rows (not real globals) see every key so their softmax is defined; they are discarded.
    allowed = keys_ok[:, None, None, :] | ~globals_.valid[:, None, :, None]
    return F.scaled_dot_product_attention(
        q_rows, spec.k_global.to(compute_dtype), spec.v_global.to(compute_dtype),
        attn_mask=allowed, dropout_p=spec.dropout_p, scale=spec.scale,
    )


def _dilated_window(q, k, v, d: int, spec: AttentionSpec, padding, globals_, extra) -> torch.Tensor:
    """Window attention for heads sharing dilation ``d``: ``[B, Hg, T, D] -> [B, Hg, T, D]``."""
    B, Hg, T, D = q.shape
    n = math.ceil(T / d)
    # Token t = i*d + r goes to residue sequence r at index i: [B, Hg, d, n, D].
    q, k, v = (_by_residue(x, d, n) for x in (q, k, v))
    position = torch.arange(n * d, device=q.device).view(n, d).t()  # [d, n]
    key_ok = (position < T).expand(B, d, n)
    if padding is not None:
        key_ok = key_ok & ~F.pad(padding, (0, n * d - T)).view(B, n, d).transpose(1, 2)
    extra_mask = None
    if extra is not None:
        # Global keys already inside the query's window are scored there; don't count them twice.
        delta = position[None, :, :, None] - globals_.index[:, None, None, :]  # [B, d, n, G]
        extra_mask = globals_.valid[:, None, None, :] & ~in_window(delta, spec.window, d, spec.causal)
        extra = tuple(x[:, :, None].expand(B, Hg, d, *x.shape[2:]) for x in extra)
    out = _banded(q, k, v, key_ok, spec, extra, extra_mask)  # [B, Hg, d, n, D]
    return out.transpose(2, 3).reshape(B, Hg, n * d, D)[:, :, :T]


def _by_residue(x: torch.Tensor, d: int, n: int) -> torch.Tensor:
    """``[B, H, T, D] -> [B, H, d, n, D]`` grouping tokens by position mod ``d`` (zero-padded to n*d)."""
    B, H, T, D = x.shape
    x = F.pad(x, (0, 0, 0, n * d - T))
    return x.view(B, H, n, d, D).transpose(2, 3)


def _banded(q, k, v, key_ok, spec: AttentionSpec, extra, extra_mask) -> torch.Tensor:
    """Undilated window attention on ``[B, Hg, S, n, D]`` (``S`` residue sequences).

    ``key_ok`` ``[B, S, n]`` marks real, non-padding tokens; padding queries see every key (their
    output is zeroed by the caller) so that no softmax row is empty. ``extra`` are ``G`` keys/values
    ``[B, Hg, S, G, D]`` appended to every block, visible where ``extra_mask`` ``[B, S, n, G]``.
    """
    B, Hg, S, n, D = q.shape
    # Keys further than n - 1 away don't exist: cap the reach so short sequences pay nothing extra.
    before = min(reach(spec.window, spec.causal), n - 1)
    after = 0 if spec.causal else before
    window = before if spec.causal else 2 * before
    block = min(n, max(MIN_BLOCK, min(MAX_BLOCK, before)))
    blocks = math.ceil(n / block)
    span = before + block + after
    n_pad = blocks * block
    N = B * S * blocks  # one SDPA batch entry per query block

    def rows(x):  # [B, Hg, S, n, D] -> [B*S*n_pad, Hg, D]: token-major, heads inner
        x = F.pad(x.permute(0, 2, 3, 1, 4), (0, 0, 0, 0, 0, n_pad - n))
        return x.reshape(B * S * n_pad, Hg, D)

    def key_rows(x):  # -> [before + B*S*n_pad + after, Hg*D]
        # All B*S sequences lie end to end, so one stride walks every block's span. A span that runs
        # past its own sequence reads the neighbour's tokens (or the zero margins): masked out below.
        return F.pad(rows(x), (0, 0, 0, 0, before, after)).view(-1, Hg * D)

    def per_block(x, fill):  # [B, S, n, *] -> [N, block, *]
        x = F.pad(x, (0, 0, 0, n_pad - n), value=fill)
        return x.reshape(N, block, x.shape[-1])

    queries = rows(q).view(N, block, Hg, D).transpose(1, 2)
    k_rows, v_rows = key_rows(k), key_rows(v)
    key_ok = F.pad(key_ok, (before, n_pad - n + after), value=False)  # [B, S, before + n_pad + after]
    span_ok = key_ok.unfold(-1, span, block).reshape(N, 1, span)
    mask = band(block, span, window, spec.causal).to(q.device) & span_ok
    # Padding queries see every key so that no softmax row is empty (the caller zeroes them).
    query_pad = per_block(~key_ok[..., before:before + n, None], True)

    # Heads sit in the attention head dim so the [N, 1, block, keys] mask broadcasts over them.
    if extra is None and spec.dropout_p == 0.0 and q.device.type == "cpu":
        out = _SpanAttention.apply(queries, k_rows, v_rows, (mask | query_pad)[:, None], span, block, spec.scale)
    else:
        keys, values = _spans(k_rows, N, Hg, span, block), _spans(v_rows, N, Hg, span, block)
        if extra is not None:
            def with_extra(spans, x):  # the G global keys join every block's span (this copies the spans)
                x = x[:, :, :, None].expand(B, Hg, S, blocks, *x.shape[-2:]).permute(0, 2, 3, 1, 4, 5)
                return torch.cat([spans, x.reshape(N, Hg, -1, D)], dim=-2)

            keys, values = with_extra(keys, extra[0]), with_extra(values, extra[1])
            mask = torch.cat([mask.expand(N, block, span), per_block(extra_mask, False)], dim=-1)
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=(mask | query_pad)[:, None], dropout_p=spec.dropout_p,
            scale=spec.scale,
        )  # [N, Hg, block, D]
    out = out.view(B, S, blocks, Hg, block, D).permute(0, 3, 1, 2, 4, 5)
    return out.reshape(B, Hg, S, n_pad, D)[..., :n, :]


def _spans(rows: torch.Tensor, N: int, Hg: int, span: int, block: int) -> torch.Tensor:
    """``[R, Hg*D]`` token rows -> ``[N, Hg, span, D]``: block ``j`` sees rows ``j*block`` to
    ``j*block + span``. Overlapping strided views; nothing is copied."""
    return rows.unfold(0, span, block).view(N, Hg, -1, span).transpose(-1, -2)


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _SpanAttention(torch.autograd.Function):
    """SDPA over the span views on CPU, with a backward that folds the span gradients itself.

    Autograd would route the span-sized gradients through ``unfold_backward``; here each span
    gradient is added back into its token rows with ``ceil(span / block)`` strided, non-overlapping
    ``add_``. Only the boolean mask is kept for the backward (a float one is 4x the bytes).
    """

    @staticmethod
    def forward(ctx, queries, key_rows, value_rows, mask, span, block, scale):
        N, Hg = queries.shape[:2]
        keys, values = _spans(key_rows, N, Hg, span, block), _spans(value_rows, N, Hg, span, block)
        out, lse = _flash(queries, keys, values, attn_mask=_additive(mask, queries.dtype), scale=scale)
        ctx.save_for_backward(queries, key_rows, value_rows, mask, out, lse)
        ctx.span, ctx.block, ctx.scale = span, block, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        queries, key_rows, value_rows, mask, out, lse = ctx.saved_tensors
        N, Hg = queries.shape[:2]
        span, block = ctx.span, ctx.block
        keys, values = _spans(key_rows, N, Hg, span, block), _spans(value_rows, N, Hg, span, block)
        grad_q, grad_keys, grad_values = _flash_backward(
            grad_out, queries, keys, values, out, lse, 0.0, False,
            attn_mask=_additive(mask, queries.dtype), scale=ctx.scale)
        grad_key_rows = _fold(grad_keys, key_rows, block)
        del grad_keys  # free each span gradient before the next fold allocates
        grad_value_rows = _fold(grad_values, value_rows, block)
        return grad_q, grad_key_rows, grad_value_rows, None, None, None, None


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def _fold(span_grads: torch.Tensor, rows: torch.Tensor, block: int) -> torch.Tensor:
    """Sum ``[N, Hg, span, D]`` span gradients back into ``[R, Hg*D]`` token rows."""
    N, Hg, span, D = span_grads.shape
    grad_rows = torch.zeros_like(rows)
    for start in range(0, span, block):
        length = min(block, span - start)
        # Block j's keys start..start+length sit at rows j*block + start ...: disjoint across j.
        target = grad_rows.as_strided((N, length, Hg, D), (block * Hg * D, Hg * D, D, 1), start * Hg * D)
        target.add_(span_grads[:, :, start:start + length].transpose(1, 2))
    return grad_rows
