"""Triton kernels for global attention (docs/attention.md, "The contract"), O(G*T) each.

* ``global_fwd_kernel`` / ``global_bwd_dq_kernel``: the G global query rows (``q_global``) over every
  non-padding key (``k_global``, ``v_global``).
* ``global_bwd_dkdv_kernel``: dk_global/dv_global, one program per key tile, looping over the global rows.
* ``global_keys_bwd_kernel``: the extra key tile of the local pass -- what every local query sent to
  the global tokens' *local* k/v.

G is small and T long, so the three kernels that reduce over T are *split* along it: program
``(g tile, split, b*H + h)`` covers ``split_len`` keys (or queries) and writes float32 partials
``[B*H, n_splits, G, D]`` (plus the running max and sum for the softmax), which the host combines.
Without the split a launch would be only ``B*H`` programs each walking all of T.

``GIdx[b, :GCount[b]]`` lists the global tokens of batch row ``b`` in order. The tile loops are
``triton_tiles``' (``SPAN`` over a split's tokens, ``GATHERED`` over the global tokens); the global
pass has no window, so the ``Reach`` they get is a placeholder (only ``EDGE`` loops read it).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_tiles import (GATHERED, SPAN, Dropout, KeySide, Reach, Tokens, batch_head, head_cols,
                           head_slice, kv_grad_range, load_rows, q_grad_range, query_grad_rows, query_side,
                           softmax_range, store_rows, tile_tokens, token_bias)

@triton.jit
def _global_tokens(GIdx, GCount, b, g_max):
    """Batch row ``b``'s global tokens as a gathered ``Tokens`` list."""
    return Tokens(0, 1, tl.load(GCount + b), GIdx + b.to(tl.int64) * g_max)


@triton.jit
def _split(split_len, seq_len):
    """Tokens ``[start, end)`` of this program's split (grid axis 1)."""
    start = tl.program_id(1) * split_len
    return start, tl.minimum(start + split_len, seq_len)


@triton.jit
def _partial_rows(Part, bh, n_splits, g_max, offs_g, cols):
    """Pointers to rows ``offs_g`` of this split's float32 partial ``[B*H, n_splits, g_max, BLOCK_D]``."""
    row = (bh.to(tl.int64) * n_splits + tl.program_id(1)) * g_max + offs_g
    return Part + row[:, None] * cols.offs.shape[0] + cols.offs[None, :]


@triton.jit
def _split_keys(KG, VG, PadBias, k_strides, v_strides, b, h, end, seq_len, cols):
    """The global pass's keys (global projections, padding bias) up to ``end``, as a ``KeySide``."""
    return KeySide(head_slice(KG, k_strides, b, h), head_slice(VG, v_strides, b, h), cols, Tokens(0, 1, end, 0),
                   PadBias + b.to(tl.int64) * seq_len)


@triton.jit
def _global_query_program(KG, VG, PadBias, GIdx, GCount, k_strides, v_strides, H, seq_len, head_dim, g_max,
                          split_len, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """What program ``(g tile, split, b*H + h)`` of a global-query kernel works on: ``b, h, b*H + h``;
    the batch row's global tokens (tiles past their count have nothing to do); its own tile of them
    (list positions, tokens, flags); the head-dimension columns; and the split's keys ``[start, end)``."""
    b, h, bh = batch_head(H, 2)
    glob = _global_tokens(GIdx, GCount, b, g_max)
    own = tile_tokens(glob, tl.program_id(0) * BLOCK_M, GATHERED, BLOCK_M)
    cols = head_cols(head_dim, BLOCK_D)
    start, end = _split(split_len, seq_len)
    keys = _split_keys(KG, VG, PadBias, k_strides, v_strides, b, h, end, seq_len, cols)
    return b, h, bh, glob, own, cols, start, keys


@triton.jit
def global_fwd_kernel(
    QG, KG, VG, OPart, MPart, LPart, PadBias, GIdx, GCount, q_strides, k_strides, v_strides,
    H, seq_len, head_dim, g_max, split_len, n_splits, qk_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Unnormalised partial softmax of global rows over keys ``[split*split_len, +split_len)``."""
    b, h, bh, glob, own, cols, start, keys = _global_query_program(
        KG, VG, PadBias, GIdx, GCount, k_strides, v_strides, H, seq_len, head_dim, g_max, split_len, BLOCK_M, BLOCK_D)
    if tl.program_id(0) * BLOCK_M >= glob.length:
        return
    offs_g, tok_m, m_ok = own
    q = load_rows(head_slice(QG, q_strides, b, h), tok_m, m_ok, cols)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = softmax_range(acc, m_i, l_i, q, (offs_g, tok_m), keys, start, keys.tokens.length, Reach(0, 0),
                                  Dropout(seed, bh, seq_len, p_drop), qk_scale,
                                  SPAN, HAS_PAD, DROPOUT, PRECISION, BLOCK_N)
    tl.store(_partial_rows(OPart, bh, n_splits, g_max, offs_g, cols), acc, mask=m_ok[:, None])
    stat = (bh.to(tl.int64) * n_splits + tl.program_id(1)) * g_max + offs_g
    tl.store(MPart + stat, m_i, mask=m_ok)
    tl.store(LPart + stat, l_i, mask=m_ok)


@triton.jit
def global_bwd_dq_kernel(
    QG, KG, VG, DO, DQPart, Lse, Delta, PadBias, GIdx, GCount, q_strides, k_strides, v_strides, do_strides,
    H, seq_len, head_dim, g_max, split_len, n_splits, qk_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial dq_global (unscaled) of global rows from the keys of one split."""
    b, h, bh, glob, own, cols, start, keys = _global_query_program(
        KG, VG, PadBias, GIdx, GCount, k_strides, v_strides, H, seq_len, head_dim, g_max, split_len, BLOCK_M, BLOCK_D)
    if tl.program_id(0) * BLOCK_M >= glob.length:
        return
    offs_g, tok_m, m_ok = own
    queries = query_side(QG, DO, Lse, Delta, PadBias, q_strides, do_strides, b, h, bh, seq_len, cols, glob)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = q_grad_range(dq, query_grad_rows(queries, tok_m, m_ok, m_ok), (offs_g, tok_m), keys, start, keys.tokens.length,
                      Reach(0, 0), Dropout(seed, bh, seq_len, p_drop), qk_scale,
                      SPAN, HAS_PAD, DROPOUT, PRECISION, BLOCK_N)
    tl.store(_partial_rows(DQPart, bh, n_splits, g_max, offs_g, cols), dq, mask=m_ok[:, None])


@triton.jit
def global_bwd_dkdv_kernel(
    QG, KG, VG, DO, DKG, DVG, Lse, Delta, PadBias, GIdx, GCount,
    q_strides, k_strides, v_strides, do_strides, dk_strides, dv_strides,
    H, seq_len, head_dim, g_max, qk_scale, sm_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk_global/dv_global of one key tile (every row written, zeros where no global query looks)."""
    b, h, bh = batch_head(H, 1)
    cols = head_cols(head_dim, BLOCK_D)
    keys = _split_keys(KG, VG, PadBias, k_strides, v_strides, b, h, seq_len, seq_len, cols)
    offs_n, tok_n, n_ok = tile_tokens(keys.tokens, tl.program_id(0) * BLOCK_N, SPAN, BLOCK_N)
    k = load_rows(keys.k, tok_n, n_ok, cols)
    v = load_rows(keys.v, tok_n, n_ok, cols)
    key_bias = token_bias(keys.bias, tok_n, n_ok, HAS_PAD)
    glob = _global_tokens(GIdx, GCount, b, g_max)
    queries = query_side(QG, DO, Lse, Delta, PadBias, q_strides, do_strides, b, h, bh, seq_len, cols, glob)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk, dv = kv_grad_range(dk, dv, k, v, (offs_n, tok_n, key_bias), queries, 0, glob.length, Reach(0, 0),
                           Dropout(seed, bh, seq_len, p_drop), qk_scale,
                           GATHERED, True, False, DROPOUT, PRECISION, BLOCK_M)
    store_rows(head_slice(DKG, dk_strides, b, h), dk * sm_scale, tok_n, n_ok, cols)
    store_rows(head_slice(DVG, dv_strides, b, h), dv, tok_n, n_ok, cols)


@triton.jit
def global_keys_bwd_kernel(
    Q, K, V, DO, DKPart, DVPart, Lse, Delta, KeyBias, GIdx, GCount, q_strides, k_strides, v_strides, do_strides,
    H, seq_len, head_dim, g_max, split_len, n_splits, qk_scale, p_drop, seed,
    DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial (unscaled dk, dv) of the global tokens' *local* k/v from the local queries of one split."""
    b, h, bh = batch_head(H, 2)
    glob = _global_tokens(GIdx, GCount, b, g_max)
    if tl.program_id(0) * BLOCK_N >= glob.length:
        return
    offs_g, tok_n, n_ok = tile_tokens(glob, tl.program_id(0) * BLOCK_N, GATHERED, BLOCK_N)
    cols = head_cols(head_dim, BLOCK_D)
    k = load_rows(head_slice(K, k_strides, b, h), tok_n, n_ok, cols)
    v = load_rows(head_slice(V, v_strides, b, h), tok_n, n_ok, cols)
    start, end = _split(split_len, seq_len)
    # local rows only: not padding, not global (both carry -inf in KeyBias)
    queries = query_side(Q, DO, Lse, Delta, KeyBias, q_strides, do_strides, b, h, bh, seq_len, cols,
                         Tokens(0, 1, end, 0))
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk, dv = kv_grad_range(dk, dv, k, v, (offs_g, tok_n, token_bias(KeyBias, tok_n, n_ok, False)),
                           queries, start, end, Reach(0, 0), Dropout(seed, bh, seq_len, p_drop), qk_scale,
                           SPAN, True, True, DROPOUT, PRECISION, BLOCK_M)
    tl.store(_partial_rows(DKPart, bh, n_splits, g_max, offs_g, cols), dk, mask=n_ok[:, None])
    tl.store(_partial_rows(DVPart, bh, n_splits, g_max, offs_g, cols), dv, mask=n_ok[:, None])
