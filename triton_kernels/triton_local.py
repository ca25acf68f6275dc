"""Triton kernels of the *local* pass: non-global queries over their (dilated) window plus global keys.

Grid: ``(max tiles over heads, B*H)``. Program ``(t, b*H + h)`` reads row ``t`` of head ``h``'s plan
(``triton_schedule``): residue class ``r``, first class position, and the key/query tile ranges
to visit; edge tiles are masked, interior tiles are not. Token of class position ``p`` is
``r + p*d``, so dilation costs no wasted tiles.

Keys that are padding or global carry ``-inf`` in ``key_bias`` and so drop out of every window
(globals are instead seen once, through the extra global key tiles). The same bias tells which
query rows belong to this pass (bias 0) -- padding and global rows are skipped here.

Each kernel walks its tiles with one loop helper of ``triton_tiles`` called once per stage:
``[lo, ilo)`` edge, ``[ilo, ihi)`` interior, ``[ihi, hi)`` edge, then the global key tiles.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import triton_schedule as schedule
from .triton_tiles import (EDGE, GATHERED, INTERIOR, Dropout, KeySide, Reach, Tokens, batch_head, finish_rows,
                           head_cols, head_slice, kv_grad_range, load_rows, local_rows, q_grad_range,
                           query_grad_rows, query_side, softmax_range, store_rows, tile_tokens, token_bias)

# The plan's row layout, as constants a kernel can read; triton_schedule.py defines it.
ROW_WIDTH = tl.constexpr(schedule.ROW_WIDTH)
ROW_CLASS = tl.constexpr(schedule.ROW_CLASS)
ROW_START = tl.constexpr(schedule.ROW_START)
ROW_LO = tl.constexpr(schedule.ROW_LO)
ROW_ILO = tl.constexpr(schedule.ROW_ILO)
ROW_IHI = tl.constexpr(schedule.ROW_IHI)
ROW_HI = tl.constexpr(schedule.ROW_HI)
ROW_LEN = tl.constexpr(schedule.ROW_LEN)


@triton.jit
def _program(Plan, NTiles, Dil, H, max_tiles, head_dim, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """What program ``(t, b*H + h)`` works on: ``b, h, b*H + h``; the number of tiles in head ``h``'s
    plan (rows ``t`` past it have nothing to do); from row ``t``, its own tile (class positions,
    tokens, in-class flags), its residue class as a ``Tokens`` list and the ranges ``lo, ilo, ihi, hi``
    of the tiles it loops over (list positions); and the head-dimension columns."""
    t = tl.program_id(0)
    b, h, bh = batch_head(H, 1)
    row = Plan + (h * max_tiles + t) * ROW_WIDTH
    cls = Tokens(tl.load(row + ROW_CLASS), tl.load(Dil + h), tl.load(row + ROW_LEN), 0)
    own = tile_tokens(cls, tl.load(row + ROW_START), INTERIOR, BLOCK)
    ranges = (tl.load(row + ROW_LO), tl.load(row + ROW_ILO), tl.load(row + ROW_IHI), tl.load(row + ROW_HI))
    return b, h, bh, tl.load(NTiles + h), own, cls, ranges, head_cols(head_dim, BLOCK_D)


@triton.jit
def _global_keys(GIdx, GCount, b, g_max):
    """Batch row ``b``'s global tokens as a gathered ``Tokens`` list."""
    return Tokens(0, 1, tl.load(GCount + b), GIdx + b.to(tl.int64) * g_max)


@triton.jit
def local_fwd_kernel(
    Q, K, V, Out, Lse, KeyBias, GIdx, GCount, Plan, NTiles, Dil, q_strides, k_strides, v_strides, o_strides,
    H, seq_len, head_dim, max_tiles, g_max, qk_scale, reach_left, reach_right, p_drop, seed,
    HAS_BIAS: tl.constexpr, HAS_GLOBAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h, bh, n_tiles, own, cls, ranges, cols = _program(Plan, NTiles, Dil, H, max_tiles, head_dim, BLOCK_M, BLOCK_D)
    if tl.program_id(0) >= n_tiles:
        return
    offs_m, tok_m, m_ok = own
    lo, ilo, ihi, hi = ranges
    bias = KeyBias + b.to(tl.int64) * seq_len
    keys = KeySide(head_slice(K, k_strides, b, h), head_slice(V, v_strides, b, h), cols, cls, bias)
    reach = Reach(reach_left, reach_right)
    drop = Dropout(seed, bh, seq_len, p_drop)
    q = load_rows(head_slice(Q, q_strides, b, h), tok_m, m_ok, cols)
    rows = (offs_m, tok_m)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = softmax_range(acc, m_i, l_i, q, rows, keys, lo * BLOCK_N, ilo * BLOCK_N, reach, drop, qk_scale,
                                  EDGE, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    acc, m_i, l_i = softmax_range(acc, m_i, l_i, q, rows, keys, ilo * BLOCK_N, ihi * BLOCK_N, reach, drop,
                                  qk_scale, INTERIOR, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    acc, m_i, l_i = softmax_range(acc, m_i, l_i, q, rows, keys, ihi * BLOCK_N, hi * BLOCK_N, reach, drop, qk_scale,
                                  EDGE, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    if HAS_GLOBAL:
        glob = KeySide(keys.k, keys.v, cols, _global_keys(GIdx, GCount, b, g_max), bias)
        acc, m_i, l_i = softmax_range(acc, m_i, l_i, q, rows, glob, 0, glob.tokens.length, reach, drop, qk_scale,
                                      GATHERED, False, DROPOUT, PRECISION, BLOCK_N)

    out, lse = finish_rows(acc, m_i, l_i)
    # padding rows output 0; global rows are overwritten by the global pass afterwards
    row_ok = local_rows(bias, tok_m, m_ok, HAS_BIAS)
    out = tl.where(row_ok[:, None], out, 0.0)
    store_rows(head_slice(Out, o_strides, b, h), out, tok_m, m_ok, cols)
    tl.store(Lse + bh.to(tl.int64) * seq_len + tok_m, lse, mask=row_ok)


@triton.jit
def local_bwd_dq_kernel(
    Q, K, V, DO, DQ, Lse, Delta, KeyBias, GIdx, GCount, Plan, NTiles, Dil,
    q_strides, k_strides, v_strides, do_strides, dq_strides,
    H, seq_len, head_dim, max_tiles, g_max, qk_scale, sm_scale, reach_left, reach_right, p_drop, seed,
    HAS_BIAS: tl.constexpr, HAS_GLOBAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h, bh, n_tiles, own, cls, ranges, cols = _program(Plan, NTiles, Dil, H, max_tiles, head_dim, BLOCK_M, BLOCK_D)
    if tl.program_id(0) >= n_tiles:
        return
    offs_m, tok_m, m_ok = own
    lo, ilo, ihi, hi = ranges
    queries = query_side(Q, DO, Lse, Delta, KeyBias, q_strides, do_strides, b, h, bh, seq_len, cols, cls)
    keys = KeySide(head_slice(K, k_strides, b, h), head_slice(V, v_strides, b, h), cols, cls, queries.bias)
    reach = Reach(reach_left, reach_right)
    drop = Dropout(seed, bh, seq_len, p_drop)
    grad_rows = query_grad_rows(queries, tok_m, m_ok, local_rows(queries.bias, tok_m, m_ok, HAS_BIAS))
    rows = (offs_m, tok_m)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = q_grad_range(dq, grad_rows, rows, keys, lo * BLOCK_N, ilo * BLOCK_N, reach, drop, qk_scale,
                      EDGE, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    dq = q_grad_range(dq, grad_rows, rows, keys, ilo * BLOCK_N, ihi * BLOCK_N, reach, drop, qk_scale,
                      INTERIOR, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    dq = q_grad_range(dq, grad_rows, rows, keys, ihi * BLOCK_N, hi * BLOCK_N, reach, drop, qk_scale,
                      EDGE, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    if HAS_GLOBAL:
        glob = KeySide(keys.k, keys.v, cols, _global_keys(GIdx, GCount, b, g_max), keys.bias)
        dq = q_grad_range(dq, grad_rows, rows, glob, 0, glob.tokens.length, reach, drop, qk_scale,
                          GATHERED, False, DROPOUT, PRECISION, BLOCK_N)
    store_rows(head_slice(DQ, dq_strides, b, h), dq * sm_scale, tok_m, m_ok, cols)


@triton.jit
def local_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta, KeyBias, Plan, NTiles, Dil,
    q_strides, k_strides, v_strides, do_strides, dk_strides, dv_strides,
    H, seq_len, head_dim, max_tiles, qk_scale, sm_scale, reach_left, reach_right, p_drop, seed,
    HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per key tile (``BLOCK_N`` keys); loops over the query tiles whose windows reach it.

    ``Plan`` here is the key-centric plan (reaches swapped), and ``reach_left``/``reach_right``
    are the *query-side* reaches, used unchanged in the window test ``i - j``.
    """
    b, h, bh, n_tiles, own, cls, ranges, cols = _program(Plan, NTiles, Dil, H, max_tiles, head_dim, BLOCK_N, BLOCK_D)
    if tl.program_id(0) >= n_tiles:
        return
    offs_n, tok_n, n_ok = own
    lo, ilo, ihi, hi = ranges
    queries = query_side(Q, DO, Lse, Delta, KeyBias, q_strides, do_strides, b, h, bh, seq_len, cols, cls)
    reach = Reach(reach_left, reach_right)
    drop = Dropout(seed, bh, seq_len, p_drop)
    k = load_rows(head_slice(K, k_strides, b, h), tok_n, n_ok, cols)
    v = load_rows(head_slice(V, v_strides, b, h), tok_n, n_ok, cols)
    keys = (offs_n, tok_n, token_bias(queries.bias, tok_n, n_ok, HAS_BIAS))

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk, dv = kv_grad_range(dk, dv, k, v, keys, queries, lo * BLOCK_M, ilo * BLOCK_M, reach, drop, qk_scale,
                           EDGE, HAS_BIAS, HAS_BIAS, DROPOUT, PRECISION, BLOCK_M)
    dk, dv = kv_grad_range(dk, dv, k, v, keys, queries, ilo * BLOCK_M, ihi * BLOCK_M, reach, drop, qk_scale,
                           INTERIOR, HAS_BIAS, HAS_BIAS, DROPOUT, PRECISION, BLOCK_M)
    dk, dv = kv_grad_range(dk, dv, k, v, keys, queries, ihi * BLOCK_M, hi * BLOCK_M, reach, drop, qk_scale,
                           EDGE, HAS_BIAS, HAS_BIAS, DROPOUT, PRECISION, BLOCK_M)
    store_rows(head_slice(DK, dk_strides, b, h), dk * sm_scale, tok_n, n_ok, cols)
    store_rows(head_slice(DV, dv_strides, b, h), dv, tok_n, n_ok, cols)


@triton.jit
def row_dot_kernel(O, DO, Delta, o_strides, do_strides, H, seq_len, head_dim,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Backward preprocessing: ``Delta[b, h, t] = dO[b, h, t] . O[b, h, t]`` in float32.

    (Delta_i = sum_j P_ij dP_ij, the softmax-backward row term; it holds with dropout too.) One read
    of O and dO in their own dtype instead of two float32 copies.
    """
    b, h, bh = batch_head(H, 1)
    tok = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = tok < seq_len
    cols = head_cols(head_dim, BLOCK_D)
    o = load_rows(head_slice(O, o_strides, b, h), tok, ok, cols)
    do = load_rows(head_slice(DO, do_strides, b, h), tok, ok, cols)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * seq_len + tok, delta, mask=ok)
