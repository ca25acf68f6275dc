"""Triton kernels for global attention (DESIGN.md §3), O(G*T) each.

* ``global_fwd_kernel`` / ``global_bwd_dq_kernel``: the G global query rows (``q_global``) over every
  non-padding key (``k_global``, ``v_global``).
* ``global_bwd_dkdv_kernel``: dk_global/dv_global, one program per key tile, looping over the global rows.
* ``global_keys_bwd_kernel``: the extra key tile of the local pass -- what every local query sent to
  the global tokens' *local* k/v.

G is small and T long, so the three kernels that reduce over T are *split* along it: program
``(g tile, split, b*H + h)`` covers ``split_len`` keys (or queries) and writes float32 partials
``[B*H, n_splits, G, D]`` (plus the running max and sum for the softmax), which the host combines.
Without the split a launch would be only ``B*H`` programs each walking all of T.

``GIdx[b, :GCount[b]]`` lists the global tokens of batch row ``b`` in order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_tiles import (dropout_scale, kv_grad_step, load_rows, mma, online_softmax_step, q_grad_step,
                           store_rows)


@triton.jit
def _global_rows(GIdx, GCount, b, g_max, start, BLOCK: tl.constexpr):
    offs_g = start + tl.arange(0, BLOCK)
    n_glob = tl.load(GCount + b)
    g_ok = offs_g < n_glob
    tok = tl.load(GIdx + b.to(tl.int64) * g_max + offs_g, mask=g_ok, other=0)
    return tok, g_ok, n_glob


@triton.jit
def _key_mask(PadBias, b, tok_n, n_ok, seq_len, HAS_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """0 / -inf per key column: past the end or padding."""
    bias = tl.where(n_ok, tl.zeros([BLOCK_N], dtype=tl.float32), float("-inf"))
    if HAS_PAD:
        bias = bias + tl.load(PadBias + b.to(tl.int64) * seq_len + tok_n, mask=n_ok, other=0.0)
    return bias


@triton.jit
def _partial_rows(Part, bh, split, n_splits, g_max, offs_g, offs_d):
    """Pointers to rows ``offs_g`` of the float32 partial ``[B*H, n_splits, g_max, BLOCK_D]``."""
    row = (bh.to(tl.int64) * n_splits + split) * g_max + offs_g
    return Part + row[:, None] * offs_d.shape[0] + offs_d[None, :]


@triton.jit
def global_fwd_kernel(
    QG, KG, VG, OPart, MPart, LPart, PadBias, GIdx, GCount,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    H, seq_len, head_dim, g_max, split_len, n_splits, qk_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Unnormalised partial softmax of global rows over keys ``[split*split_len, +split_len)``."""
    split = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    g0 = tl.program_id(0) * BLOCK_M
    tok_m, m_ok, n_glob = _global_rows(GIdx, GCount, b, g_max, g0, BLOCK_M)
    if g0 >= n_glob:
        return
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    k_base = KG + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = VG + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    q = load_rows(QG + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h, tok_m, m_ok, offs_d, d_ok, sq_t, sq_d)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    for n0 in range(start, end, BLOCK_N):
        tok_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = tok_n < end
        k = load_rows(k_base, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
        v = load_rows(v_base, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
        s = mma(q, tl.trans(k), PRECISION) * qk_scale
        s = s + _key_mask(PadBias, b, tok_n, n_ok, seq_len, HAS_PAD, BLOCK_N)[None, :]
        z = s
        if DROPOUT:
            z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, z, DROPOUT, PRECISION)
    offs_g = g0 + tl.arange(0, BLOCK_M)
    tl.store(_partial_rows(OPart, bh, split, n_splits, g_max, offs_g, offs_d), acc, mask=m_ok[:, None])
    stat = (bh.to(tl.int64) * n_splits + split) * g_max + offs_g
    tl.store(MPart + stat, m_i, mask=m_ok)
    tl.store(LPart + stat, l_i, mask=m_ok)


@triton.jit
def global_bwd_dq_kernel(
    QG, KG, VG, DO, DQPart, Lse, Delta, PadBias, GIdx, GCount,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    H, seq_len, head_dim, g_max, split_len, n_splits, qk_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial dq_global (unscaled) of global rows from the keys of one split."""
    split = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    g0 = tl.program_id(0) * BLOCK_M
    tok_m, m_ok, n_glob = _global_rows(GIdx, GCount, b, g_max, g0, BLOCK_M)
    if g0 >= n_glob:
        return
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    k_base = KG + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = VG + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    q = load_rows(QG + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h, tok_m, m_ok, offs_d, d_ok, sq_t, sq_d)
    do = load_rows(DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h, tok_m, m_ok, offs_d, d_ok, sdo_t, sdo_d)
    lse = tl.load(Lse + bh.to(tl.int64) * seq_len + tok_m, mask=m_ok, other=float("inf"))
    delta = tl.load(Delta + bh.to(tl.int64) * seq_len + tok_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    for n0 in range(start, end, BLOCK_N):
        tok_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = tok_n < end
        k = load_rows(k_base, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
        v = load_rows(v_base, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
        bias = _key_mask(PadBias, b, tok_n, n_ok, seq_len, HAS_PAD, BLOCK_N)[None, :]
        z = bias
        if DROPOUT:
            z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
        dq = q_grad_step(dq, q, k, v, do, lse, delta, bias, z, qk_scale, True, DROPOUT, PRECISION)
    offs_g = g0 + tl.arange(0, BLOCK_M)
    tl.store(_partial_rows(DQPart, bh, split, n_splits, g_max, offs_g, offs_d), dq, mask=m_ok[:, None])


@triton.jit
def global_bwd_dkdv_kernel(
    QG, KG, VG, DO, DKG, DVG, Lse, Delta, PadBias, GIdx, GCount,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    sdo_b, sdo_h, sdo_t, sdo_d, sdk_b, sdk_h, sdk_t, sdk_d, sdv_b, sdv_h, sdv_t, sdv_d,
    H, seq_len, head_dim, g_max, qk_scale, sm_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk_global/dv_global of one key tile (every row written, zeros where no global query looks)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tok_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = tok_n < seq_len
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    k = load_rows(KG + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
    v = load_rows(VG + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
    bias_t = _key_mask(PadBias, b, tok_n, n_ok, seq_len, HAS_PAD, BLOCK_N)[:, None]
    q_base = QG + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    do_base = DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h
    n_glob = tl.load(GCount + b)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g0 in range(0, n_glob, BLOCK_M):
        tok_m, m_ok, _ = _global_rows(GIdx, GCount, b, g_max, g0, BLOCK_M)
        q = load_rows(q_base, tok_m, m_ok, offs_d, d_ok, sq_t, sq_d)
        do = load_rows(do_base, tok_m, m_ok, offs_d, d_ok, sdo_t, sdo_d)
        lse = tl.load(Lse + bh.to(tl.int64) * seq_len + tok_m, mask=m_ok, other=float("inf"))
        delta = tl.load(Delta + bh.to(tl.int64) * seq_len + tok_m, mask=m_ok, other=0.0)
        z_t = bias_t
        if DROPOUT:
            z_t = dropout_scale(seed, bh, seq_len, tok_m[None, :], tok_n[:, None], p_drop)
        dk, dv = kv_grad_step(dk, dv, k, v, q, do, lse, delta, bias_t, z_t, qk_scale, True, DROPOUT, PRECISION)
    store_rows(DKG + b.to(tl.int64) * sdk_b + h.to(tl.int64) * sdk_h, dk * sm_scale, tok_n, n_ok,
               offs_d, d_ok, sdk_t, sdk_d)
    store_rows(DVG + b.to(tl.int64) * sdv_b + h.to(tl.int64) * sdv_h, dv, tok_n, n_ok,
               offs_d, d_ok, sdv_t, sdv_d)


@triton.jit
def global_keys_bwd_kernel(
    Q, K, V, DO, DKPart, DVPart, Lse, Delta, KeyBias, GIdx, GCount,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sdo_b, sdo_h, sdo_t, sdo_d,
    H, seq_len, head_dim, g_max, split_len, n_splits, qk_scale, p_drop, seed,
    DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial (unscaled dk, dv) of the global tokens' *local* k/v from the local queries of one split."""
    split = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    g0 = tl.program_id(0) * BLOCK_N
    tok_n, n_ok, n_glob = _global_rows(GIdx, GCount, b, g_max, g0, BLOCK_N)
    if g0 >= n_glob:
        return
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    k = load_rows(K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
    v = load_rows(V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
    bias_t = tl.where(n_ok, 0.0, float("-inf"))[:, None]
    q_base = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    do_base = DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    for m0 in range(start, end, BLOCK_M):
        tok_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = tok_m < end
        # local rows only: not padding, not global (both carry -inf in KeyBias)
        row_ok = m_ok & (tl.load(KeyBias + b.to(tl.int64) * seq_len + tok_m, mask=m_ok, other=float("-inf")) == 0.0)
        q = load_rows(q_base, tok_m, m_ok, offs_d, d_ok, sq_t, sq_d)
        do = load_rows(do_base, tok_m, row_ok, offs_d, d_ok, sdo_t, sdo_d)
        lse = tl.load(Lse + bh.to(tl.int64) * seq_len + tok_m, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + bh.to(tl.int64) * seq_len + tok_m, mask=row_ok, other=0.0)
        z_t = bias_t
        if DROPOUT:
            z_t = dropout_scale(seed, bh, seq_len, tok_m[None, :], tok_n[:, None], p_drop)
        dk, dv = kv_grad_step(dk, dv, k, v, q, do, lse, delta, bias_t, z_t, qk_scale, True, DROPOUT, PRECISION)
    offs_g = g0 + tl.arange(0, BLOCK_N)
    tl.store(_partial_rows(DKPart, bh, split, n_splits, g_max, offs_g, offs_d), dk, mask=n_ok[:, None])
    tl.store(_partial_rows(DVPart, bh, split, n_splits, g_max, offs_g, offs_d), dv, mask=n_ok[:, None])
