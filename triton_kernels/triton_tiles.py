"""Triton building blocks shared by the local and global kernels: tile loads, masks, dropout.

Conventions of every kernel here:

* scores live in the log2 domain: ``s = q.k * scale * log2(e)``, so softmax uses ``exp2``;
  the saved log-sum-exp ``lse`` is in the same units, ``p = exp2(s - lse)``;
* a row that must not contribute (padding, global row in the local pass, past the end) gets
  ``lse = +inf`` in backward so its probabilities recompute as exactly 0;
* everything is float32 from the dot products on; tiles are cast back to the input dtype only to
  feed the next dot product (the paper's "attention math in fp32").
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton's CPU interpreter multiplies bfloat16 tiles as their raw uint16 bits (triton 3.x
# ``create_dot``), so under TRITON_INTERPRET=1 bf16 dot operands are widened to fp32 first.
# Compiled GPU kernels are untouched.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def mma(a, b, PRECISION: tl.constexpr):
    """``a @ b`` with a float32 accumulator (tl.dot), working around the interpreter's bf16 bug."""
    if INTERPRETED and a.dtype == tl.bfloat16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def load_rows(base, tok, ok, offs_d, d_ok, stride_t, stride_d):
    """Rows ``tok`` (any token order, e.g. a residue class or gathered globals) of a [T, D] slice."""
    ptrs = base + tok[:, None].to(tl.int64) * stride_t + offs_d[None, :] * stride_d
    return tl.load(ptrs, mask=ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def store_rows(base, value, tok, ok, offs_d, d_ok, stride_t, stride_d):
    ptrs = base + tok[:, None].to(tl.int64) * stride_t + offs_d[None, :] * stride_d
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=ok[:, None] & d_ok[None, :])


@triton.jit
def window_ok(pos_q, pos_k, reach_left, reach_right):
    """Class-coordinate window rule (dilation already removed), the same as ``masks.in_window``.

    ``pos_q``/``pos_k`` are broadcast by the caller ([M,1]x[1,N], or transposed for key-major tiles).
    """
    delta = pos_q - pos_k
    return (delta <= reach_left) & (delta >= -reach_right)


@triton.jit
def dropout_scale(seed, bh, seq_len, tok_q, tok_k, p_drop):
    """``keep / (1 - p)`` for (query token, key token) pairs of one (batch, head).

    ``tok_q`` and ``tok_k`` are already broadcast to the tile's shape ([M,1] and [1,N], or
    transposed for key-major tiles). The Philox counter is the pair's flat index
    ``(bh*T + i)*T + j`` in int64, so every kernel regenerates the same mask whatever its tiling.
    """
    offs = (bh.to(tl.int64) * seq_len + tok_q.to(tl.int64)) * seq_len + tok_k.to(tl.int64)
    keep = tl.rand(seed, offs) >= p_drop
    return tl.where(keep, 1.0 / (1.0 - p_drop), 0.0)


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
def q_grad_step(dq, q, k, v, do, lse, delta, bias, z, qk_scale,
                APPLY_BIAS: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate dQ of a query tile from one key tile: recompute P from ``lse``, dS = P (dP Z - Delta)."""
    s = mma(q, tl.trans(k), PRECISION) * qk_scale
    if APPLY_BIAS:
        s = s + bias
    p = tl.exp2(s - lse[:, None])
    dp = mma(do, tl.trans(v), PRECISION)
    if DROPOUT:
        dp = dp * z
    ds = p * (dp - delta[:, None])
    return dq + mma(ds.to(k.dtype), k, PRECISION)


@triton.jit
def kv_grad_step(dk, dv, k, v, q, do, lse, delta, bias_t, z_t, qk_scale,
                 APPLY_BIAS: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate dK, dV of a key tile from one query tile, working key-major ([keys, queries]).

    Scores are formed as K Q^T so P^T and dS^T come out of the dot products already in the
    orientation dV += P^T dO and dK += dS^T Q need; no float32 tile is transposed.
    ``lse``/``delta`` are per query (columns); ``bias_t`` is 0/-inf, broadcastable to [N, M].
    """
    s_t = mma(k, tl.trans(q), PRECISION) * qk_scale
    if APPLY_BIAS:
        s_t = s_t + bias_t
    p_t = tl.exp2(s_t - lse[None, :])
    dp_t = mma(v, tl.trans(do), PRECISION)
    if DROPOUT:
        dp_t = dp_t * z_t
        pz_t = p_t * z_t
    else:
        pz_t = p_t
    dv += mma(pz_t.to(do.dtype), do, PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += mma(ds_t.to(q.dtype), q, PRECISION)
    return dk, dv
