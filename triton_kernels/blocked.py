"""The ``torch`` backend: blocked sliding-window attention over ``scaled_dot_product_attention``.

O(T·w) time and memory, forward and backward, no T x T tensor anywhere.

* **Blocks.** Queries are cut into blocks of ``b``; block ``j`` only needs the key span reaching
  ``reach`` keys before (and, non-causal, after) it. Spans are overlapping views (``unfold``) of
  token-major key rows, so batched flash-attention calls score every block against its own span
  under one shared band mask (on CPU in chunks of blocks, with its own span-folding backward,
  ``_SpanAttention``; elsewhere one SDPA call under autograd).
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
from .masks import band, global_positions, in_window, reaches

# Query block length: half the reach, within these bounds. Spans cost (b + 2*reach) keys per block for
# 2*reach + 1 useful ones; smaller blocks waste less but give SDPA smaller matmuls. Measured on CPU, 1 thread,
# T = 4,096, forward and forward+backward: reach/2 was best or within 15% of the best block for windows 256,
# 512 and 1,024 (at window 512 the earlier rule, block = reach, took 1.07x the time forward and 1.2x
# forward+backward). Causal windows 128 and 256 (8 heads): forward within noise, forward+backward 1.15-1.2x
# faster than with block = reach, and 1.1-1.3x with dropout (the SDPA path).
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
    groups = [(_head_selector(heads, q.device), _Blocking(T, d, spec.window, spec.causal))
              for d, heads in heads_by_dilation.items()]

    q_rows = _ToRows.apply(q, groups, False)
    k_rows, v_rows = _ToRows.apply(k, groups, True), _ToRows.apply(v, groups, True)
    out_rows = []
    for i, (heads, blocking) in enumerate(groups):
        extra = None
        if globals_ is not None:
            extra = (globals_.take(k[:, heads]), globals_.take(v[:, heads]))
        out_rows.append(_group_attention(q_rows[i], k_rows[i], v_rows[i], blocking, spec, padding, globals_, extra))
    out = _FromRows.apply(groups, H, *out_rows)

    if globals_ is not None:
        out = globals_.overwrite_rows(out, _global_rows(spec, globals_, padding, q.dtype))
    if padding is not None:
        out = out.masked_fill(padding[:, None, :, None], 0.0)
    return out.to(out_dtype)


def _head_selector(heads: list[int], device) -> slice | torch.Tensor:
    """Index for ``x[:, heads]``: a slice (a view) when the heads are consecutive, else a gather."""
    if heads == list(range(heads[0], heads[-1] + 1)):
        return slice(heads[0], heads[-1] + 1)
    return torch.tensor(heads, device=device)


class _GlobalTokens:
    """Positions of each row's global tokens, left-aligned and padded to the batch's largest count."""

    def __init__(self, index: torch.Tensor, valid: torch.Tensor):
        self.index = index  # [B, G] token positions
        self.valid = valid  # [B, G] False for the fill entries of rows with fewer globals

    @classmethod
    def gather(cls, global_mask: torch.Tensor) -> "_GlobalTokens":
        return cls(*global_positions(global_mask))

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


class _Blocking:
    """How one dilation group is cut up. Heads with dilation ``d`` see only keys in their query's
    residue class: token ``t = i*d + r`` is position ``i`` of residue sequence ``r`` of length
    ``n``, on which the dilated window is a contiguous one. Each sequence is cut into ``blocks``
    query blocks of ``block`` tokens scored against ``span`` keys.

    Rows are token-major (heads inside a row): token ``i*S + r`` of batch row ``b`` sits at row
    ``(b*S + r)*n_pad + i``, so all ``B*S`` sequences lie end to end and one stride walks every
    block's span. Key rows get ``before``/``after`` zero margins; rows past a sequence's end are zeros.
    """

    def __init__(self, T: int, d: int, window: int, causal: bool):
        self.T, self.S, self.n = T, d, math.ceil(T / d)
        # Keys further than n - 1 away don't exist: cap the reach so short sequences pay nothing extra.
        before, after = reaches(window, causal)
        self.before, self.after = min(before, self.n - 1), min(after, self.n - 1)
        self.window = self.before if causal else 2 * self.before  # in residue-sequence steps
        self.causal = causal
        self.block = min(self.n, max(MIN_BLOCK, min(MAX_BLOCK, self.before // 2)))
        self.blocks = math.ceil(self.n / self.block)
        self.span = self.before + self.block + self.after
        self.n_pad = self.blocks * self.block
        self.full = T // d  # positions i at which all d residues exist
        self.rest = T - self.full * d  # residues that also exist at position ``full``

    def margins(self, keys: bool) -> tuple[int, int]:
        return (self.before, self.after) if keys else (0, 0)

    def to_rows(self, x: torch.Tensor, keys: bool) -> torch.Tensor:
        """``[B, Hg, T, D] -> [before + B*S*n_pad + after, Hg, D]`` in one pass (zero elsewhere)."""
        B, Hg, T, D = x.shape
        S, full, rest = self.S, self.full, self.rest
        before, after = self.margins(keys)
        rows = x.new_empty(before + B * S * self.n_pad + after, Hg, D)
        rows[:before].zero_()
        rows[rows.shape[0] - after:].zero_()
        grid = rows[before:before + B * S * self.n_pad].view(B, S, self.n_pad, Hg, D)
        grid[:, :, :full].copy_(x[:, :, :full * S].unflatten(2, (full, S)).permute(0, 3, 2, 1, 4))
        if rest:
            grid[:, :rest, full].copy_(x[:, :, full * S:].transpose(1, 2))
            grid[:, rest:, full].zero_()
        grid[:, :, full + (1 if rest else 0):].zero_()
        return rows

    def from_rows(self, rows: torch.Tensor, keys: bool, out: torch.Tensor) -> None:
        """The inverse gather into ``out`` ``[B, Hg, T, D]`` (which may be a view)."""
        _, Hg, D = rows.shape
        S, full, rest = self.S, self.full, self.rest
        before = self.margins(keys)[0]
        grid = rows[before:before + out.shape[0] * S * self.n_pad].view(-1, S, self.n_pad, Hg, D)
        out[:, :, :full * S].unflatten(2, (full, S)).copy_(grid[:, :, :full].permute(0, 3, 2, 1, 4))
        if rest:
            out[:, :, full * S:].copy_(grid[:, :rest, full].transpose(1, 2))


def _gather_rows(groups, rows, keys: bool, shape, like: torch.Tensor) -> torch.Tensor:
    """Every group's rows back into one ``[B, H, T, D]`` tensor; the groups cover every head once."""
    out = like.new_empty(shape)
    for (heads, blocking), r in zip(groups, rows):
        if isinstance(heads, slice):
            blocking.from_rows(r, keys, out[:, heads])
        else:
            part = out.new_empty(shape[0], len(heads), *shape[2:])
            blocking.from_rows(r, keys, part)
            out[:, heads] = part
    return out


class _ToRows(torch.autograd.Function):
    """``[B, H, T, D]`` -> one row tensor per head group. Its backward gathers all groups' gradients
    into one tensor (autograd would zero-fill a full-size gradient per group and per copy)."""

    @staticmethod
    def forward(ctx, x, groups, keys):
        ctx.groups, ctx.keys, ctx.shape = groups, keys, x.shape
        return tuple(blocking.to_rows(x[:, heads], keys) for heads, blocking in groups)

    @staticmethod
    def backward(ctx, *grad_rows):
        return _gather_rows(ctx.groups, grad_rows, ctx.keys, ctx.shape, grad_rows[0]), None, None


class _FromRows(torch.autograd.Function):
    """Every group's output rows -> one ``[B, H, T, D]`` tensor; the backward splits the gradient."""

    @staticmethod
    def forward(ctx, groups, H, *rows):
        ctx.groups = groups
        B = rows[0].shape[0] // (groups[0][1].S * groups[0][1].n_pad)
        return _gather_rows(groups, rows, False, (B, H, groups[0][1].T, rows[0].shape[-1]), rows[0])

    @staticmethod
    def backward(ctx, grad_out):
        return (None, None) + tuple(blocking.to_rows(grad_out[:, heads], False) for heads, blocking in ctx.groups)


def _group_attention(q_rows, k_rows, v_rows, blocking: _Blocking, spec: AttentionSpec, padding, globals_, extra):
    """Window attention of one dilation group on its rows: ``[B*S*n_pad, Hg, D]`` out.

    Padding queries see every key (their output is zeroed by the caller) so that no softmax row is
    empty. ``extra`` are the ``G`` global keys/values ``[B, Hg, G, D]``, appended to every block.
    """
    b = blocking
    S, n, n_pad, block, span = b.S, b.n, b.n_pad, b.block, b.span
    rows, Hg, D = q_rows.shape
    B = rows // (S * n_pad)
    N = B * S * b.blocks  # one SDPA batch entry per query block

    position = torch.arange(n * S, device=q_rows.device).view(n, S).t()  # [S, n] token of each slot
    key_ok = (position < b.T).expand(B, S, n)
    if padding is not None:
        key_ok = key_ok & ~F.pad(padding, (0, n * S - b.T)).view(B, n, S).transpose(1, 2)

    def per_block(x, fill):  # [B, S, n, *] -> [N, block, *]
        x = F.pad(x, (0, 0, 0, n_pad - n), value=fill)
        return x.reshape(N, block, x.shape[-1])

    queries = q_rows.view(N, block, Hg, D).transpose(1, 2)
    k_rows, v_rows = k_rows.view(-1, Hg * D), v_rows.view(-1, Hg * D)
    # A span that runs past its own sequence reads the neighbour's tokens (or the zero margins).
    padded_ok = F.pad(key_ok, (b.before, n_pad - n + b.after), value=False)  # [B, S, before + n_pad + after]
    span_ok = padded_ok.unfold(-1, span, block).reshape(N, span)
    query_pad = per_block(~key_ok[..., None], True)[..., 0]  # [N, block]
    allowed = band(block, span, b.window, b.causal).to(q_rows.device)

    extra_ok = None
    if extra is not None:
        # Global keys already inside the query's window are scored there; don't count them twice.
        delta = position[None, :, :, None] - globals_.index[:, None, None, :]  # [B, S, n, G]
        extra_ok = per_block(globals_.valid[:, None, None, :] & ~in_window(delta, spec.window, S, spec.causal), False)

    # Heads sit in the attention head dim so the [N, 1, block, keys] mask broadcasts over them.
    if use_span_attention(spec, q_rows):
        global_kv = extra if extra is not None else (None, None)
        out = _SpanAttention.apply(queries, k_rows, v_rows, allowed, span_ok, query_pad, block, spec.scale,
                                   *global_kv, extra_ok)
    else:
        mask = allowed & span_ok[:, None, :]
        keys, values = _spans(k_rows, N, Hg, span, block), _spans(v_rows, N, Hg, span, block)
        if extra is not None:
            def with_extra(spans, x):  # the G global keys join every block's span (this copies the spans)
                x = x[:, :, None, None].expand(B, Hg, S, b.blocks, *x.shape[-2:]).permute(0, 2, 3, 1, 4, 5)
                return torch.cat([spans, x.reshape(N, Hg, -1, D)], dim=-2)

            keys, values = with_extra(keys, extra[0]), with_extra(values, extra[1])
            mask = torch.cat([mask, extra_ok], dim=-1)
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=(mask | query_pad[:, :, None])[:, None], dropout_p=spec.dropout_p,
            scale=spec.scale,
        )  # [N, Hg, block, D]
    return out.transpose(1, 2).reshape(B * S * n_pad, Hg, D)


def use_span_attention(spec: AttentionSpec, q: torch.Tensor) -> bool:
    """Whether ``_SpanAttention`` (CPU flash calls, own backward) runs instead of one SDPA call under autograd."""
    return spec.dropout_p == 0.0 and q.device.type == "cpu"


def _spans(rows: torch.Tensor, N: int, Hg: int, span: int, block: int) -> torch.Tensor:
    """``[R, Hg*D]`` token rows -> ``[N, Hg, span, D]``: block ``j`` sees rows ``j*block`` to
    ``j*block + span``. Overlapping strided views; nothing is copied."""
    return rows.unfold(0, span, block).view(N, Hg, -1, span).transpose(-1, -2)


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _SpanAttention(torch.autograd.Function):
    """SDPA over the span views on CPU, in chunks of query blocks, with its own backward.

    Autograd would route the span-sized gradients through ``unfold_backward``; here each span
    gradient is added back into its token rows with ``ceil(span / block)`` strided, non-overlapping
    ``add_``. Chunking bounds what exists at once: the flash backward returns key and value
    gradients per span (``span / block`` times the size of k), so done for every block at once they
    would be the largest tensors of the whole op. Blocks whose keys and queries are all real share
    one ``[block, span]`` band mask; only the others (sequence ends, padding) get masks of their own.

    Global keys (``global_keys``/``global_values`` ``[B, Hg, G, D]``, ``global_ok`` ``[N, block, G]``)
    join every query's softmax without being copied into the spans: their few scores are computed
    apart (``_GlobalKeys``) and merged with the flash output through the log-sum-exp. The backward
    hands the flash kernel the merged output and log-sum-exp, which makes it return exactly the span
    part of the joint softmax's gradient.
    """

    @staticmethod
    def _chunked(queries, key_rows, value_rows, allowed, span_ok, query_pad, block):
        """The span views, the masks and the chunks: the same for the forward and the backward."""
        N, Hg, _, D = queries.shape
        span = allowed.shape[1]
        keys, values = _spans(key_rows, N, Hg, span, block), _spans(value_rows, N, Hg, span, block)
        masks = _ChunkMasks(allowed, span_ok, query_pad, queries.dtype)
        return keys, values, masks, masks.chunks(Hg * span * D * queries.element_size())

    @staticmethod
    def forward(ctx, queries, key_rows, value_rows, allowed, span_ok, query_pad, block, scale,
                global_keys=None, global_values=None, global_ok=None):
        keys, values, masks, chunks = _SpanAttention._chunked(
            queries, key_rows, value_rows, allowed, span_ok, query_pad, block)
        globals_ = None if global_keys is None else _GlobalKeys(global_keys, global_values, global_ok, scale)
        outs, lses = [], []
        for chunk in chunks:
            out, lse = _flash(queries[chunk], keys[chunk], values[chunk], attn_mask=masks[chunk], scale=scale)
            if globals_ is not None:
                out, lse = globals_.merge(queries[chunk], out, lse, chunk)
            outs.append(out)
            lses.append(lse)
        out, lse = (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))
        ctx.save_for_backward(queries, key_rows, value_rows, allowed, span_ok, query_pad, out, lse,
                              global_keys, global_values, global_ok)
        ctx.block, ctx.scale = block, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (queries, key_rows, value_rows, allowed, span_ok, query_pad, out, lse,
         global_keys, global_values, global_ok) = ctx.saved_tensors
        block = ctx.block
        keys, values, masks, chunks = _SpanAttention._chunked(
            queries, key_rows, value_rows, allowed, span_ok, query_pad, block)
        globals_ = None if global_keys is None else _GlobalKeys(global_keys, global_values, global_ok, ctx.scale)
        grad_q = torch.empty_like(queries)
        grad_key_rows, grad_value_rows = torch.zeros_like(key_rows), torch.zeros_like(value_rows)
        for chunk in chunks:
            # With the merged out and lse, the kernel's P = exp(S - lse) is the span part of the joint softmax.
            grad_q[chunk], grad_keys, grad_values = _flash_backward(
                grad_out[chunk], queries[chunk], keys[chunk], values[chunk], out[chunk], lse[chunk], 0.0, False,
                attn_mask=masks[chunk], scale=ctx.scale)
            _fold_into(grad_key_rows, grad_keys, chunk.start, block)
            _fold_into(grad_value_rows, grad_values, chunk.start, block)
            if globals_ is not None:
                grad_q[chunk] += globals_.backward(grad_out[chunk], queries[chunk], out[chunk], lse[chunk], chunk)
        grad_globals = (None, None) if globals_ is None else (globals_.grad_keys, globals_.grad_values)
        return (grad_q, grad_key_rows, grad_value_rows, None, None, None, None, None) + grad_globals + (None,)


class _GlobalKeys:
    """The ``G`` global keys every query block sees besides its span, scored apart from the flash call.

    Query block ``i`` belongs to batch row ``i // (N / B)``; a chunk's blocks take their row's keys.
    """

    def __init__(self, keys, values, ok, scale):
        self.keys, self.values, self.ok, self.scale = keys, values, ok, scale  # [B, Hg, G, D] x2, [N, block, G]
        self.blocks_per_row = ok.shape[0] // keys.shape[0]
        self.grad_keys = self.grad_values = None

    def _for(self, chunk: slice):
        rows = torch.arange(chunk.start, chunk.stop, device=self.keys.device) // self.blocks_per_row
        return rows, self.keys.index_select(0, rows), self.values.index_select(0, rows)

    def _scores(self, queries, keys, chunk):  # [n, Hg, block, G], -inf where a key is not seen
        scores = torch.matmul(queries, keys.transpose(-1, -2)) * self.scale
        return scores.masked_fill_(~self.ok[chunk][:, None], float("-inf"))

    def merge(self, queries, out, lse, chunk):
        """Fold the global keys into a chunk's flash ``out``/``lse`` (the span softmax) -> the joint ones."""
        _, keys, values = self._for(chunk)
        scores = self._scores(queries, keys, chunk)
        joint = torch.logaddexp(lse, torch.logsumexp(scores, dim=-1))  # lse is never -inf: a query sees itself
        out = out * torch.exp(lse - joint)[..., None] + torch.matmul(torch.exp(scores - joint[..., None]), values)
        return out, joint

    def backward(self, grad_out, queries, out, lse, chunk) -> torch.Tensor:
        """Gradients of the global keys' part of a chunk; returns the queries' share, keeps the keys'."""
        rows, keys, values = self._for(chunk)
        probs = torch.exp(self._scores(queries, keys, chunk) - lse[..., None])  # [n, Hg, block, G]
        grad_scores = probs * (torch.matmul(grad_out, values.transpose(-1, -2))
                               - (grad_out * out).sum(dim=-1, keepdim=True))
        if self.grad_keys is None:
            self.grad_keys, self.grad_values = torch.zeros_like(self.keys), torch.zeros_like(self.values)
        self.grad_values.index_add_(0, rows, torch.matmul(probs.transpose(-1, -2), grad_out))
        self.grad_keys.index_add_(0, rows, torch.matmul(grad_scores.transpose(-1, -2), queries) * self.scale)
        return torch.matmul(grad_scores, keys) * self.scale


# Bytes of span gradients (per tensor) one chunk may produce; about a last-level cache's worth.
CHUNK_BYTES = 16 * 2**20


class _ChunkMasks:
    """Additive masks for runs of query blocks: the shared band where every key and query of a block
    is real, ``band & key_ok | query_is_padding`` built per block elsewhere."""

    def __init__(self, allowed, span_ok, query_pad, dtype):
        self.allowed, self.span_ok, self.query_pad, self.dtype = allowed, span_ok, query_pad, dtype
        self.plain = (span_ok.all(dim=1) & ~query_pad.any(dim=1)).tolist()  # [N] blocks with the band only
        self.band = _additive(allowed, dtype)[None, None]  # [1, 1, block, span]

    def chunks(self, bytes_per_block: int) -> list[slice]:
        """Consecutive blocks, all plain or all not, producing under ``CHUNK_BYTES`` of span tensors."""
        size, runs, start = max(1, CHUNK_BYTES // bytes_per_block), [], 0
        for stop in range(1, len(self.plain) + 1):
            if stop == len(self.plain) or self.plain[stop] != self.plain[start] or stop - start == size:
                runs.append(slice(start, stop))
                start = stop
        return runs

    def __getitem__(self, chunk: slice) -> torch.Tensor:
        if self.plain[chunk.start]:
            return self.band
        allowed = self.allowed & self.span_ok[chunk, None, :] | self.query_pad[chunk, :, None]
        return _additive(allowed, self.dtype)[:, None]


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    zero, minus_inf = (torch.tensor(x, dtype=dtype, device=allowed.device) for x in (0.0, float("-inf")))
    return torch.where(allowed, zero, minus_inf)


def _fold_into(grad_rows: torch.Tensor, span_grads: torch.Tensor, first_block: int, block: int) -> None:
    """Add ``[n, Hg, span, D]`` gradients of blocks ``first_block ...`` into ``[R, Hg*D]`` token rows."""
    n, Hg, span, D = span_grads.shape
    for start in range(0, span, block):
        length = min(block, span - start)
        # Block j's keys start..start+length sit at rows j*block + start ...: disjoint across j.
        offset = (first_block * block + start) * Hg * D
        target = grad_rows.as_strided((n, length, Hg, D), (block * Hg * D, Hg * D, D, 1), offset)
        target.add_(span_grads[:, :, start:start + length].transpose(1, 2))
