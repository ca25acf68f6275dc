"""Triton building blocks shared by the local and global kernels: tile loads, masks, dropout, and the
three tile loops (forward, dQ, dK/dV) that every kernel runs over its key or query tiles.

Conventions of every kernel here:

* scores live in the log2 domain: ``s = q.k * scale * log2(e)``, so softmax uses ``exp2``;
  the saved log-sum-exp ``lse`` is in the same units, ``p = exp2(s - lse)``;
* a row that must not contribute (padding, global row in the local pass, past the end) gets
  ``lse = +inf`` in backward so its probabilities recompute as exactly 0;
* everything is float32 from the dot products on; tiles are cast back to the input dtype only to
  feed the next dot product (the paper's "attention math in fp32").

The loops follow Triton's fused-attention tutorial: one function walks a range of tiles, and a
``tl.constexpr`` ``STAGE`` says where the tiles' tokens come from and what they must mask, so the
compiler builds one specialised loop per call site. Arguments travel grouped in small named tuples
(``HeadSlice``, ``Tokens``, ``Dropout``, ...) rather than as dozens of positional integers.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import triton
import triton.language as tl

# Triton's CPU interpreter multiplies bfloat16 tiles as their raw uint16 bits (triton 3.x
# ``create_dot``), so under TRITON_INTERPRET=1 bf16 dot operands are widened to fp32 first.
# Compiled GPU kernels are untouched.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

# STAGE of a tile loop: where a tile's tokens come from and which of its pairs are masked.
EDGE = tl.constexpr(0)  # window tiles crossing a window border: window rule and list end masked
INTERIOR = tl.constexpr(1)  # window tiles wholly inside every row's window: nothing masked
SPAN = tl.constexpr(2)  # a plain run of positions (step 1 or a residue class): only the end is masked
GATHERED = tl.constexpr(3)  # positions listed in memory (the global tokens): only the end is masked


class HeadSlice(NamedTuple):
    """The ``[T, D]`` slice of one (batch, head) of a ``[B, H, T, D]`` tensor: first element, strides."""

    base: tl.tensor
    stride_t: tl.tensor
    stride_d: tl.tensor


class Cols(NamedTuple):
    """The head-dimension columns of a tile: ``BLOCK_D`` offsets, of which the first ``head_dim`` are real."""

    offs: tl.tensor
    ok: tl.tensor


class Tokens(NamedTuple):
    """A list of tokens walked tile by tile: entry ``p < length`` is token ``first + p*step`` (a residue
    class, or ``step = 1`` for a plain run) or, for ``GATHERED`` loops, ``index[p]``."""

    first: tl.tensor
    step: tl.tensor
    length: tl.tensor
    index: tl.tensor


class Dropout(NamedTuple):
    """What names the Philox draw of a (query, key) pair: ``seed``, the ``b*H + h`` slot, T and ``p``."""

    seed: tl.tensor
    slot: tl.tensor
    seq_len: tl.tensor
    p: tl.tensor


class Reach(NamedTuple):
    """The window in class coordinates: query ``i`` sees key ``j`` iff ``-right <= i - j <= left``."""

    left: tl.tensor
    right: tl.tensor


class KeySide(NamedTuple):
    """Everything a query tile needs to walk its key tiles: k and v, which tokens, and a 0/-inf bias
    per key token (read where ``HAS_BIAS``: padding, and global tokens in the local pass)."""

    k: HeadSlice
    v: HeadSlice
    cols: Cols
    tokens: Tokens
    bias: tl.tensor


class QuerySide(NamedTuple):
    """Everything a key tile needs to walk its query tiles in backward: q, dO, the per-token lse and
    Delta rows of this (batch, head), which tokens, and the per-token bias that tells the local
    pass's rows (bias 0) from padding and global rows (read where ``LOCAL_ROWS``)."""

    q: HeadSlice
    do: HeadSlice
    lse: tl.tensor
    delta: tl.tensor
    cols: Cols
    tokens: Tokens
    bias: tl.tensor


@triton.jit
def mma(a, b, PRECISION: tl.constexpr):
    """``a @ b`` with a float32 accumulator (tl.dot), working around the interpreter's bf16 bug."""
    if INTERPRETED and a.dtype == tl.bfloat16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def batch_head(H, AXIS: tl.constexpr):
    """``(b, h, b*H + h)`` of this program, whose grid axis ``AXIS`` runs over ``B*H``."""
    bh = tl.program_id(AXIS)
    return bh // H, bh % H, bh


@triton.jit
def head_slice(X, strides, b, h):
    """Batch ``b``, head ``h`` of ``X``, given ``strides = X.stride()`` (4 ints)."""
    return HeadSlice(X + b.to(tl.int64) * strides[0] + h.to(tl.int64) * strides[1], strides[2], strides[3])


@triton.jit
def head_cols(head_dim, BLOCK_D: tl.constexpr):
    offs = tl.arange(0, BLOCK_D)
    return Cols(offs, offs < head_dim)


@triton.jit
def load_rows(x, tok, ok, cols):
    """Rows ``tok`` (any token order, e.g. a residue class or gathered globals) of a ``HeadSlice``."""
    ptrs = x.base + tok[:, None].to(tl.int64) * x.stride_t + cols.offs[None, :] * x.stride_d
    return tl.load(ptrs, mask=ok[:, None] & cols.ok[None, :], other=0.0)


@triton.jit
def store_rows(x, value, tok, ok, cols):
    ptrs = x.base + tok[:, None].to(tl.int64) * x.stride_t + cols.offs[None, :] * x.stride_d
    tl.store(ptrs, value.to(x.base.dtype.element_ty), mask=ok[:, None] & cols.ok[None, :])


@triton.jit
def tile_tokens(src, p0, STAGE: tl.constexpr, BLOCK: tl.constexpr):
    """Entries ``p0 .. p0 + BLOCK`` of the list ``src`` (``Tokens``): positions, tokens, in-list flags."""
    offs = p0 + tl.arange(0, BLOCK)
    ok = offs < src.length
    if STAGE == GATHERED:
        tok = tl.load(src.index + offs, mask=ok, other=0)
    else:
        tok = src.first + offs * src.step
    return offs, tok, ok


@triton.jit
def token_bias(bias, tok, ok, HAS_BIAS: tl.constexpr):
    """0 / -inf per token of a tile: the tensor ``bias`` where ``HAS_BIAS``, and -inf past the list's end.

    (``INTERIOR`` tiles are whole tiles of their list: without a bias, their callers skip the add.)
    """
    if HAS_BIAS:
        out = tl.load(bias + tok, mask=ok, other=float("-inf"))
    else:
        out = tl.where(ok, 0.0, float("-inf"))
    return out


@triton.jit
def local_rows(bias, tok, ok, LOCAL_ROWS: tl.constexpr):
    """``ok`` narrowed to the local pass's rows (bias 0: neither padding nor global) where ``LOCAL_ROWS``."""
    if LOCAL_ROWS:
        ok = ok & (tl.load(bias + tok, mask=ok, other=float("-inf")) == 0.0)
    return ok


@triton.jit
def window_ok(pos_q, pos_k, reach):
    """Class-coordinate window rule (dilation already removed), the same as ``masks.in_window``.

    ``pos_q``/``pos_k`` are broadcast by the caller ([M,1]x[1,N], or transposed for key-major tiles).
    """
    delta = pos_q - pos_k
    return (delta <= reach.left) & (delta >= -reach.right)


@triton.jit
def dropout_scale(drop, tok_q, tok_k):
    """``keep / (1 - p)`` for (query token, key token) pairs of one (batch, head).

    ``tok_q`` and ``tok_k`` are already broadcast to the tile's shape ([M,1] and [1,N], or
    transposed for key-major tiles). The Philox counter is the pair's flat index
    ``(bh*T + i)*T + j`` in int64, so every kernel regenerates the same mask whatever its tiling.
    """
    offs = (drop.slot.to(tl.int64) * drop.seq_len + tok_q.to(tl.int64)) * drop.seq_len + tok_k.to(tl.int64)
    keep = tl.rand(drop.seed, offs) >= drop.p
    return tl.where(keep, 1.0 / (1.0 - drop.p), 0.0)


@triton.jit
def online_softmax_step(acc, m_i, l_i, s, v, z, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one tile of log2-domain scores ``s`` [M, N] and values ``v`` [N, D] into the running sums.

    Rows whose scores are all ``-inf`` so far stay at zero (no NaN): their shift is taken as 0.
    Dropout (``z`` = keep/(1-p)) scales what reaches ``acc`` but not the normaliser ``l``.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - shift)
    p = tl.exp2(s - shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if DROPOUT:
        p = p * z
    acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PRECISION)
    return acc, m_new, l_i


@triton.jit
def finish_rows(acc, m_i, l_i):
    """Normalised output rows and their log2-domain log-sum-exp (+inf where a row saw no key)."""
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    return out, lse


@triton.jit
def query_side(Q, DO, Lse, Delta, Bias, q_strides, do_strides, b, h, bh, seq_len, cols, tokens):
    """The ``QuerySide`` of (batch ``b``, head ``h``) over the query list ``tokens``."""
    return QuerySide(head_slice(Q, q_strides, b, h), head_slice(DO, do_strides, b, h),
                     Lse + bh.to(tl.int64) * seq_len, Delta + bh.to(tl.int64) * seq_len, cols, tokens,
                     Bias + b.to(tl.int64) * seq_len)


@triton.jit
def query_grad_rows(src, tok, ok, row_ok):
    """q (rows ``ok``), dO, lse (+inf off ``row_ok``) and Delta of query tokens ``tok`` (``QuerySide``)."""
    q = load_rows(src.q, tok, ok, src.cols)
    do = load_rows(src.do, tok, row_ok, src.cols)
    lse = tl.load(src.lse + tok, mask=row_ok, other=float("inf"))
    delta = tl.load(src.delta + tok, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _scores(q, rows, keys, p0, reach, qk_scale, STAGE: tl.constexpr, HAS_BIAS: tl.constexpr,
            PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tile at list position ``p0``: its tokens, k, v, and the masked log2-domain scores [M, N].

    Masked pairs get -inf: outside the window (``EDGE``), past the end of the key list, and keys
    whose ``bias`` is -inf where ``HAS_BIAS``. (Masking ``s`` in place, rather than adding an [M, N]
    bias, keeps one score tile live, not two.)
    """
    offs_n, tok_n, n_ok = tile_tokens(keys.tokens, p0, STAGE, BLOCK_N)
    k = load_rows(keys.k, tok_n, n_ok, keys.cols)
    v = load_rows(keys.v, tok_n, n_ok, keys.cols)
    s = mma(q, tl.trans(k), PRECISION) * qk_scale
    if STAGE == EDGE:
        s = tl.where(window_ok(rows[0][:, None], offs_n[None, :], reach) & n_ok[None, :], s, float("-inf"))
    elif STAGE != INTERIOR and not HAS_BIAS:  # the end of a SPAN or GATHERED list
        s = tl.where(n_ok[None, :], s, float("-inf"))
    if HAS_BIAS:
        s = s + tl.load(keys.bias + tok_n, mask=n_ok, other=float("-inf"))[None, :]
    return tok_n, k, v, s


@triton.jit
def softmax_range(acc, m_i, l_i, q, rows, keys, first, last, reach, drop, qk_scale,
                  STAGE: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Forward: fold the key tiles at list positions ``[first, last)`` into the online softmax of the
    query tile ``q`` whose rows are ``rows = (class positions, tokens)``."""
    for p0 in range(first, last, BLOCK_N):
        tok_n, k, v, s = _scores(q, rows, keys, p0, reach, qk_scale, STAGE, HAS_BIAS, PRECISION, BLOCK_N)
        z = s
        if DROPOUT:
            z = dropout_scale(drop, rows[1][:, None], tok_n[None, :])
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, z, DROPOUT, PRECISION)
    return acc, m_i, l_i


@triton.jit
def q_grad_range(dq, grad_rows, rows, keys, first, last, reach, drop, qk_scale,
                 STAGE: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward, query-major: add the key tiles at list positions ``[first, last)`` into dQ of a query
    tile; ``grad_rows = (q, dO, lse, Delta)`` of its rows. dS = P (dP Z - Delta), dQ += dS K."""
    q, do, lse, delta = grad_rows
    for p0 in range(first, last, BLOCK_N):
        tok_n, k, v, s = _scores(q, rows, keys, p0, reach, qk_scale, STAGE, HAS_BIAS, PRECISION, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        dp = mma(do, tl.trans(v), PRECISION)
        if DROPOUT:
            dp = dp * dropout_scale(drop, rows[1][:, None], tok_n[None, :])
        ds = p * (dp - delta[:, None])
        dq += mma(ds.to(k.dtype), k, PRECISION)
    return dq


@triton.jit
def kv_grad_range(dk, dv, k, v, cols_n, queries, first, last, reach, drop, qk_scale,
                  STAGE: tl.constexpr, KEY_BIAS: tl.constexpr, LOCAL_ROWS: tl.constexpr,
                  DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr):
    """Backward, key-major: add the query tiles at list positions ``[first, last)`` of ``queries``
    (``QuerySide``) into dK, dV of one key tile ``k``, ``v`` whose keys are
    ``cols_n = (class positions, tokens, 0/-inf bias per key)``; the bias is added where ``KEY_BIAS``.

    Scores are formed as K Q^T so P^T and dS^T come out of the dot products already in the
    orientation dV += P^T dO and dK += dS^T Q need; no float32 tile is transposed.
    """
    offs_n, tok_n, key_bias = cols_n
    for p0 in range(first, last, BLOCK_M):
        offs_m, tok_m, m_ok = tile_tokens(queries.tokens, p0, STAGE, BLOCK_M)
        row_ok = local_rows(queries.bias, tok_m, m_ok, LOCAL_ROWS)
        q, do, lse, delta = query_grad_rows(queries, tok_m, m_ok, row_ok)
        bias_t = key_bias[:, None]  # key-major: rows are this program's keys, columns the queries
        if STAGE == EDGE:
            bias_t = tl.where(window_ok(offs_m[None, :], offs_n[:, None], reach), bias_t, float("-inf"))
        s_t = mma(k, tl.trans(q), PRECISION) * qk_scale
        if STAGE == EDGE or KEY_BIAS:
            s_t = s_t + bias_t
        p_t = tl.exp2(s_t - lse[None, :])
        dp_t = mma(v, tl.trans(do), PRECISION)
        pz_t = p_t
        if DROPOUT:
            z_t = dropout_scale(drop, tok_m[None, :], tok_n[:, None])
            dp_t = dp_t * z_t
            pz_t = p_t * z_t
        dv += mma(pz_t.to(do.dtype), do, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += mma(ds_t.to(q.dtype), q, PRECISION)
    return dk, dv
