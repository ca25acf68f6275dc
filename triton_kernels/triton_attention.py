"""``backend="triton"``: fused flash-style Longformer attention, forward and backward.

Launch plan (all on one stream, in this order):

forward   1. ``local_fwd_kernel``   non-global queries: window key tiles (edge tiles masked, interior
                                    not) + the global tokens as extra key tiles; online softmax.
          2. ``global_fwd_kernel``  global queries over every key; overwrites their output rows.
backward  1. ``local_bwd_dkdv_kernel``  per key tile, over the query tiles that reach it.
          2. ``local_bwd_dq_kernel``    per query tile, window + global key tiles.
          3. ``global_keys_bwd_kernel`` adds what local queries sent to the global keys' k/v.
          4. ``global_bwd_dq_kernel``, ``global_bwd_dkdv_kernel``: grads of q/k/v_global.

Memory is O(T*D) plus one float32 log-sum-exp per (batch, head, token); no score tensor is stored.
Dropout is exact and in-kernel: Philox keyed by (seed, flat pair index), regenerated in backward.

Both directions are ``torch.library`` custom ops (``longformer::triton_forward`` / ``_backward``)
with fake implementations and ``register_autograd``, so ``torch.compile`` keeps them as opaque nodes.

Tiles default to 64x64 forward / 32x64 backward on CUDA and 16x16 under ``TRITON_INTERPRET=1`` (CPU
tests); change them with :func:`use_config` (benchmarks, tests of tile-boundary behaviour).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
import triton

from .api import AttentionSpec
from .triton_global import (global_bwd_dkdv_kernel, global_bwd_dq_kernel, global_fwd_kernel,
                            global_keys_bwd_kernel)
from .triton_local import local_bwd_dkdv_kernel, local_bwd_dq_kernel, local_fwd_kernel, row_dot_kernel
from .masks import global_positions, reaches
from .triton_schedule import schedule

_LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TritonConfig:
    """Tile sizes and launch options, forward and backward separately.

    ``block_m`` = query rows per tile, ``block_n`` = keys per tile. Backward keeps more tiles live
    (k, v, dk, dv, q, dO, P, dS), so it defaults to smaller query tiles. The GPU defaults were
    chosen from sm_90 builds (``python -m triton_kernels.triton_aot``; the table is in
    docs/triton.md: fp16/bf16 at head size 64 do not spill, float32 does); they are not timed yet.
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    bwd_block_m: int = 32
    bwd_block_n: int = 64
    bwd_num_warps: int = 4
    global_split: int = 1024  # tokens per program in the global kernels that reduce over T
    row_block: int = 64  # tokens per program of the backward's Delta = rowsum(dO * O) kernel
    row_num_warps: int = 4

    def __post_init__(self):
        for name in ("block_m", "block_n", "bwd_block_m", "bwd_block_n", "global_split", "row_block"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's minimum), got {size}")


# 16x16 tiles: what the CPU interpreter runs (small programs) and what the tests use on a GPU too
INTERPRETER_CONFIG = TritonConfig(block_m=16, block_n=16, num_warps=1, num_stages=1, bwd_block_m=16,
                                  bwd_block_n=16, bwd_num_warps=1, global_split=32, row_block=16, row_num_warps=1)
# head_dim > 64 or float32 tiles: twice the registers per tile, so twice the warps to hold them
_WIDE_TILE_CONFIG = TritonConfig(num_warps=8, bwd_num_warps=8)
_override: TritonConfig | None = None


@contextlib.contextmanager
def use_config(config: TritonConfig) -> Iterator[TritonConfig]:
    """Run the enclosed ``backend="triton"`` calls with ``config`` (forward *and* backward)."""
    global _override
    previous, _override = _override, config
    try:
        yield config
    finally:
        _override = previous


def default_config(device: torch.device, head_dim: int, dtype: torch.dtype = torch.float16) -> TritonConfig:
    if _override is not None:
        return _override
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    return TritonConfig() if head_dim <= 64 and dtype != torch.float32 else _WIDE_TILE_CONFIG


def attention(spec: AttentionSpec) -> torch.Tensor:
    """The registry entry for ``backend="triton"`` (see ``api._BACKENDS``)."""
    q = spec.q
    _check_runnable(q)
    if q.numel() == 0:
        return torch.zeros_like(q)
    config = default_config(q.device, q.shape[-1], q.dtype)
    # Drawn here, from torch's default generator, so torch.manual_seed makes dropout reproducible
    # and forward and backward agree on the mask.
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if spec.dropout_p > 0 else 0
    statics = _Statics(spec.window, tuple(spec.dilation), spec.causal, spec.scale, spec.dropout_p, seed,
                       tuple(dataclasses.astuple(config)), fp32_dot_precision() if q.is_cuda else "ieee")
    out, _lse = triton_forward(q, spec.k, spec.v, spec.q_global, spec.k_global, spec.v_global,
                               spec.key_padding_mask, spec.global_mask, *dataclasses.astuple(statics))
    return out


def fp32_dot_precision() -> str:
    """``tl.dot`` input precision for float32 inputs: "tf32" where torch lets float32 matmuls use TF32.

    torch's own switch decides, so float32 attention follows float32 matmuls: "ieee" (full float32,
    torch's default) unless TF32 was turned on (``torch.backends.cuda.matmul.fp32_precision = "tf32"``,
    the legacy ``allow_tf32 = True``, or ``torch.set_float32_matmul_precision("high")``). The newer
    ``fp32_precision`` is read first: on torch >= 2.9 reading ``allow_tf32`` raises once a program
    set it to "tf32".
    """
    matmul = torch.backends.cuda.matmul
    try:
        setting = matmul.fp32_precision
    except AttributeError:  # torch < 2.9 has only the legacy flag
        return "tf32" if matmul.allow_tf32 else "ieee"
    if setting == "none":  # defers to the global setting
        setting = torch.backends.fp32_precision
    return "tf32" if setting == "tf32" else "ieee"


def _check_runnable(q: torch.Tensor) -> None:
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"backend='triton' takes float32, float16 or bfloat16 inputs, got {q.dtype}; "
            "use backend='torch' (or 'dense') for other dtypes"
        )
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors, got a tensor on {q.device}; use backend='torch' on CPU "
            "(or set TRITON_INTERPRET=1 before importing triton_kernels to debug the kernels on CPU)"
        )


@dataclass(frozen=True)
class _Statics:
    """The non-tensor arguments of one call, fixed between its forward and its backward."""

    window: int
    dilation: tuple[int, ...]
    causal: bool
    scale: float
    dropout_p: float
    seed: int
    config: tuple[int, ...]  # dataclasses.astuple(TritonConfig)
    precision: str = "ieee"  # tl.dot input precision for float32 inputs: "ieee" or "tf32" (fp32_dot_precision)


@dataclass
class _Plan:
    """Everything a launch needs besides q/k/v: constants, tile plans, masks turned into kernel inputs."""

    config: TritonConfig
    shape: tuple[int, int, int, int]
    scale: float
    dropout_p: float
    seed: int
    reach_left: int
    reach_right: int
    dilation: torch.Tensor  # [H] int32
    q_plan: tuple[torch.Tensor, torch.Tensor]  # query-tile plan (forward)
    dq_plan: tuple[torch.Tensor, torch.Tensor]  # query-tile plan (dq, backward tile sizes)
    k_plan: tuple[torch.Tensor, torch.Tensor]  # key-tile plan (dk, dv)
    key_bias: torch.Tensor | None  # [B, T] f32: -inf on padding and global keys (local pass)
    pad_bias: torch.Tensor | None  # [B, T] f32: -inf on padding keys (global pass)
    gidx: torch.Tensor | None  # [B, G] int32 global token positions, in order
    gcount: torch.Tensor | None  # [B] int32
    gvalid: torch.Tensor | None  # [B, G] bool: g < gcount[b]
    g_max: int
    precision: str

    @staticmethod
    def build(q: torch.Tensor, pad: torch.Tensor | None, glob: torch.Tensor | None, st: _Statics) -> "_Plan":
        config = TritonConfig(*st.config)
        B, H, T, D = q.shape
        device = q.device
        left, right = reaches(st.window, st.causal)
        q_plan = schedule(T, st.dilation, left, right, config.block_m, config.block_n, device)
        dq_plan = schedule(T, st.dilation, left, right, config.bwd_block_m, config.bwd_block_n, device)
        k_plan = schedule(T, st.dilation, right, left, config.bwd_block_n, config.bwd_block_m, device)

        excluded = pad  # keys the local pass must not see in any window: padding, and globals below
        gidx = gcount = gvalid = None
        g_max = 0
        if glob is not None:
            index, gvalid = global_positions(glob)
            g_max = index.shape[1]
            if g_max > 0:
                gidx = index.to(torch.int32).contiguous()
                gcount = gvalid.sum(dim=1, dtype=torch.int32)
                excluded = glob if excluded is None else (excluded | glob)
        key_bias = None if excluded is None else _neg_inf_where(excluded)
        pad_bias = None if pad is None else _neg_inf_where(pad)
        precision = st.precision if q.dtype == torch.float32 else "tf32"  # only fp32 dots read it
        return _Plan(config, (B, H, T, D), st.scale, st.dropout_p, st.seed, left, right,
                     torch.tensor(st.dilation, dtype=torch.int32, device=device), q_plan, dq_plan, k_plan,
                     key_bias, pad_bias, gidx if g_max else None, gcount if g_max else None,
                     gvalid, g_max, precision)

    @property
    def has_global(self) -> bool:
        return self.g_max > 0

    @property
    def n_splits(self) -> int:
        """How many pieces the O(G*T) global kernels cut T into (see ``TritonConfig.global_split``)."""
        return triton.cdiv(self.shape[2], self.config.global_split)

    def launch_options(self, backward: bool) -> dict:
        """Constexprs and launch options shared by every kernel of one direction."""
        D = self.shape[3]
        cfg = self.config
        return dict(BLOCK_M=cfg.bwd_block_m if backward else cfg.block_m,
                    BLOCK_N=cfg.bwd_block_n if backward else cfg.block_n,
                    BLOCK_D=max(16, triton.next_power_of_2(D)), PRECISION=self.precision,
                    DROPOUT=self.dropout_p > 0, num_warps=cfg.bwd_num_warps if backward else cfg.num_warps,
                    num_stages=cfg.num_stages)


def _neg_inf_where(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(mask, float("-inf")).contiguous()


def _or_dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # Triton needs a pointer even where a constexpr flag makes the kernel ignore the argument.
    return t if t is not None else like


def _forward(plan: _Plan, q, k, v, qg, kg, vg) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, D = plan.shape
    out = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    lse = torch.full((B, H, T), float("inf"), dtype=torch.float32, device=q.device)
    table, n_tiles = plan.q_plan
    dummy_f = lse
    dummy_i = n_tiles
    qk_scale = plan.scale * _LOG2E
    local_fwd_kernel[(table.shape[1], B * H)](
        q, k, v, out, lse, _or_dummy(plan.key_bias, dummy_f), _or_dummy(plan.gidx, dummy_i),
        _or_dummy(plan.gcount, dummy_i), table, n_tiles, plan.dilation,
        q.stride(), k.stride(), v.stride(), out.stride(),
        H, T, D, table.shape[1], plan.g_max, qk_scale, plan.reach_left, plan.reach_right,
        plan.dropout_p, plan.seed,
        HAS_BIAS=plan.key_bias is not None, HAS_GLOBAL=plan.has_global, **plan.launch_options(False),
    )
    if plan.has_global:
        _global_forward(plan, qg, kg, vg, out, lse)
    return out, lse


def _global_forward(plan: _Plan, qg, kg, vg, out, lse) -> None:
    """Global rows over all keys, split along T; partial softmaxes merged here, rows written into out/lse."""
    B, H, T, D = plan.shape
    opts = plan.launch_options(False)
    G, n_splits, block_d = plan.g_max, plan.n_splits, opts["BLOCK_D"]
    f32 = dict(dtype=torch.float32, device=qg.device)
    o_part = torch.zeros((B * H, n_splits, G, block_d), **f32)
    m_part = torch.full((B * H, n_splits, G), float("-inf"), **f32)
    l_part = torch.zeros((B * H, n_splits, G), **f32)
    global_fwd_kernel[(triton.cdiv(G, opts["BLOCK_M"]), n_splits, B * H)](
        qg, kg, vg, o_part, m_part, l_part, _or_dummy(plan.pad_bias, lse), plan.gidx, plan.gcount,
        qg.stride(), kg.stride(), vg.stride(),
        H, T, D, G, plan.config.global_split, n_splits, plan.scale * _LOG2E, plan.dropout_p, plan.seed,
        HAS_PAD=plan.pad_bias is not None, **opts,
    )
    m = m_part.amax(dim=1)  # [BH, G]; -inf only on rows past a batch row's global count (never written)
    weight = torch.exp2(m_part - m[:, None])
    l = (l_part * weight).sum(dim=1)
    o = (o_part * weight[..., None]).sum(dim=1)[..., :D] / l[..., None]
    _write_global_rows(out, o.view(B, H, G, D), plan)
    _write_global_rows(lse, (m + torch.log2(l)).view(B, H, G), plan)


def _write_global_rows(dest: torch.Tensor, rows: torch.Tensor, plan: _Plan, accumulate: bool = False) -> None:
    """``dest[b, :, gidx[b, g]] (+)= rows[b, :, g]`` for the real global tokens ``g < gcount[b]``.

    Rows past a batch row's count are read back and rewritten unchanged (no host sync to drop them).
    """
    B, G = plan.gidx.shape
    b_idx = torch.arange(B, device=dest.device)[:, None]
    tok = plan.gidx.long()
    current = dest[b_idx, :, tok]  # [B, G, H, ...]
    new = rows.transpose(1, 2)
    if accumulate:
        new = current.float() + new
    keep = plan.gvalid.view(B, G, *([1] * (current.dim() - 2)))
    dest[b_idx, :, tok] = torch.where(keep, new.to(dest.dtype), current)


def _backward(plan: _Plan, dout, q, k, v, qg, kg, vg, out, lse):
    B, H, T, D = plan.shape
    dout = dout.to(q.dtype)
    # Delta_i = sum_j P_ij dP_ij = dO_i . O_i (holds with dropout too); O is 0 on padding rows.
    delta = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    rows = plan.config.row_block
    row_dot_kernel[(triton.cdiv(T, rows), B * H)](
        out, dout, delta, out.stride(), dout.stride(), H, T, D,
        BLOCK_M=rows, BLOCK_D=max(16, triton.next_power_of_2(D)), num_warps=plan.config.row_num_warps,
    )
    dq, dk, dv = (torch.empty((B, H, T, D), dtype=q.dtype, device=q.device) for _ in range(3))
    qk_scale = plan.scale * _LOG2E
    key_bias = _or_dummy(plan.key_bias, delta)
    q_table, q_tiles = plan.dq_plan
    k_table, k_tiles = plan.k_plan
    common = plan.launch_options(True)
    cfg_m, cfg_n = common["BLOCK_M"], common["BLOCK_N"]
    local_bwd_dkdv_kernel[(k_table.shape[1], B * H)](
        q, k, v, dout, dk, dv, lse, delta, key_bias, k_table, k_tiles, plan.dilation,
        q.stride(), k.stride(), v.stride(), dout.stride(), dk.stride(), dv.stride(),
        H, T, D, k_table.shape[1], qk_scale, plan.scale, plan.reach_left, plan.reach_right,
        plan.dropout_p, plan.seed, HAS_BIAS=plan.key_bias is not None, **common,
    )
    local_bwd_dq_kernel[(q_table.shape[1], B * H)](
        q, k, v, dout, dq, lse, delta, key_bias, _or_dummy(plan.gidx, q_tiles), _or_dummy(plan.gcount, q_tiles),
        q_table, q_tiles, plan.dilation,
        q.stride(), k.stride(), v.stride(), dout.stride(), dq.stride(),
        H, T, D, q_table.shape[1], plan.g_max, qk_scale, plan.scale, plan.reach_left, plan.reach_right,
        plan.dropout_p, plan.seed, HAS_BIAS=plan.key_bias is not None, HAS_GLOBAL=plan.has_global, **common,
    )
    if not plan.has_global:
        return dq, dk, dv, None, None, None

    G, n_splits, split, block_d = plan.g_max, plan.n_splits, plan.config.global_split, common["BLOCK_D"]
    f32 = dict(dtype=torch.float32, device=q.device)
    dk_part, dv_part = (torch.zeros((B * H, n_splits, G, block_d), **f32) for _ in range(2))
    global_keys_bwd_kernel[(triton.cdiv(G, cfg_n), n_splits, B * H)](
        q, k, v, dout, dk_part, dv_part, lse, delta, plan.key_bias, plan.gidx, plan.gcount,
        q.stride(), k.stride(), v.stride(), dout.stride(),
        H, T, D, G, split, n_splits, qk_scale, plan.dropout_p, plan.seed, **common,
    )
    # after local_bwd_dkdv_kernel (same stream), which wrote these rows without the global-key term
    _write_global_rows(dk, (dk_part.sum(dim=1)[..., :D] * plan.scale).view(B, H, G, D), plan, accumulate=True)
    _write_global_rows(dv, dv_part.sum(dim=1)[..., :D].view(B, H, G, D), plan, accumulate=True)

    pad_bias = _or_dummy(plan.pad_bias, delta)
    dq_part = torch.zeros((B * H, n_splits, G, block_d), **f32)
    global_bwd_dq_kernel[(triton.cdiv(G, cfg_m), n_splits, B * H)](
        qg, kg, vg, dout, dq_part, lse, delta, pad_bias, plan.gidx, plan.gcount,
        qg.stride(), kg.stride(), vg.stride(), dout.stride(),
        H, T, D, G, split, n_splits, qk_scale, plan.dropout_p, plan.seed,
        HAS_PAD=plan.pad_bias is not None, **common,
    )
    dqg = torch.zeros((B, H, T, D), dtype=q.dtype, device=q.device)  # nonzero only on global rows
    _write_global_rows(dqg, (dq_part.sum(dim=1)[..., :D] * plan.scale).view(B, H, G, D), plan)
    dkg, dvg = (torch.empty((B, H, T, D), dtype=q.dtype, device=q.device) for _ in range(2))
    global_bwd_dkdv_kernel[(triton.cdiv(T, cfg_n), B * H)](
        qg, kg, vg, dout, dkg, dvg, lse, delta, pad_bias, plan.gidx, plan.gcount,
        qg.stride(), kg.stride(), vg.stride(), dout.stride(), dkg.stride(), dvg.stride(),
        H, T, D, plan.g_max, qk_scale, plan.scale, plan.dropout_p, plan.seed,
        HAS_PAD=plan.pad_bias is not None, **common,
    )
    return dq, dk, dv, dqg, dkg, dvg


# ------------------------------------------------------------------------------------------------
# torch.library custom ops: torch.compile sees one opaque node per direction (no graph break on the
# host-side planning, which syncs once for the number of global tokens), with fake impls for shapes.

def _statics(window, dilation, causal, scale, dropout_p, seed, config, precision) -> _Statics:
    return _Statics(window, tuple(dilation), causal, scale, dropout_p, seed, tuple(config), precision)


# Autograd is registered on the forward op (``register_autograd``): the torch.library form of an
# autograd.Function, which torch.compile can trace through.


@torch.library.custom_op("longformer::triton_forward", mutates_args=())
def triton_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_global: Optional[torch.Tensor],
                   k_global: Optional[torch.Tensor], v_global: Optional[torch.Tensor],
                   key_padding_mask: Optional[torch.Tensor], global_mask: Optional[torch.Tensor],
                   window: int, dilation: List[int], causal: bool, scale: float, dropout_p: float, seed: int,
                   config: List[int], precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output [B,H,T,D] and the float32 log2-domain log-sum-exp [B,H,T] that backward needs."""
    st = _statics(window, dilation, causal, scale, dropout_p, seed, config, precision)
    plan = _Plan.build(q, key_padding_mask, global_mask, st)
    return _forward(plan, q, k, v, q_global, k_global, v_global)


@triton_forward.register_fake
def _(q, k, v, q_global, k_global, v_global, key_padding_mask, global_mask, window, dilation, causal, scale,
      dropout_p, seed, config, precision):
    B, H, T, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("longformer::triton_backward", mutates_args=())
def triton_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    q_global: Optional[torch.Tensor], k_global: Optional[torch.Tensor],
                    v_global: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                    key_padding_mask: Optional[torch.Tensor], global_mask: Optional[torch.Tensor],
                    window: int, dilation: List[int], causal: bool, scale: float, dropout_p: float, seed: int,
                    config: List[int], precision: str) -> List[torch.Tensor]:
    """[dq, dk, dv] plus [dq_global, dk_global, dv_global] when the global projections were given."""
    st = _statics(window, dilation, causal, scale, dropout_p, seed, config, precision)
    plan = _Plan.build(q, key_padding_mask, global_mask, st)
    dq, dk, dv, dqg, dkg, dvg = _backward(plan, dout, q, k, v, q_global, k_global, v_global, out, lse)
    if q_global is None:
        return [dq, dk, dv]
    if dqg is None:  # global_mask given but no token is global: their gradients are zero
        dqg, dkg, dvg = (torch.zeros_like(t) for t in (q_global, k_global, v_global))
    return [dq, dk, dv, dqg, dkg, dvg]


@triton_backward.register_fake
def _(dout, q, k, v, q_global, k_global, v_global, out, lse, key_padding_mask, global_mask, window, dilation,
      causal, scale, dropout_p, seed, config, precision):
    n = 3 if q_global is None else 6
    return [q.new_empty(q.shape) for _ in range(n)]


def _setup_context(ctx, inputs, output):
    q, k, v, qg, kg, vg, pad, glob, *statics = inputs
    ctx.save_for_backward(q, k, v, qg, kg, vg, pad, glob, *output)
    ctx.statics = statics


def _backward_formula(ctx, dout, _dlse):
    q, k, v, qg, kg, vg, pad, glob, out, lse = ctx.saved_tensors
    grads = triton_backward(dout, q, k, v, qg, kg, vg, out, lse, pad, glob, *ctx.statics)
    grads = list(grads) + [None] * (6 - len(grads))
    return (*grads, None, None) + (None,) * len(ctx.statics)


triton_forward.register_autograd(_backward_formula, setup_context=_setup_context)


__all__ = ["INTERPRETER_CONFIG", "SUPPORTED_DTYPES", "TritonConfig", "attention", "default_config", "fp32_dot_precision", "triton_backward",
           "triton_forward", "use_config"]
