"""GPU time and memory of sliding-window attention: our Triton kernels against the usual alternatives.

Implementations, all on the same [B, H, T, D] q/k/v (B=1, 12 heads, d=64, window 512 by default):
  triton      ours, backend="triton" (fused, tile-skipping, fp32 softmax)
  triton-dil  ours with dilation 2 and 3 on the last 2 heads (the paper's char-LM setting)
  torch       ours, backend="torch" (blocked PyTorch, O(T*w))
  flex        torch.compile'd FlexAttention with a sliding-window BlockMask (built by a compiled
              create_block_mask; one compiled function for the whole sweep, no eager fallback)
  fa2         FlashAttention-2 ``window_size=(w/2, w/2)`` (only if ``flash_attn`` is installed)
  sdpa        dense F.scaled_dot_product_attention with a T x T boolean band mask
for T = 1K .. 64K, fp16 and bf16, forward ("fwd") and forward+backward ("fwdbwd").

Reports milliseconds (median of CUDA-event timings), peak extra GPU memory (MiB over the live
inputs), achieved TFLOP/s against the *useful* FLOPs 4*T*(w+1)*D*H per forward (x3.5 for fwd+bwd:
the backward has 5 matmuls to the forward's 2), and each implementation's time relative to ours.
Writes a JSON of every row and a PNG (time and memory against T). Targets of issue #3 are checked
at the end (T=16K, w=512, bf16, fwd+bwd).

    python benchmarks/attention_gpu.py                          # full sweep (~10 min on an H100)
    python benchmarks/attention_gpu.py --lengths 4096 16384 --dtypes bf16 --modes fwdbwd
    python benchmarks/attention_gpu.py --sweep-configs --lengths 16384   # tile-size search for ours
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.atomic import atomic_file, write_text_atomic  # noqa: E402
from triton_kernels import longformer_attention  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]


class Unsupported(Exception):
    """This implementation cannot run this case (missing package, known size limit)."""


# ---------------------------------------------------------------- implementations
# factory(T, window, heads) -> fn(q, k, v) -> out, for [B, H, T, D] inputs; or raise Unsupported.


def make_ours(backend: str, dilated: bool = False):
    def factory(T, window, heads):
        dilation = [1] * (heads - 2) + [2, 3] if dilated else 1
        return lambda q, k, v: longformer_attention(q, k, v, window, dilation=dilation, backend=backend)
    return factory


_FLEX: dict = {}


def _compiled_flex():
    """One compiled FlexAttention and one compiled block-mask builder for the whole run.

    Every (T, dtype, with-grad) case is a recompile of the same function; past dynamo's recompile
    limit (8 by default) it would silently fall back to eager FlexAttention and the "flex" rows would
    time an unfused kernel. So the limit is raised to cover the sweep, and hitting it is an error
    (the row then says so) rather than a silent fallback.
    """
    if not _FLEX:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as err:
            raise Unsupported(f"no FlexAttention in this torch ({err})")
        import torch._dynamo.config as dynamo

        for name in ("recompile_limit", "cache_size_limit"):  # the new name and the old one
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), 64))
        if hasattr(dynamo, "fail_on_recompile_limit_hit"):
            dynamo.fail_on_recompile_limit_hit = True
        _FLEX["attention"] = torch.compile(flex_attention, dynamic=False)
        _FLEX["block_mask"] = torch.compile(create_block_mask)
    return _FLEX["attention"], _FLEX["block_mask"]


def make_flex(T, window, heads):
    flex_attention, create_block_mask = _compiled_flex()
    half = window // 2

    def in_window(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= half

    block_mask = create_block_mask(in_window, None, None, T, T, device="cuda")
    return lambda q, k, v: flex_attention(q, k, v, block_mask=block_mask)


def make_fa2(T, window, heads):
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        raise Unsupported("flash_attn not installed")
    half = window // 2

    def run(q, k, v):  # FA2 wants [B, T, H, D]; the transposes are views, FA2 copies if it must
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window_size=(half, half))
        return out.transpose(1, 2)
    return run


def make_sdpa(T, window, heads):
    import torch.nn.functional as F

    pos = torch.arange(T, device="cuda")
    mask = (pos[:, None] - pos[None, :]).abs() <= window // 2  # T x T: the memory problem itself
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


IMPLEMENTATIONS = {
    "triton": make_ours("triton"),
    "triton-dil": make_ours("triton", dilated=True),
    "torch": make_ours("torch"),
    "flex": make_flex,
    "fa2": make_fa2,
    "sdpa": make_sdpa,
}


# ---------------------------------------------------------------- measurement


def useful_flops(T, window, heads, head_dim, batch, mode) -> float:
    forward = 4.0 * T * (window + 1) * head_dim * heads * batch
    return forward * (3.5 if mode == "fwdbwd" else 1.0)


def time_ms(step, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(name, T, window, dtype, mode, args) -> dict:
    row = dict(impl=name, T=T, window=window, dtype=dtype, mode=mode, ms=None, peak_mib=None, tflops=None, note="")
    torch.cuda.empty_cache()
    shape = (args.batch, args.heads, T, args.head_dim)
    try:
        q, k, v = (torch.randn(shape, device="cuda", dtype=DTYPES[dtype], requires_grad=mode == "fwdbwd")
                   for _ in range(3))
        grad = torch.randn(shape, device="cuda", dtype=DTYPES[dtype])
        fn = IMPLEMENTATIONS[name](T, window, args.heads)

        if mode == "fwd":
            def step():
                with torch.no_grad():
                    fn(q, k, v)
        else:
            def step():
                fn(q, k, v).backward(grad)
                q.grad = k.grad = v.grad = None

        step()  # compile / autotune outside the timed region
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        row["ms"] = time_ms(step, args.warmup, args.reps)
        row["tflops"] = useful_flops(T, window, args.heads, args.head_dim, args.batch, mode) / (row["ms"] * 1e-3) / 1e12
    except Unsupported as err:
        row["note"] = str(err)
    except torch.OutOfMemoryError:
        row["note"] = "out of memory"
    except Exception as err:  # a competitor failing must not stop the sweep; say why
        row["note"] = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
    finally:
        q = k = v = grad = fn = None  # noqa: F841
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------- reporting


def print_table(rows):
    print(f"{'impl':11s} {'dtype':5s} {'mode':6s} {'T':>6s} {'ms':>9s} {'peak MiB':>9s} {'TFLOP/s':>8s} "
          f"{'x ours':>7s}  note")
    ours = {(r["T"], r["dtype"], r["mode"]): r["ms"] for r in rows if r["impl"] == "triton"}
    for r in rows:
        base = ours.get((r["T"], r["dtype"], r["mode"]))
        rel = f"{r['ms'] / base:7.2f}" if r["ms"] and base else f"{'-':>7s}"
        ms = f"{r['ms']:9.3f}" if r["ms"] else f"{'-':>9s}"
        mib = f"{r['peak_mib']:9.1f}" if r["peak_mib"] is not None else f"{'-':>9s}"
        tf = f"{r['tflops']:8.1f}" if r["tflops"] else f"{'-':>8s}"
        print(f"{r['impl']:11s} {r['dtype']:5s} {r['mode']:6s} {r['T']:6d} {ms} {mib} {tf} {rel}  {r['note']}")


def check_targets(rows):
    """Issue #3's targets at T=16K, w=512, bf16, fwd+bwd; prints PASS/FAIL/n.a. for each."""
    def ms(impl, T=16384, dtype="bf16", mode="fwdbwd"):
        for r in rows:
            if (r["impl"], r["T"], r["dtype"], r["mode"]) == (impl, T, dtype, mode) and r["ms"]:
                return r["ms"]
        return None

    ours = ms("triton")
    print("\ntargets (T=16384, w=512, bf16, fwd+bwd):")
    checks = [("at least as fast as FlexAttention", "flex", 1.0),
              ("within 1.25x of FlashAttention-2 local", "fa2", 1.25),
              ("dilation on 2 heads costs at most 1.2x", "triton-dil", None)]
    for text, other, limit in checks:
        theirs = ms(other)
        if ours is None or theirs is None:
            print(f"  n.a.  {text} (not measured)")
        elif limit is None:
            ratio = theirs / ours
            print(f"  {'PASS' if ratio <= 1.2 else 'FAIL'}  {text}: {ratio:.2f}x")
        else:
            ratio = ours / theirs
            print(f"  {'PASS' if ratio <= limit else 'FAIL'}  {text}: ours/theirs = {ratio:.2f}")
    big = [r for r in rows if r["T"] == max(x["T"] for x in rows)]
    for impl in ("triton", "sdpa"):
        r = next((x for x in big if x["impl"] == impl), None)
        if r:
            state = f"{r['peak_mib']:.0f} MiB" if r["ms"] else r["note"]
            print(f"  T={r['T']}: {impl} {state}")


def plot(rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["dtype"], r["mode"]) for r in rows})
    fig, axes = plt.subplots(2, len(combos), figsize=(5 * len(combos), 8), squeeze=False)
    for col, (dtype, mode) in enumerate(combos):
        for impl in IMPLEMENTATIONS:
            pts = [(r["T"], r["ms"], r["peak_mib"]) for r in rows
                   if (r["impl"], r["dtype"], r["mode"]) == (impl, dtype, mode) and r["ms"]]
            if pts:
                axes[0, col].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
                axes[1, col].plot([p[0] for p in pts], [max(p[2], 1e-3) for p in pts], marker="o", label=impl)
        axes[0, col].set_title(f"{dtype} {mode}")
        for ax, label in ((axes[0, col], "ms"), (axes[1, col], "peak extra MiB")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)


def write_json(rows, path: Path, args):
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, args=vars(args) | {"out": str(args.out)})
    write_text_atomic(path, json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))


def sweep_configs(args):
    """Time a few tile configurations of ours (fwd+bwd) so the defaults can be set from data."""
    from triton_kernels.triton_attention import TritonConfig, use_config

    candidates = [TritonConfig(),
                  TritonConfig(block_m=128, block_n=64, num_warps=8),
                  TritonConfig(block_m=64, block_n=32),
                  TritonConfig(num_stages=3),
                  TritonConfig(bwd_block_m=64, bwd_block_n=64, bwd_num_warps=8),
                  TritonConfig(bwd_block_m=32, bwd_block_n=128, bwd_num_warps=8),
                  TritonConfig(bwd_block_m=16, bwd_block_n=64)]
    for T in args.lengths:
        for dtype in args.dtypes:
            for cfg in candidates:
                with use_config(cfg):
                    fwd = measure("triton", T, args.window, dtype, "fwd", args)
                    both = measure("triton", T, args.window, dtype, "fwdbwd", args)
                print(f"T={T} {dtype} {cfg}: fwd {fwd['ms'] or fwd['note']} ms, fwd+bwd {both['ms'] or both['note']} ms",
                      flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp16", "bf16"])
    parser.add_argument("--modes", nargs="+", choices=["fwd", "fwdbwd"], default=["fwd", "fwdbwd"])
    parser.add_argument("--impls", nargs="+", choices=sorted(IMPLEMENTATIONS), default=list(IMPLEMENTATIONS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--sdpa-max-len", type=int, default=65536,
                        help="skip dense SDPA above this T (it needs a T x T mask)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/attention_gpu.png"),
                        help="PNG path; the JSON of all rows is written beside it")
    parser.add_argument("--sweep-configs", action="store_true", help="time tile configurations of ours instead")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        raise SystemExit("attention_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "on CPU run benchmarks/attention_cpu.py instead")
    if args.window % 2:
        raise SystemExit(f"--window must be even (w/2 keys each side), got {args.window}")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"B={args.batch} H={args.heads} D={args.head_dim} w={args.window}", flush=True)
    if args.sweep_configs:
        sweep_configs(args)
        return

    rows = []
    for dtype in args.dtypes:
        for mode in args.modes:
            for T in args.lengths:
                for impl in args.impls:
                    if impl == "sdpa" and T > args.sdpa_max_len:
                        continue
                    row = measure(impl, T, args.window, dtype, mode, args)
                    rows.append(row)
                    done = f"{row['ms']:.3f} ms" if row["ms"] else row["note"]
                    print(f"  {impl:11s} {dtype} {mode:6s} T={T:6d}: {done}", flush=True)
    print()
    print_table(rows)
    check_targets(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(rows, args.out.with_suffix(".json"), args)
    plot(rows, args.out)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
