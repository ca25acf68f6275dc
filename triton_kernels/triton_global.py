"""Triton kernels for global attention (DESIGN.md §3), O(G*T) each.

* ``global_fwd_kernel`` / ``global_bwd_dq_kernel``: the G global query rows (``q_global``) over every
  non-padding key (``k_global``, ``v_global``); one program per tile of global rows.
* ``global_bwd_dkdv_kernel``: dk_global/dv_global, one program per key tile, looping over the global rows.
* ``global_keys_bwd_kernel``: the extra key tile of the local pass -- what every local query sent to
  the global tokens' *local* k/v -- added onto the local pass's dk/dv at the global rows.

``GIdx[b, :GCount[b]]`` lists the global tokens of batch row ``b`` in order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_tiles import (dropout_scale, finish_rows, kv_grad_step, load_rows, mma, online_softmax_step,
                           q_grad_step, store_rows)


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
def global_fwd_kernel(
    QG, KG, VG, Out, Lse, PadBias, GIdx, GCount,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t, so_d,
    H, seq_len, head_dim, g_max, qk_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tok_m, m_ok, n_glob = _global_rows(GIdx, GCount, b, g_max, tl.program_id(0) * BLOCK_M, BLOCK_M)
    if tl.program_id(0) * BLOCK_M >= n_glob:
        return
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    k_base = KG + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = VG + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    q = load_rows(QG + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h, tok_m, m_ok, offs_d, d_ok, sq_t, sq_d)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, seq_len, BLOCK_N):
        tok_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = tok_n < seq_len
        k = load_rows(k_base, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
        v = load_rows(v_base, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
        s = mma(q, tl.trans(k), PRECISION) * qk_scale
        s = s + _key_mask(PadBias, b, tok_n, n_ok, seq_len, HAS_PAD, BLOCK_N)[None, :]
        z = s
        if DROPOUT:
            z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, z, DROPOUT, PRECISION)
    out, lse = finish_rows(acc, m_i, l_i)
    store_rows(Out + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h, out, tok_m, m_ok, offs_d, d_ok, so_t, so_d)
    tl.store(Lse + bh.to(tl.int64) * seq_len + tok_m, lse, mask=m_ok)


@triton.jit
def global_bwd_dq_kernel(
    QG, KG, VG, DO, DQG, Lse, Delta, PadBias, GIdx, GCount,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    sdo_b, sdo_h, sdo_t, sdo_d, sdq_b, sdq_h, sdq_t, sdq_d,
    H, seq_len, head_dim, g_max, qk_scale, sm_scale, p_drop, seed,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tok_m, m_ok, n_glob = _global_rows(GIdx, GCount, b, g_max, tl.program_id(0) * BLOCK_M, BLOCK_M)
    if tl.program_id(0) * BLOCK_M >= n_glob:
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
    for n0 in range(0, seq_len, BLOCK_N):
        tok_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = tok_n < seq_len
        k = load_rows(k_base, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
        v = load_rows(v_base, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
        bias = _key_mask(PadBias, b, tok_n, n_ok, seq_len, HAS_PAD, BLOCK_N)[None, :]
        z = bias
        if DROPOUT:
            z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
        dq = q_grad_step(dq, q, k, v, do, lse, delta, bias, z, qk_scale, True, DROPOUT, PRECISION)
    store_rows(DQG + b.to(tl.int64) * sdq_b + h.to(tl.int64) * sdq_h, dq * sm_scale, tok_m, m_ok,
               offs_d, d_ok, sdq_t, sdq_d)


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
    Q, K, V, DO, DK, DV, Lse, Delta, KeyBias, GIdx, GCount,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    sdo_b, sdo_h, sdo_t, sdo_d, sdk_b, sdk_h, sdk_t, sdk_d, sdv_b, sdv_h, sdv_t, sdv_d,
    H, seq_len, head_dim, g_max, qk_scale, sm_scale, p_drop, seed,
    DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Local queries -> global tokens' local k/v: adds onto DK/DV rows the local kernel left at 0.

    Must run after ``local_bwd_dkdv_kernel`` (same stream), which wrote those rows.
    """
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tok_n, n_ok, n_glob = _global_rows(GIdx, GCount, b, g_max, tl.program_id(0) * BLOCK_N, BLOCK_N)
    if tl.program_id(0) * BLOCK_N >= n_glob:
        return
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    dk_base = DK + b.to(tl.int64) * sdk_b + h.to(tl.int64) * sdk_h
    dv_base = DV + b.to(tl.int64) * sdv_b + h.to(tl.int64) * sdv_h
    k = load_rows(K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
    v = load_rows(V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
    bias_t = tl.where(n_ok, 0.0, float("-inf"))[:, None]
    q_base = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    do_base = DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for m0 in range(0, seq_len, BLOCK_M):
        tok_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = tok_m < seq_len
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
    dk_old = load_rows(dk_base, tok_n, n_ok, offs_d, d_ok, sdk_t, sdk_d).to(tl.float32)
    dv_old = load_rows(dv_base, tok_n, n_ok, offs_d, d_ok, sdv_t, sdv_d).to(tl.float32)
    store_rows(dk_base, dk_old + dk * sm_scale, tok_n, n_ok, offs_d, d_ok, sdk_t, sdk_d)
    store_rows(dv_base, dv_old + dv, tok_n, n_ok, offs_d, d_ok, sdv_t, sdv_d)
