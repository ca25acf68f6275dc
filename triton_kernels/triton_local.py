"""Triton kernels of the *local* pass: non-global queries over their (dilated) window plus global keys.

Grid: ``(max tiles over heads, B*H)``. Program ``(t, b*H + h)`` reads row ``t`` of head ``h``'s plan
(``triton_schedule``): residue class ``r``, first class position, and the key/query tile ranges
to visit; edge tiles are masked, interior tiles are not. Token of class position ``p`` is
``r + p*d``, so dilation costs no wasted tiles.

Keys that are padding or global carry ``-inf`` in ``key_bias`` and so drop out of every window
(globals are instead seen once, through the extra global key tiles). The same bias tells which
query rows belong to this pass (bias 0) -- padding and global rows are skipped here.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_tiles import (dropout_scale, finish_rows, kv_grad_step, load_rows, mma, online_softmax_step,
                           q_grad_step, store_rows, window_ok)


@triton.jit
def _plan_row(Plan, n_tiles_ptr, h, t, max_tiles):
    row = Plan + (h * max_tiles + t) * 8
    return (tl.load(row + 0), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
            tl.load(row + 4), tl.load(row + 5), tl.load(row + 6))


@triton.jit
def _window_fwd_tile(acc, m_i, l_i, q, offs_m, tok_m, jt, r, dil, length,
                     k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_d, d_ok, bias_base,
                     seed, bh, seq_len, qk_scale, reach_left, reach_right, p_drop,
                     MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = jt * BLOCK_N + tl.arange(0, BLOCK_N)
    tok_n = r + offs_n * dil
    n_ok = offs_n < length
    k = load_rows(k_base, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
    v = load_rows(v_base, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
    s = mma(q, tl.trans(k), PRECISION) * qk_scale
    if MASKED:
        ok = window_ok(offs_m[:, None], offs_n[None, :], reach_left, reach_right) & n_ok[None, :]
        s = tl.where(ok, s, float("-inf"))
    if HAS_BIAS:
        s = s + tl.load(bias_base + tok_n, mask=n_ok, other=float("-inf"))[None, :]
    z = s
    if DROPOUT:
        z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
    return online_softmax_step(acc, m_i, l_i, s, v, z, DROPOUT, PRECISION)


@triton.jit
def _global_keys_fwd_tile(acc, m_i, l_i, q, tok_m, g0, gidx_base, n_glob,
                          k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_d, d_ok,
                          seed, bh, seq_len, qk_scale, p_drop,
                          DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_g = g0 + tl.arange(0, BLOCK_N)
    g_ok = offs_g < n_glob
    tok_n = tl.load(gidx_base + offs_g, mask=g_ok, other=0)
    k = load_rows(k_base, tok_n, g_ok, offs_d, d_ok, sk_t, sk_d)
    v = load_rows(v_base, tok_n, g_ok, offs_d, d_ok, sv_t, sv_d)
    s = mma(q, tl.trans(k), PRECISION) * qk_scale
    s = tl.where(g_ok[None, :], s, float("-inf"))
    z = s
    if DROPOUT:
        z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
    return online_softmax_step(acc, m_i, l_i, s, v, z, DROPOUT, PRECISION)


@triton.jit
def local_fwd_kernel(
    Q, K, V, Out, Lse, KeyBias, GIdx, GCount, Plan, NTiles, Dil,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    so_b, so_h, so_t, so_d,
    H, seq_len, head_dim, max_tiles, g_max, qk_scale, reach_left, reach_right, p_drop, seed,
    HAS_BIAS: tl.constexpr, HAS_GLOBAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    if t >= tl.load(NTiles + h):
        return
    r, start, lo, ilo, ihi, hi, length = _plan_row(Plan, NTiles, h, t, max_tiles)
    dil = tl.load(Dil + h)

    offs_m = start + tl.arange(0, BLOCK_M)
    tok_m = r + offs_m * dil
    m_ok = offs_m < length
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_base = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    k_base = K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    bias_base = KeyBias + b.to(tl.int64) * seq_len
    q = load_rows(q_base, tok_m, m_ok, offs_d, d_ok, sq_t, sq_d)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for jt in range(lo, ilo):
        acc, m_i, l_i = _window_fwd_tile(
            acc, m_i, l_i, q, offs_m, tok_m, jt, r, dil, length, k_base, v_base, sk_t, sk_d, sv_t, sv_d,
            offs_d, d_ok, bias_base, seed, bh, seq_len, qk_scale, reach_left, reach_right, p_drop,
            True, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    for jt in range(ilo, ihi):
        acc, m_i, l_i = _window_fwd_tile(
            acc, m_i, l_i, q, offs_m, tok_m, jt, r, dil, length, k_base, v_base, sk_t, sk_d, sv_t, sv_d,
            offs_d, d_ok, bias_base, seed, bh, seq_len, qk_scale, reach_left, reach_right, p_drop,
            False, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    for jt in range(ihi, hi):
        acc, m_i, l_i = _window_fwd_tile(
            acc, m_i, l_i, q, offs_m, tok_m, jt, r, dil, length, k_base, v_base, sk_t, sk_d, sv_t, sv_d,
            offs_d, d_ok, bias_base, seed, bh, seq_len, qk_scale, reach_left, reach_right, p_drop,
            True, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    if HAS_GLOBAL:
        n_glob = tl.load(GCount + b)
        gidx_base = GIdx + b.to(tl.int64) * g_max
        for g0 in range(0, n_glob, BLOCK_N):
            acc, m_i, l_i = _global_keys_fwd_tile(
                acc, m_i, l_i, q, tok_m, g0, gidx_base, n_glob, k_base, v_base, sk_t, sk_d, sv_t, sv_d,
                offs_d, d_ok, seed, bh, seq_len, qk_scale, p_drop, DROPOUT, PRECISION, BLOCK_N)

    out, lse = finish_rows(acc, m_i, l_i)
    row_ok = m_ok
    if HAS_BIAS:
        # padding rows output 0; global rows are overwritten by the global pass afterwards
        row_ok = m_ok & (tl.load(bias_base + tok_m, mask=m_ok, other=float("-inf")) == 0.0)
    out = tl.where(row_ok[:, None], out, 0.0)
    store_rows(Out + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h, out, tok_m, m_ok, offs_d, d_ok, so_t, so_d)
    tl.store(Lse + bh.to(tl.int64) * seq_len + tok_m, lse, mask=row_ok)


@triton.jit
def _bwd_rows(Q, DO, Lse, Delta, KeyBias, b, h, bh, tok_m, m_ok, offs_d, d_ok, seq_len,
              sq_b, sq_h, sq_t, sq_d, sdo_b, sdo_h, sdo_t, sdo_d, HAS_BIAS: tl.constexpr):
    """Query-side tensors of a backward tile: q, dO, lse (+inf on rows outside this pass), Delta."""
    row_ok = m_ok
    if HAS_BIAS:
        row_ok = m_ok & (tl.load(KeyBias + b.to(tl.int64) * seq_len + tok_m, mask=m_ok, other=float("-inf")) == 0.0)
    q = load_rows(Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h, tok_m, m_ok, offs_d, d_ok, sq_t, sq_d)
    do = load_rows(DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h, tok_m, row_ok, offs_d, d_ok, sdo_t, sdo_d)
    lse = tl.load(Lse + bh.to(tl.int64) * seq_len + tok_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + bh.to(tl.int64) * seq_len + tok_m, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _window_dq_tile(dq, q, do, lse, delta, offs_m, tok_m, jt, r, dil, length,
                    k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_d, d_ok, bias_base,
                    seed, bh, seq_len, qk_scale, reach_left, reach_right, p_drop,
                    MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = jt * BLOCK_N + tl.arange(0, BLOCK_N)
    tok_n = r + offs_n * dil
    n_ok = offs_n < length
    k = load_rows(k_base, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
    v = load_rows(v_base, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
    bias = tl.zeros([1, BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_base + tok_n, mask=n_ok, other=float("-inf"))[None, :]
    if MASKED:
        ok = window_ok(offs_m[:, None], offs_n[None, :], reach_left, reach_right) & n_ok[None, :]
        bias = tl.where(ok, bias, float("-inf"))
    z = bias
    if DROPOUT:
        z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
    return q_grad_step(dq, q, k, v, do, lse, delta, bias, z, qk_scale, MASKED or HAS_BIAS, DROPOUT, PRECISION)


@triton.jit
def local_bwd_dq_kernel(
    Q, K, V, DO, DQ, Lse, Delta, KeyBias, GIdx, GCount, Plan, NTiles, Dil,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    sdo_b, sdo_h, sdo_t, sdo_d, sdq_b, sdq_h, sdq_t, sdq_d,
    H, seq_len, head_dim, max_tiles, g_max, qk_scale, sm_scale, reach_left, reach_right, p_drop, seed,
    HAS_BIAS: tl.constexpr, HAS_GLOBAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    if t >= tl.load(NTiles + h):
        return
    r, start, lo, ilo, ihi, hi, length = _plan_row(Plan, NTiles, h, t, max_tiles)
    dil = tl.load(Dil + h)
    offs_m = start + tl.arange(0, BLOCK_M)
    tok_m = r + offs_m * dil
    m_ok = offs_m < length
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    k_base = K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    bias_base = KeyBias + b.to(tl.int64) * seq_len
    q, do, lse, delta = _bwd_rows(Q, DO, Lse, Delta, KeyBias, b, h, bh, tok_m, m_ok, offs_d, d_ok, seq_len,
                                  sq_b, sq_h, sq_t, sq_d, sdo_b, sdo_h, sdo_t, sdo_d, HAS_BIAS)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for jt in range(lo, ilo):
        dq = _window_dq_tile(dq, q, do, lse, delta, offs_m, tok_m, jt, r, dil, length, k_base, v_base,
                             sk_t, sk_d, sv_t, sv_d, offs_d, d_ok, bias_base, seed, bh, seq_len, qk_scale,
                             reach_left, reach_right, p_drop, True, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    for jt in range(ilo, ihi):
        dq = _window_dq_tile(dq, q, do, lse, delta, offs_m, tok_m, jt, r, dil, length, k_base, v_base,
                             sk_t, sk_d, sv_t, sv_d, offs_d, d_ok, bias_base, seed, bh, seq_len, qk_scale,
                             reach_left, reach_right, p_drop, False, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    for jt in range(ihi, hi):
        dq = _window_dq_tile(dq, q, do, lse, delta, offs_m, tok_m, jt, r, dil, length, k_base, v_base,
                             sk_t, sk_d, sv_t, sv_d, offs_d, d_ok, bias_base, seed, bh, seq_len, qk_scale,
                             reach_left, reach_right, p_drop, True, HAS_BIAS, DROPOUT, PRECISION, BLOCK_N)
    if HAS_GLOBAL:
        n_glob = tl.load(GCount + b)
        gidx_base = GIdx + b.to(tl.int64) * g_max
        for g0 in range(0, n_glob, BLOCK_N):
            offs_g = g0 + tl.arange(0, BLOCK_N)
            g_ok = offs_g < n_glob
            tok_n = tl.load(gidx_base + offs_g, mask=g_ok, other=0)
            k = load_rows(k_base, tok_n, g_ok, offs_d, d_ok, sk_t, sk_d)
            v = load_rows(v_base, tok_n, g_ok, offs_d, d_ok, sv_t, sv_d)
            bias = tl.where(g_ok, 0.0, float("-inf"))[None, :]
            z = bias
            if DROPOUT:
                z = dropout_scale(seed, bh, seq_len, tok_m[:, None], tok_n[None, :], p_drop)
            dq = q_grad_step(dq, q, k, v, do, lse, delta, bias, z, qk_scale, True, DROPOUT, PRECISION)
    store_rows(DQ + b.to(tl.int64) * sdq_b + h.to(tl.int64) * sdq_h, dq * sm_scale, tok_m, m_ok,
               offs_d, d_ok, sdq_t, sdq_d)


@triton.jit
def _window_dkdv_tile(dk, dv, k, v, offs_n, tok_n, n_ok, key_bias, it, r, dil, length,
                      Q, DO, Lse, Delta, KeyBias, b, h, bh, offs_d, d_ok, seq_len,
                      sq_b, sq_h, sq_t, sq_d, sdo_b, sdo_h, sdo_t, sdo_d,
                      seed, qk_scale, reach_left, reach_right, p_drop,
                      MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr):
    offs_m = it * BLOCK_M + tl.arange(0, BLOCK_M)
    tok_m = r + offs_m * dil
    m_ok = offs_m < length
    q, do, lse, delta = _bwd_rows(Q, DO, Lse, Delta, KeyBias, b, h, bh, tok_m, m_ok, offs_d, d_ok, seq_len,
                                  sq_b, sq_h, sq_t, sq_d, sdo_b, sdo_h, sdo_t, sdo_d, HAS_BIAS)
    bias_t = key_bias[:, None]  # key-major: rows are this program's keys, columns the queries
    if MASKED:
        ok_t = window_ok(offs_m[None, :], offs_n[:, None], reach_left, reach_right) & n_ok[:, None]
        bias_t = tl.where(ok_t, bias_t, float("-inf"))
    z_t = bias_t
    if DROPOUT:
        z_t = dropout_scale(seed, bh, seq_len, tok_m[None, :], tok_n[:, None], p_drop)
    return kv_grad_step(dk, dv, k, v, q, do, lse, delta, bias_t, z_t, qk_scale, MASKED or HAS_BIAS,
                        DROPOUT, PRECISION)


@triton.jit
def local_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta, KeyBias, Plan, NTiles, Dil,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    sdo_b, sdo_h, sdo_t, sdo_d, sdk_b, sdk_h, sdk_t, sdk_d, sdv_b, sdv_h, sdv_t, sdv_d,
    H, seq_len, head_dim, max_tiles, qk_scale, sm_scale, reach_left, reach_right, p_drop, seed,
    HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per key tile (``BLOCK_N`` keys); loops over the query tiles whose windows reach it.

    ``Plan`` here is the key-centric plan (reaches swapped), and ``reach_left``/``reach_right``
    are the *query-side* reaches, used unchanged in the window test ``i - j``.
    """
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    if t >= tl.load(NTiles + h):
        return
    r, start, lo, ilo, ihi, hi, length = _plan_row(Plan, NTiles, h, t, max_tiles)
    dil = tl.load(Dil + h)
    offs_n = start + tl.arange(0, BLOCK_N)
    tok_n = r + offs_n * dil
    n_ok = offs_n < length
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    k = load_rows(K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h, tok_n, n_ok, offs_d, d_ok, sk_t, sk_d)
    v = load_rows(V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h, tok_n, n_ok, offs_d, d_ok, sv_t, sv_d)
    key_bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        key_bias = tl.load(KeyBias + b.to(tl.int64) * seq_len + tok_n, mask=n_ok, other=float("-inf"))

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for it in range(lo, ilo):
        dk, dv = _window_dkdv_tile(dk, dv, k, v, offs_n, tok_n, n_ok, key_bias, it, r, dil, length,
                                   Q, DO, Lse, Delta, KeyBias, b, h, bh, offs_d, d_ok, seq_len,
                                   sq_b, sq_h, sq_t, sq_d, sdo_b, sdo_h, sdo_t, sdo_d, seed, qk_scale,
                                   reach_left, reach_right, p_drop, True, HAS_BIAS, DROPOUT, PRECISION, BLOCK_M)
    for it in range(ilo, ihi):
        dk, dv = _window_dkdv_tile(dk, dv, k, v, offs_n, tok_n, n_ok, key_bias, it, r, dil, length,
                                   Q, DO, Lse, Delta, KeyBias, b, h, bh, offs_d, d_ok, seq_len,
                                   sq_b, sq_h, sq_t, sq_d, sdo_b, sdo_h, sdo_t, sdo_d, seed, qk_scale,
                                   reach_left, reach_right, p_drop, False, HAS_BIAS, DROPOUT, PRECISION, BLOCK_M)
    for it in range(ihi, hi):
        dk, dv = _window_dkdv_tile(dk, dv, k, v, offs_n, tok_n, n_ok, key_bias, it, r, dil, length,
                                   Q, DO, Lse, Delta, KeyBias, b, h, bh, offs_d, d_ok, seq_len,
                                   sq_b, sq_h, sq_t, sq_d, sdo_b, sdo_h, sdo_t, sdo_d, seed, qk_scale,
                                   reach_left, reach_right, p_drop, True, HAS_BIAS, DROPOUT, PRECISION, BLOCK_M)
    store_rows(DK + b.to(tl.int64) * sdk_b + h.to(tl.int64) * sdk_h, dk * sm_scale, tok_n, n_ok,
               offs_d, d_ok, sdk_t, sdk_d)
    store_rows(DV + b.to(tl.int64) * sdv_b + h.to(tl.int64) * sdv_h, dv, tok_n, n_ok,
               offs_d, d_ok, sdv_t, sdv_d)


@triton.jit
def row_dot_kernel(O, DO, Delta, so_b, so_h, so_t, so_d, sdo_b, sdo_h, sdo_t, sdo_d,
                   H, seq_len, head_dim, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Backward preprocessing: ``Delta[b, h, t] = dO[b, h, t] . O[b, h, t]`` in float32.

    (Delta_i = sum_j P_ij dP_ij, the softmax-backward row term; it holds with dropout too.) One read
    of O and dO in their own dtype instead of two float32 copies.
    """
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tok = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = tok < seq_len
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    o = load_rows(O + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h, tok, ok, offs_d, d_ok, so_t, so_d)
    do = load_rows(DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h, tok, ok, offs_d, d_ok, sdo_t, sdo_d)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * seq_len + tok, delta, mask=ok)
