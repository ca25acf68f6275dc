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
def window_ok(offs_m, offs_n, reach_left, reach_right):
    """Class-coordinate window rule (dilation already removed), the same as ``masks.in_window``."""
    delta = offs_m[:, None] - offs_n[None, :]
    return (delta <= reach_left) & (delta >= -reach_right)


@triton.jit
def dropout_scale(seed, bh, seq_len, tok_m, tok_n, p_drop):
    """``keep / (1 - p)`` for every (query token, key token) pair of one (batch, head).

    The Philox counter is the pair's flat index ``(bh*T + i)*T + j`` in int64, so forward and
    backward regenerate the same mask tile by tile whatever the tiling or launch order.
    """
    offs = (bh.to(tl.int64) * seq_len + tok_m[:, None].to(tl.int64)) * seq_len + tok_n[None, :].to(tl.int64)
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
