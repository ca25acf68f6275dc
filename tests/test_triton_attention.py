"""backend="triton" against the dense reference.

Without CUDA they run on CPU tensors under TRITON_INTERPRET=1 (conftest sets it); on a GPU machine the
same tests run the compiled kernels on CUDA tensors, with the same small tiles. Shapes are tiny on
purpose: the interpreter costs milliseconds per program instance. Tiles are 16x16 here, so T=16/32/48
hit tile boundaries and T=37/41/70 leave ragged last tiles. Tests marked ``gpu`` need CUDA and use the
production tiles and lengths.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from triton_kernels import longformer_attention  # noqa: E402
from triton_kernels.masks import in_window, reaches  # noqa: E402
from triton_kernels.triton_attention import (INTERPRETER_CONFIG, TritonConfig, fp32_dot_precision,  # noqa: E402
                                             use_config)
from triton_kernels.triton_schedule import (ROW_CLASS, ROW_HI, ROW_IHI, ROW_ILO, ROW_LEN, ROW_LO,  # noqa: E402
                                            ROW_START, count_tiles, head_schedule)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
GPU = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (and TRITON_INTERPRET unset)")


@pytest.fixture(autouse=True)
def _small_tiles_on_gpu(request):
    """The interpreter's 16x16 tiles for the small-shape tests on a GPU too (tile boundaries as on CPU)."""
    if DEVICE == "cuda" and "gpu" not in request.keywords:
        with use_config(INTERPRETER_CONFIG):
            yield
    else:
        yield


# ----------------------------------------------------------------------------------------------
# helpers


def _inputs(B, H, T, D, dtype=torch.float32, n=3, token_major=False):
    """``n`` random ``[B, H, T, D]`` leaves; ``token_major``: views of ``[T, B, H, D]`` storage (fairseq's)."""
    def one():
        if token_major:
            return torch.randn(T, B, H, D, device=DEVICE).to(dtype).permute(1, 2, 0, 3).requires_grad_()
        return torch.randn(B, H, T, D, device=DEVICE).to(dtype).requires_grad_()
    return [one() for _ in range(n)]


def _mask(B, T, true_at: dict):
    """Bool ``[B, T]`` on DEVICE, True at ``true_at[b]`` (positions or a slice) of each listed row ``b``."""
    mask = torch.zeros(B, T, dtype=torch.bool, device=DEVICE)
    for b, positions in true_at.items():
        mask[b, positions] = True
    return mask


def _run(backend, tensors, **kw):
    if len(tensors) == 6:
        kw = dict(kw, q_global=tensors[3], k_global=tensors[4], v_global=tensors[5])
    return longformer_attention(*tensors[:3], backend=backend, **kw)


def _check_against_dense(tensors, atol=2e-5, **kw):
    """Forward and every input gradient of triton vs dense (dense in float32 on float32 copies)."""
    ref_inputs = [t.detach().float().requires_grad_() for t in tensors]
    out = _run("triton", tensors, **kw)
    ref = _run("dense", ref_inputs, **kw)
    assert out.dtype == tensors[0].dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=atol)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, tensors, grad.to(out.dtype))
    want = torch.autograd.grad(ref, ref_inputs, grad)
    names = ["q", "k", "v", "q_global", "k_global", "v_global"]
    for name, g, w in zip(names, got, want):
        assert g.dtype == tensors[0].dtype, name
        torch.testing.assert_close(g.float(), w, atol=atol * 4, rtol=atol * 4, msg=lambda m: f"d{name}: {m}")


# ----------------------------------------------------------------------------------------------
# the tile plan (pure PyTorch, no kernels): what the kernels skip and what they mask


@pytest.mark.parametrize("T,window,dilation,causal,bm,bn", [
    (37, 8, 1, False, 16, 16), (70, 64, 1, False, 16, 16), (64, 64, 1, True, 16, 32),
    (41, 8, 3, False, 16, 16), (50, 6, 2, True, 32, 16), (33, 0, 1, False, 16, 16), (20, 40, 1, False, 16, 16),
])
def test_plan_covers_every_window_pair_once_and_interior_tiles_need_no_mask(T, window, dilation, causal, bm, bn):
    left, right = reaches(window, causal)
    plan = head_schedule(T, dilation, left, right, bm, bn)
    visits = torch.zeros(T, T, dtype=torch.int64)  # [query token, key token]
    for row in plan.tolist():
        r, start, lo, ilo, ihi, hi, length = (row[i] for i in (ROW_CLASS, ROW_START, ROW_LO, ROW_ILO,
                                                                 ROW_IHI, ROW_HI, ROW_LEN))
        assert lo <= ilo <= ihi <= hi
        rows = torch.arange(start, min(start + bm, length))
        for tile in range(lo, hi):
            cols = torch.arange(tile * bn, min(tile * bn + bn, length))
            inside = in_window((rows[:, None] - cols[None, :]) * dilation, window, dilation, causal)
            if ilo <= tile < ihi:  # interior: full tile, every pair in the window
                assert len(cols) == bn and inside.all()
            tok_r, tok_c = r + rows * dilation, r + cols * dilation
            visits[tok_r[:, None], tok_c[None, :]] += inside.long()
    pos = torch.arange(T)
    wanted = in_window(pos[:, None] - pos[None, :], window, dilation, causal)
    assert torch.equal(visits, wanted.long())  # every window pair visited, and exactly once


def _tiles(n, size):
    return [torch.arange(start, min(start + size, n)) for start in range(0, n, size)]


def _brute_force_tile_pairs(T, window, dilations, causal, bm, bn, global_pos=()):
    """Tile pairs that hold at least one pair the contract needs, counted by looking at every pair.

    Window pairs are counted per residue class (the kernels' tiles); a window tile pair is
    "interior" when its key tile is full and every (query, key) pair of it is a window pair.
    """
    glob = set(global_pos)
    masked = interior = global_key = global_query = 0
    for d in dilations:
        for r in range(min(d, T)):
            tokens = torch.arange(r, T, d)  # the residue class
            for rows in _tiles(len(tokens), bm):
                for cols in _tiles(len(tokens), bn):
                    inside = in_window(tokens[rows][:, None] - tokens[cols][None, :], window, d, causal)
                    if inside.all() and len(cols) == bn:
                        interior += 1
                    elif inside.any():
                        masked += 1
                local_rows = [t for t in tokens[rows].tolist() if t not in glob]
                global_key += sum(1 for _ in _tiles(len(glob), bn)) if local_rows else 0
        # global queries see every key: each (global query tile, key tile) pair holds needed pairs
        global_query += len(_tiles(len(glob), bm)) * len(_tiles(T, bn))
    return masked, interior, global_key, global_query


@pytest.mark.parametrize("T,window,dilation,causal,bm,bn", [
    (200, 24, [1], False, 16, 16), (200, 24, [1, 2, 3], False, 16, 32), (190, 40, [1, 4], True, 32, 16),
    (97, 0, [1, 2], False, 16, 16), (64, 200, [1], False, 16, 16),
])
def test_tile_counts_equal_a_brute_force_count_of_tile_pairs(T, window, dilation, causal, bm, bn):
    glob = list(range(3, T, 11))  # > one key tile of them, and a local row in every query tile
    count = count_tiles(T, window, dilation, causal, bm, bn, n_global=len(glob))
    masked, interior, global_key, global_query = _brute_force_tile_pairs(T, window, dilation, causal, bm, bn, glob)
    assert (count.masked_tiles, count.interior_tiles) == (masked, interior)
    assert (count.global_key_tiles, count.global_query_tiles) == (global_key, global_query)
    pos = torch.arange(T)
    window_pairs = sum(int(in_window(pos[:, None] - pos[None, :], window, d, causal).sum()) for d in dilation)
    assert count_tiles(T, window, dilation, causal, bm, bn).useful_scores == window_pairs


def test_tile_count_is_linear_in_T_and_close_to_the_useful_work():
    base = count_tiles(16384, 512, block_m=64, block_n=64)
    # 513 keys per query; a 64-row tile spans 576 keys = 9 key tiles (7 interior + 2 edge)
    assert base.overhead == pytest.approx(576 / 513, rel=0.01)
    assert base.interior_tiles > 3 * base.masked_tiles
    double = count_tiles(32768, 512, block_m=64, block_n=64)
    assert double.window_tiles / base.window_tiles == pytest.approx(2.0, rel=0.01)
    # dilation on 2 of 12 heads: the same tiles per head (no d-fold waste), up to ragged class ends
    plain = count_tiles(16384, 512, dilation=[1] * 12, block_m=64, block_n=64)
    dilated = count_tiles(16384, 512, dilation=[1] * 10 + [2, 3], block_m=64, block_n=64)
    assert dilated.window_tiles / plain.window_tiles < 1.01
    causal = count_tiles(16384, 512, causal=True, block_m=64, block_n=64)
    assert causal.overhead < 1.15
    # a dense (full) T x T attention would visit (T/64)^2 tiles: 28x more here
    assert (16384 // 64) ** 2 / base.window_tiles > 25


# ----------------------------------------------------------------------------------------------
# forward + all gradients vs dense, float32


@pytest.mark.parametrize("T,kw", [
    (37, dict(window=8)),  # odd length, ragged last tile
    (32, dict(window=16)),  # T and w/2 on tile boundaries
    (70, dict(window=64)),  # long enough for interior (unmasked) tiles
    (37, dict(window=6, causal=True)),
    (48, dict(window=32, causal=True, dilation=[1, 3])),
    (41, dict(window=8, dilation=[1, 2])),
    (20, dict(window=40)),  # window >= 2(T-1): full attention
    (17, dict(window=0)),  # each query sees only itself
])
def test_local_attention_matches_dense(T, kw):
    _check_against_dense(_inputs(1, 2, T, 16), **kw)


def test_padding_and_globals_with_dilation_match_dense():
    B, H, T = 2, 2, 37
    pad = _mask(B, T, {0: 5, 1: slice(29, None)})  # row 0: padding in the middle of a window
    glob = _mask(B, T, {0: [0, 3, 5, 20], 1: [1, 31]})  # 5 is also padding: padding wins
    _check_against_dense(_inputs(B, H, T, 16, n=6), window=8, dilation=[2, 3], global_mask=glob,
                         key_padding_mask=pad)


def test_everything_at_once_with_interior_tiles():
    B, H, T = 2, 2, 70
    pad = _mask(B, T, {1: slice(60, None)})
    glob = _mask(B, T, {0: [0, 40], 1: 2})
    _check_against_dense(_inputs(B, H, T, 16, n=6), window=64, dilation=[1, 2], global_mask=glob,
                         key_padding_mask=pad, scale=0.2)


def test_many_globals_span_several_key_tiles():
    T = 40
    glob = _mask(1, T, {0: slice(None, None, 2)})  # 20 global tokens > one 16-wide key tile, many inside windows
    _check_against_dense(_inputs(1, 2, T, 16, n=6), window=6, global_mask=glob)


def test_causal_with_padding_matches_dense():
    pad = _mask(2, 33, {0: slice(None, 3), 1: slice(30, None)})  # left padding, right padding
    _check_against_dense(_inputs(2, 2, 33, 16), window=4, causal=True, dilation=[1, 2], key_padding_mask=pad)


def test_fully_padded_row_gives_zeros_not_nan():
    pad = _mask(2, 19, {1: slice(None, None)})
    tensors = _inputs(2, 1, 19, 16)
    out = _run("triton", tensors, window=4, key_padding_mask=pad)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    grads = torch.autograd.grad(out.sum(), tensors)
    assert all(torch.isfinite(g).all() and g[1].abs().max() == 0 for g in grads)


def test_global_mask_with_no_global_token():
    tensors = _inputs(1, 2, 21, 16, n=6)
    _check_against_dense(tensors, window=4, global_mask=_mask(1, 21, {}))
    out = _run("triton", tensors, window=4, global_mask=_mask(1, 21, {}))
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(out.sum(), tensors[3:]))


def test_other_block_sizes_head_dim_and_strided_inputs():
    # D=24 is not a power of two: padded to 32 inside the kernel. [T, B, H, D] storage seen as
    # [B, H, T, D]: what a fairseq module hands over without a copy.
    tensors = _inputs(1, 2, 45, 24, token_major=True)
    assert not tensors[0].is_contiguous()
    with use_config(TritonConfig(block_m=32, block_n=16, num_warps=1, num_stages=1, bwd_block_m=16, bwd_block_n=32)):
        _check_against_dense(tensors, window=10, dilation=[1, 2], scale=0.3)


def test_global_rows_merge_partials_of_several_splits():
    # T=70 over global_split=32: 3 splits whose partial softmaxes and gradients the host merges
    glob = _mask(2, 70, {0: [1, 50], 1: [69]})
    pad = _mask(2, 70, {1: slice(None, 4)})
    _check_against_dense(_inputs(2, 2, 70, 16, n=6), window=8, dilation=[1, 3], global_mask=glob,
                         key_padding_mask=pad)


# ----------------------------------------------------------------------------------------------
# half precision: same kernels, math in float32; float32: the precision torch's switch asks for


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_inputs_match_float32_dense(dtype, atol):
    glob = _mask(1, 33, {0: [0, 17]})
    _check_against_dense(_inputs(1, 2, 33, 16, dtype=dtype, n=6), atol=atol, window=8, dilation=[1, 2],
                         global_mask=glob)


def test_half_precision_large_scores_do_not_overflow():
    # q.k = 16 * 40 * 40 = 25600 per pair: fine in fp32 softmax, inf if the scores were kept in fp16
    q = torch.full((1, 1, 20, 16), 40.0, dtype=torch.float16, device=DEVICE, requires_grad=True)
    k = torch.full((1, 1, 20, 16), 40.0, dtype=torch.float16, device=DEVICE, requires_grad=True)
    v = torch.randn(1, 1, 20, 16, dtype=torch.float16, device=DEVICE, requires_grad=True)
    out = longformer_attention(q, k, v, 4, scale=1.0, backend="triton")
    assert torch.isfinite(out).all()
    ref = longformer_attention(q.float(), k.float(), v.float(), 4, scale=1.0, backend="dense")
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


def test_fp32_precision_follows_torchs_switch_and_never_raises(monkeypatch):
    from types import SimpleNamespace

    matmul = torch.backends.cuda.matmul
    assert fp32_dot_precision() == "ieee"  # torch's default: full float32 matmuls
    try:  # the torch >= 2.9 settings, after which reading the legacy allow_tf32 can raise
        for matmul_setting, global_setting, expected in [("tf32", "none", "tf32"), ("ieee", "none", "ieee"),
                                                         ("none", "tf32", "tf32"), ("none", "ieee", "ieee")]:
            torch.backends.fp32_precision = global_setting
            matmul.fp32_precision = matmul_setting
            assert fp32_dot_precision() == expected, (matmul_setting, global_setting)
    finally:
        matmul.fp32_precision = torch.backends.fp32_precision = "none"
    monkeypatch.setattr(torch.backends.cuda, "matmul", SimpleNamespace(allow_tf32=True))  # torch < 2.9
    assert fp32_dot_precision() == "tf32"


# ----------------------------------------------------------------------------------------------
# dropout: in-kernel Philox, regenerated in backward


def _kernel_dropout_scale(B, H, T, p, seed, D=16, **kw):
    """Read the kernel's kept/dropped pattern as ``[B, H, T, T]`` keep/(1-p), and the attended pairs.

    With q = k = 0 every key of a row is equally likely; with v one-hot per key (the D keys of one
    chunk at a time, each on its own column) the output row *is* the dropped, rescaled probability
    row of those keys. Each call draws the same mask (same ``torch.manual_seed``).
    """
    zeros = torch.zeros(B, H, T, D, device=DEVICE)
    scale = torch.zeros(B, H, T, T, device=DEVICE)
    attended = torch.zeros(B, H, T, T, dtype=torch.bool, device=DEVICE)
    for c in range(0, T, D):
        n = min(D, T - c)
        v = torch.zeros(B, H, T, D, device=DEVICE)
        v[:, :, c:c + n, :n] = torch.eye(n, device=DEVICE)
        tensors = [zeros, zeros, v] + ([zeros, zeros, v] if "global_mask" in kw else [])
        torch.manual_seed(seed)
        dropped = _run("triton", tensors, dropout_p=p, **kw)[..., :n]
        plain = _run("dense", tensors, **kw)[..., :n]
        keep = dropped > 0
        # every kept probability is rescaled by exactly 1/(1-p); every dropped one is exactly 0
        torch.testing.assert_close(dropped[keep], plain[keep] / (1 - p))
        assert (dropped[plain == 0] == 0).all()  # nothing leaks outside the key set
        scale[..., c:c + n] = keep.float() / (1 - p)
        attended[..., c:c + n] = plain > 0
    return scale, attended


def _contract_keys(B, T, window, dilation, causal, global_mask):
    """``[B, H, T, T]`` key set of every query, enumerated from the contract's words (docs/attention.md):
    a local query ``i`` sees ``i - m*d`` for ``0 <= m <= w`` (causal) or ``|m| <= w/2``, and every
    global token; a global query sees every key. No padding here."""
    keys = torch.zeros(B, len(dilation), T, T, dtype=torch.bool, device=DEVICE)
    steps = range(0, window + 1) if causal else range(-(window // 2), window // 2 + 1)
    i = torch.arange(T, device=DEVICE)
    for h, d in enumerate(dilation):
        for m in steps:
            j = i - m * d
            inside = (j >= 0) & (j < T)
            keys[:, h, i[inside], j[inside]] = True
    if global_mask is not None:
        keys |= global_mask[:, None, None, :] | global_mask[:, None, :, None]
    return keys


def _reference_with_dropout(tensors, scale, keys, global_mask):
    """O(T^2) softmax over ``keys`` (local rows) or every key (global rows), times a given dropout scale."""
    q, k, v, *projections = (t.float() for t in tensors)
    sm_scale = q.shape[-1] ** -0.5

    def attend(qq, kk, vv, mask):
        s = (qq @ kk.transpose(-1, -2)) * sm_scale
        return (s.masked_fill(~mask, float("-inf")).softmax(-1) * scale) @ vv

    out = attend(q, k, v, keys)
    if global_mask is not None:
        glob = attend(*projections, torch.ones_like(keys))
        out = torch.where(global_mask[:, None, :, None], glob, out)
    return out


def _check_dropout_against_reference(B, H, T, D, p, seed, dtype=torch.float32, atol=2e-5, **kw):
    """The kernel's outputs and gradients under dropout equal the O(T^2) formula with its own mask."""
    scale, attended = _kernel_dropout_scale(B, H, T, p, seed, D=D, **kw)
    keys = _contract_keys(B, T, kw["window"], kw.get("dilation", [1] * H), kw.get("causal", False),
                          kw.get("global_mask"))
    assert torch.equal(attended, keys)
    tensors = _inputs(B, H, T, D, dtype=dtype, n=6 if "global_mask" in kw else 3)
    torch.manual_seed(seed)
    out = _run("triton", tensors, dropout_p=p, **kw)
    ref_inputs = [t.detach().float().requires_grad_() for t in tensors]
    ref = _reference_with_dropout(ref_inputs, scale, keys, kw.get("global_mask"))
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=atol)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, tensors, grad.to(out.dtype))
    for g, w in zip(got, torch.autograd.grad(ref, ref_inputs, grad)):
        torch.testing.assert_close(g.float(), w, atol=atol * 5, rtol=atol * 5)
    return scale, attended


def test_dropout_keeps_the_expected_fraction_and_is_reproducible():
    p = 0.3
    scale, attended = _kernel_dropout_scale(2, 2, 16, p, seed=1, window=32)  # full attention: 1024 pairs
    kept = (scale[attended] > 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.05, kept
    again, _ = _kernel_dropout_scale(2, 2, 16, p, seed=1, window=32)
    other, _ = _kernel_dropout_scale(2, 2, 16, p, seed=2, window=32)
    assert torch.equal(scale, again)
    assert not torch.equal(scale, other)
    assert not torch.equal(scale[0, 0], scale[0, 1])  # heads draw different masks


def test_dropout_gradients_match_the_reference_with_the_same_mask():
    glob = _mask(1, 16, {0: [2, 11]})
    _check_dropout_against_reference(1, 2, 16, 16, 0.25, seed=7, window=4, dilation=[1, 2], global_mask=glob)


# ----------------------------------------------------------------------------------------------
# torch.library registration (what torch.compile relies on): schema, autograd, fake tensors, AOT


def test_custom_op_passes_opcheck():
    import dataclasses

    from triton_kernels import triton_attention as ta

    B, H, T, D = 1, 2, 20, 16
    tensors = _inputs(B, H, T, D, n=6)
    glob = _mask(B, T, {0: 3})
    pad = _mask(B, T, {0: slice(18, None)})
    config = list(dataclasses.astuple(INTERPRETER_CONFIG))
    args = (*tensors, pad, glob, 4, [1, 2], False, 0.25, 0.0, 0, config, "ieee")
    result = torch.library.opcheck(ta.triton_forward, args)
    assert set(result.values()) == {"SUCCESS"}, result


# ----------------------------------------------------------------------------------------------
# errors


def test_unsupported_dtype_is_a_clear_error():
    q = torch.randn(1, 1, 8, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        longformer_attention(q, q, q, 2, backend="triton")


def test_cpu_tensors_without_interpreter_are_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        longformer_attention(q, q, q, 2, backend="triton")


def test_bad_block_size_is_a_clear_error():
    with pytest.raises(ValueError, match="power of two >= 16"):
        TritonConfig(block_m=24)


# ----------------------------------------------------------------------------------------------
# real GPU, production tiles (skipped, and reported as skipped, without CUDA)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_matches_dense(dtype):
    # T=2100 > 2 x global_split (1024): the global kernels' partials of 3 splits are merged. q, k, v are
    # [T, B, H, D] views (fairseq's layout), the global projections contiguous.
    B, H, T = 2, 4, 2100
    glob = _mask(B, T, {0: [0, 500, 1500], 1: [7, 2099]})
    pad = _mask(B, T, {1: slice(1900, None)})
    tensors = _inputs(B, H, T, 64, dtype=dtype, token_major=True) + _inputs(B, H, T, 64, dtype=dtype)
    atol = {torch.float16: 5e-3, torch.bfloat16: 4e-2, torch.float32: 1e-4}[dtype]
    _check_against_dense(tensors, atol=atol, window=256, dilation=[1, 1, 2, 3], global_mask=glob,
                         key_padding_mask=pad)


@pytest.mark.gpu
@GPU
def test_gpu_char_lm_shape_matches_dense():
    # The char-LM's attention: head size 128 (64 + 64 relative dims), causal, dilation up to 4, fp16,
    # left padding; T not a multiple of the tiles.
    pad = _mask(2, 1500, {1: slice(None, 37)})
    _check_against_dense(_inputs(2, 4, 1500, 128, dtype=torch.float16), atol=5e-3, window=192, causal=True,
                         dilation=[1, 2, 3, 4], key_padding_mask=pad, scale=64 ** -0.5)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("D,dtype,atol,kw", [
    (64, torch.float32, 1e-4, dict(window=64, dilation=[1, 3], global_mask="split")),
    (128, torch.float16, 5e-3, dict(window=96, dilation=[2, 4], causal=True)),
])
def test_gpu_dropout_matches_the_reference_with_the_kernels_mask(D, dtype, atol, kw):
    T = 1100  # 2 global splits
    if kw.get("global_mask") == "split":
        kw = dict(kw, global_mask=_mask(1, T, {0: [3, 1050]}))
    scale, attended = _check_dropout_against_reference(1, 2, T, D, 0.2, seed=3, dtype=dtype, atol=atol, **kw)
    kept = (scale[attended] > 0).float().mean().item()
    assert abs(kept - 0.8) < 0.02, kept


@pytest.mark.gpu
@GPU
def test_gpu_fp32_uses_tf32_only_when_torch_allows_it():
    q, k, v = _inputs(1, 4, 1024, 64)
    ref = longformer_attention(q.double(), k.double(), v.double(), 256, backend="dense")
    ieee = (longformer_attention(q, k, v, 256, backend="triton").double() - ref).abs().max().item()
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        tf32 = (longformer_attention(q, k, v, 256, backend="triton").double() - ref).abs().max().item()
    finally:
        torch.backends.cuda.matmul.fp32_precision = "none"
    assert ieee < 1e-5 < tf32 < 1e-2, (ieee, tf32)


@pytest.mark.gpu
@GPU
def test_gpu_memory_is_linear_in_T_up_to_64k_tokens():
    peaks = {}
    for T in (16384, 65536):
        q, k, v = _inputs(1, 12, T, 64, dtype=torch.bfloat16)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = longformer_attention(q, k, v, 512, backend="triton")
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
        peaks[T] = torch.cuda.max_memory_allocated() - base
        assert torch.isfinite(q.grad).all()
        del q, k, v, out
    # O(T*D) buffers only: a 64K x 64K score matrix per head would need 8 GiB in bf16 alone
    assert peaks[65536] < 2 * 2**30
    assert peaks[65536] / peaks[16384] < 4.5


@pytest.mark.gpu
@GPU
def test_auto_backend_is_triton_on_cuda():
    from triton_kernels.api import resolve_backend
    from triton_kernels.triton_attention import attention

    assert resolve_backend("auto", torch.zeros(1, device="cuda")) is attention


# ----------------------------------------------------------------------------------------------
# real compilation without a GPU: the interpreter does not check that the kernels compile


def test_every_kernel_compiles_for_sm90_without_a_gpu():
    import subprocess
    import sys

    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this triton wheel ships no ptxas")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    run = subprocess.run([sys.executable, "-m", "triton_kernels.triton_aot", "--arch", "90", "--cases", "d64-bf16"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| kernel |")]
    built = {name.strip(): cell.split("/") for name, cell in rows}
    assert set(built) == {"local_fwd_kernel", "local_bwd_dq_kernel", "local_bwd_dkdv_kernel", "global_fwd_kernel",
                          "global_bwd_dq_kernel", "global_bwd_dkdv_kernel", "global_keys_bwd_kernel",
                          "row_dot_kernel"}, run.stdout
    for name, (regs, stack, shared_kib) in built.items():
        assert int(stack) == 0, f"{name} spills {stack} bytes with the default bf16 tiles"
        assert int(regs) <= 255 and float(shared_kib) <= 227, (name, regs, shared_kib)


# ----------------------------------------------------------------------------------------------
# benchmarks/attention_gpu.py: its CPU-side behaviour (the timings themselves need a GPU)


def _load_gpu_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_gpu.py"
    spec = importlib.util.spec_from_file_location("attention_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_reports_targets_and_plots_from_rows(tmp_path, capsys):
    bench = _load_gpu_benchmark()
    assert bench.useful_flops(16384, 512, 12, 64, 1, "fwd") == 4 * 16384 * 513 * 64 * 12

    def row(impl, ms, T=16384, note=""):
        return dict(impl=impl, T=T, window=512, dtype="bf16", mode="fwdbwd", ms=ms,
                    peak_mib=None if ms is None else 100.0, tflops=None if ms is None else 50.0, note=note)

    rows = [row("triton", 2.0), row("flex", 2.5), row("fa2", 1.5), row("triton-dil", 2.6),
            row("triton", 8.0, T=65536), row("sdpa", None, T=65536, note="out of memory")]
    bench.print_table(rows)
    bench.check_targets(rows)
    text = capsys.readouterr().out
    assert "PASS  at least as fast as FlexAttention: ours/theirs = 0.80" in text
    assert "FAIL  within 1.25x of FlashAttention-2 local: ours/theirs = 1.33" in text
    assert "FAIL  dilation on 2 heads costs at most 1.2x: 1.30x" in text
    assert "T=65536: sdpa out of memory" in text
    bench.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_gpu_benchmark_without_cuda_exits_with_a_clear_message():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        _load_gpu_benchmark().main(["--lengths", "1024"])
