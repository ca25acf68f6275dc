"""backend="triton" against the dense reference, under TRITON_INTERPRET=1 on CPU (conftest sets it).

Shapes are tiny on purpose: the interpreter costs milliseconds per program instance. Tiles are
16x16 by default here, so T=16/32/48 hit tile boundaries and T=37/41/70 leave ragged last tiles.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from triton_kernels import longformer_attention  # noqa: E402
from triton_kernels.masks import dense_allowed, in_window  # noqa: E402
from triton_kernels.triton_attention import TritonConfig, use_config  # noqa: E402
from triton_kernels.triton_schedule import (ROW_CLASS, ROW_HI, ROW_IHI, ROW_ILO, ROW_LEN, ROW_LO,  # noqa: E402
                                            ROW_START, count_tiles, head_schedule, reaches)

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ----------------------------------------------------------------------------------------------
# helpers


def _inputs(B, H, T, D, dtype=torch.float32, n=3, device="cpu"):
    return [torch.randn(B, H, T, D, device=device).to(dtype).requires_grad_() for _ in range(n)]


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


def test_global_tokens_add_one_key_tile_group_per_query_tile():
    with_g = count_tiles(4096, 256, block_m=64, block_n=64, n_global=10)
    assert with_g.global_key_tiles == 4096 // 64  # ceil(10/64) = 1 extra key tile per query tile
    assert with_g.global_query_tiles == 4096 // 64  # one tile of 10 global rows over all 64 key tiles


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
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 29:] = True
    pad[0, 5] = True  # padding in the middle of a window
    glob = torch.zeros(B, T, dtype=torch.bool)
    glob[0, [0, 3, 5, 20]] = True  # 5 is also padding: padding wins
    glob[1, [1, 31]] = True
    _check_against_dense(_inputs(B, H, T, 16, n=6), window=8, dilation=[2, 3], global_mask=glob,
                         key_padding_mask=pad)


def test_everything_at_once_with_interior_tiles():
    B, H, T = 2, 2, 70
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 60:] = True
    glob = torch.zeros(B, T, dtype=torch.bool)
    glob[0, [0, 40]] = True
    glob[1, 2] = True
    _check_against_dense(_inputs(B, H, T, 16, n=6), window=64, dilation=[1, 2], global_mask=glob,
                         key_padding_mask=pad, scale=0.2)


def test_many_globals_span_several_key_tiles():
    T = 40
    glob = torch.zeros(1, T, dtype=torch.bool)
    glob[0, ::2] = True  # 20 global tokens > one 16-wide key tile, many inside windows
    _check_against_dense(_inputs(1, 2, T, 16, n=6), window=6, global_mask=glob)


def test_causal_with_padding_matches_dense():
    pad = torch.zeros(2, 33, dtype=torch.bool)
    pad[0, :3] = True  # left padding
    pad[1, 30:] = True
    _check_against_dense(_inputs(2, 2, 33, 16), window=4, causal=True, dilation=[1, 2], key_padding_mask=pad)


def test_fully_padded_row_gives_zeros_not_nan():
    pad = torch.zeros(2, 19, dtype=torch.bool)
    pad[1] = True
    tensors = _inputs(2, 1, 19, 16)
    out = _run("triton", tensors, window=4, key_padding_mask=pad)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    grads = torch.autograd.grad(out.sum(), tensors)
    assert all(torch.isfinite(g).all() and g[1].abs().max() == 0 for g in grads)


def test_global_mask_with_no_global_token():
    tensors = _inputs(1, 2, 21, 16, n=6)
    _check_against_dense(tensors, window=4, global_mask=torch.zeros(1, 21, dtype=torch.bool))
    out = _run("triton", tensors, window=4, global_mask=torch.zeros(1, 21, dtype=torch.bool))
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(out.sum(), tensors[3:]))


def test_other_block_sizes_head_dim_and_strided_inputs():
    B, T, H, D = 1, 45, 2, 24  # D not a power of two: padded to 32 inside the kernel
    # [B, T, H, D] storage viewed as [B, H, T, D]: what a fairseq module hands over without a copy
    tensors = [torch.randn(B, T, H, D).transpose(1, 2).requires_grad_() for _ in range(3)]
    assert not tensors[0].is_contiguous()
    with use_config(TritonConfig(block_m=32, block_n=16, num_warps=1, num_stages=1, bwd_block_m=16, bwd_block_n=32)):
        _check_against_dense(tensors, window=10, dilation=[1, 2], scale=0.3)


# ----------------------------------------------------------------------------------------------
# half precision: same kernels, math in float32


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_inputs_match_float32_dense(dtype, atol):
    glob = torch.zeros(1, 33, dtype=torch.bool)
    glob[0, [0, 17]] = True
    _check_against_dense(_inputs(1, 2, 33, 16, dtype=dtype, n=6), atol=atol, window=8, dilation=[1, 2],
                         global_mask=glob)


def test_half_precision_large_scores_do_not_overflow():
    # q.k = 16 * 40 * 40 = 25600 per pair: fine in fp32 softmax, inf if the scores were kept in fp16
    q = torch.full((1, 1, 20, 16), 40.0, dtype=torch.float16, requires_grad=True)
    k = torch.full((1, 1, 20, 16), 40.0, dtype=torch.float16, requires_grad=True)
    v = torch.randn(1, 1, 20, 16, dtype=torch.float16, requires_grad=True)
    out = longformer_attention(q, k, v, 4, scale=1.0, backend="triton")
    assert torch.isfinite(out).all()
    ref = longformer_attention(q.float(), k.float(), v.float(), 4, scale=1.0, backend="dense")
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


# ----------------------------------------------------------------------------------------------
# dropout: in-kernel Philox, regenerated in backward


def _dropout_mask(B, H, T, p, seed, **kw):
    """Read the kernel's kept/dropped pattern: with q=k=0 every key of a row is equally likely and
    with v = identity the output row *is* the (dropped, rescaled) probability row."""
    zeros = torch.zeros(B, H, T, T)
    eye = torch.eye(T).expand(B, H, T, T).contiguous()
    tensors = [zeros, zeros, eye] + ([zeros, zeros, eye] if "global_mask" in kw else [])
    torch.manual_seed(seed)
    dropped = _run("triton", tensors, dropout_p=p, **kw)
    plain = _run("dense", tensors, **kw)
    keep = dropped > 0
    # every kept probability is rescaled by exactly 1/(1-p); every dropped one is exactly 0
    torch.testing.assert_close(dropped[keep], plain[keep] / (1 - p))
    assert (dropped[plain == 0] == 0).all()  # nothing leaks outside the key set
    return keep.float() / (1 - p), plain > 0


def test_dropout_keeps_the_expected_fraction_and_is_reproducible():
    p = 0.3
    scale, attended = _dropout_mask(2, 2, 16, p, seed=1, window=32)  # full attention: 1024 pairs
    kept = (scale[attended] > 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.05, kept
    again, _ = _dropout_mask(2, 2, 16, p, seed=1, window=32)
    other, _ = _dropout_mask(2, 2, 16, p, seed=2, window=32)
    assert torch.equal(scale, again)
    assert not torch.equal(scale, other)
    assert not torch.equal(scale[0, 0], scale[0, 1])  # heads draw different masks


def test_dropout_gradients_match_dense_with_the_same_mask():
    B, H, T, p, seed = 1, 2, 16, 0.25, 7
    glob = torch.zeros(B, T, dtype=torch.bool)
    glob[0, [2, 11]] = True
    kw = dict(window=4, dilation=[1, 2], global_mask=glob)
    scale, _ = _dropout_mask(B, H, T, p, seed, **kw)

    tensors = _inputs(B, H, T, 16, n=6)
    torch.manual_seed(seed)
    out = _run("triton", tensors, dropout_p=p, **kw)
    ref_inputs = [t.detach().clone().requires_grad_() for t in tensors]
    ref = _dense_with_dropout_scale(ref_inputs, scale, **kw)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    grad = torch.randn_like(ref)
    for g, w in zip(torch.autograd.grad(out, tensors, grad), torch.autograd.grad(ref, ref_inputs, grad)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def _dense_with_dropout_scale(tensors, scale, window, dilation, global_mask):
    """Independent O(T^2) formula: softmax over the contract's key set, times a given dropout scale."""
    q, k, v, qg, kg, vg = tensors
    T, D = q.shape[-2:]
    allowed = dense_allowed(T, window, torch.tensor(dilation), False, None, global_mask)

    def attend(qq, kk, vv, mask):
        s = (qq @ kk.transpose(-1, -2)) * D**-0.5
        return (s.masked_fill(~mask, float("-inf")).softmax(-1) * scale) @ vv

    local = attend(q, k, v, allowed)
    glob = attend(qg, kg, vg, torch.ones_like(allowed))
    return torch.where(global_mask[:, None, :, None], glob, local)


# ----------------------------------------------------------------------------------------------
# torch.library registration (what torch.compile relies on): schema, autograd, fake tensors, AOT


def test_custom_op_passes_opcheck():
    import dataclasses

    from triton_kernels import triton_attention as ta

    B, H, T, D = 1, 2, 20, 16
    tensors = [torch.randn(B, H, T, D, requires_grad=True) for _ in range(6)]
    glob = torch.zeros(B, T, dtype=torch.bool)
    glob[0, 3] = True
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[0, 18:] = True
    config = list(dataclasses.astuple(ta.default_config(torch.device("cpu"), D)))
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
# real GPU (skipped, and reported as skipped, without CUDA)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_matches_dense(dtype):
    T = 1000
    glob = torch.zeros(2, T, dtype=torch.bool, device="cuda")
    glob[:, [0, 500]] = True
    pad = torch.zeros(2, T, dtype=torch.bool, device="cuda")
    pad[1, 900:] = True
    tensors = _inputs(2, 4, T, 64, dtype=dtype, n=6, device="cuda")
    atol = {torch.float16: 5e-3, torch.bfloat16: 4e-2, torch.float32: 1e-4}[dtype]
    _check_against_dense(tensors, atol=atol, window=256, dilation=[1, 1, 2, 3], global_mask=glob,
                         key_padding_mask=pad)


@pytest.mark.gpu
@GPU
def test_gpu_memory_is_linear_in_T_up_to_64k_tokens():
    peaks = {}
    for T in (16384, 65536):
        q, k, v = _inputs(1, 12, T, 64, dtype=torch.bfloat16, device="cuda")
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
    import os
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
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| ") and "kernel" not in line]
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
