"""CPU time and peak memory of Longformer attention implementations, measured side by side in one run.

Compares, on the same q/k/v (B=1, 12 heads, d=64, window 512 by default):
  dense   our O(T^2) reference backend
  torch   our blocked O(T*w) backend
  hf      HF transformers' LongformerSelfAttention (its projections swapped for our q/k/v)
  flex    torch.compile'd FlexAttention with a sliding-window block mask (forward only: no CPU backward)
for each T, without dilation and with dilation 2 on 2 of the 12 heads (HF has no dilation).

Times are medians over ``--repeats`` rounds in which every implementation runs once in turn, so
the ratios compare runs made at the same moment of a shared machine's load.

Peak memory is the rise of the process's peak RSS over the live inputs while one call runs, read
from /proc (VmHWM reset through clear_refs). glibc is told to serve large blocks by mmap so that freed
tensors return to the OS and do not hide the next call's peak (for the whole run, timings included).

    python benchmarks/attention_cpu.py                 # T = 1024, 4096, 16384 (several minutes)
    python benchmarks/attention_cpu.py --quick         # T = 1024, 2048, a minute
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.atomic import atomic_file  # noqa: E402
from triton_kernels import longformer_attention  # noqa: E402

HEADS, HEAD_DIM = 12, 64


class Unsupported(Exception):
    pass


# ---------------------------------------------------------------- implementations
# Each factory returns fn(q, k, v) -> out for [1, H, T, D] inputs, or raises Unsupported(reason).

def make_ours(backend, max_len=None):
    def factory(T, window, dilation):
        if max_len is not None and T > max_len:
            gib = HEADS * T * T * 13 / 2**30  # bool mask + float32 scores and probabilities
            raise Unsupported(f"T x T needs ~{gib:.0f} GiB")
        return lambda q, k, v: longformer_attention(q, k, v, window, dilation=dilation, backend=backend)
    return factory


def make_hf(T, window, dilation):
    if any(d != 1 for d in dilation):
        raise Unsupported("no dilation in HF")
    try:
        _hide_broken_torchaudio()
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention
    except ImportError:
        raise Unsupported("pip install -e '.[benchmark]'")
    config = LongformerConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS,
                              attention_window=[window], attention_probs_dropout_prob=0.0)
    layer = LongformerSelfAttention(config, layer_id=0)
    feed = {}

    class Feed(torch.nn.Module):  # stands in for a projection: returns the given q/k/v as [T, B, C]
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, hidden):
            x = feed[self.name]
            x = x.permute(2, 0, 1, 3).reshape(T, 1, HEADS * HEAD_DIM)
            return x.clone() if self.name == "q" else x  # HF scales q in place

    layer.query, layer.key, layer.value = Feed("q"), Feed("k"), Feed("v")
    hidden = torch.zeros(1, T, HEADS * HEAD_DIM)
    local = torch.zeros(1, T)
    no = torch.zeros(1, T, dtype=torch.bool)

    def fn(q, k, v):
        feed.update(q=q, k=k, v=v)
        return layer(hidden, attention_mask=local, is_index_masked=no, is_index_global_attn=no,
                     is_global_attn=False)[0]
    return fn


def _hide_broken_torchaudio():
    """fairseq pulls in torchaudio, whose newest wheel does not load with torch 2.13; transformers would
    import it (for audio models only) and crash. Tell transformers it is absent."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        import transformers.utils
        import transformers.utils.import_utils

        transformers.utils.is_torchaudio_available = lambda: False
        transformers.utils.import_utils.is_torchaudio_available = lambda: False


def make_flex(T, window, dilation):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        raise Unsupported("torch without FlexAttention")
    step = torch.tensor(dilation)
    half = window // 2

    def in_window(b, h, q_idx, kv_idx):
        delta = q_idx - kv_idx
        d = step[h]
        return (delta % d == 0) & (delta.abs() <= half * d)

    # Compiled mask construction: the eager path would materialise an H x T x T mask first.
    block_mask = create_block_mask(in_window, 1, HEADS, T, T, device="cpu", _compile=True)
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


IMPLEMENTATIONS = {
    "dense": (make_ours("dense", max_len=4096), True),
    "torch": (make_ours("torch"), True),
    "hf": (make_hf, True),
    "flex": (make_flex, False),  # FlexAttention has no CPU backward
}


# ---------------------------------------------------------------- measurement

LIBC = ctypes.CDLL("libc.so.6")


def mmap_large_blocks() -> None:
    """Make glibc serve every block over 256 KiB by mmap, so that freed tensors go back to the OS and do not
    hide the next call's peak (``peak_mib``). Each large allocation then page-faults fresh memory, which
    also slows every timed call after it: ``model_cpu.py`` measures memory in a child process for that."""
    LIBC.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD, fixed (no longer glibc's adaptive default)


def _rss_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mib(run):
    gc.collect()
    LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    run()
    return (_rss_kib("VmHWM") - base) / 1024


def interleaved_seconds(runs: dict, repeats: int) -> dict:
    """Median time of each run, timed in rounds (A, B, C, A, B, C, ...) so that a slow spell of this
    shared machine lands on every implementation alike instead of on whichever ran then."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(names, T, window, dilation, repeats):
    """Forward and forward+backward time and peak memory of each implementation on the same inputs."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, T, HEAD_DIM, generator=gen).requires_grad_() for _ in range(3))
    upstream = torch.randn(1, HEADS, T, HEAD_DIM, generator=gen)
    results, forwards, train_steps = {}, {}, {}
    for name in names:
        factory, has_backward = IMPLEMENTATIONS[name]
        try:
            fn = factory(T, window, dilation)
        except Unsupported as why:
            results[name] = {"skip": str(why)}
            continue
        results[name] = {}

        def forward(fn=fn):  # inference: detached inputs (FlexAttention refuses CPU inputs that require grad)
            with torch.no_grad():
                fn(q.detach(), k.detach(), v.detach())

        def train_step(fn=fn):
            out = fn(q, k, v)
            out.backward(upstream.view_as(out))
            q.grad = k.grad = v.grad = None

        print(f"  warming up {name} ...", file=sys.stderr, flush=True)
        forward()  # warm-up (and compilation for flex)
        forwards[name] = forward
        if has_backward:
            train_step()
            train_steps[name] = train_step
    for name, run in forwards.items():
        results[name]["fwd_mib"] = peak_mib(run)
    for name, run in train_steps.items():
        results[name]["fwdbwd_mib"] = peak_mib(run)
    for name, value in interleaved_seconds(forwards, repeats).items():
        results[name]["fwd_s"] = value
    for name, value in interleaved_seconds(train_steps, repeats).items():
        results[name]["fwdbwd_s"] = value
    return results


# ---------------------------------------------------------------- report

def fmt(value, unit):
    if value is None:
        return "-"
    return f"{value:.3f}" if unit == "s" else f"{value:.0f}"


def print_table(rows):
    header = f"{'config':<12}{'T':>7}  {'impl':<6}{'fwd s':>9}{'fwd MiB':>9}{'f+b s':>9}{'f+b MiB':>9}  note"
    print(header)
    print("-" * len(header))
    for (config, T, name), r in rows.items():
        if "skip" in r:
            print(f"{config:<12}{T:>7}  {name:<6}{'':>36}  skipped: {r['skip']}")
            continue
        print(f"{config:<12}{T:>7}  {name:<6}{fmt(r['fwd_s'], 's'):>9}{fmt(r['fwd_mib'], 'm'):>9}"
              f"{fmt(r.get('fwdbwd_s'), 's'):>9}{fmt(r.get('fwdbwd_mib'), 'm'):>9}")


def ratio(rows, a, b, key):
    ra, rb = rows.get(a, {}), rows.get(b, {})
    if key in ra and key in rb and ra[key] > 0:
        return rb[key] / ra[key]
    return None


def print_ratios(rows, lengths):
    print("\nRatios (measured above, same run):")
    for T in lengths:
        ours = ("plain", T, "torch")
        lines = {
            "HF / torch, fwd+bwd time": ratio(rows, ours, ("plain", T, "hf"), "fwdbwd_s"),
            "torch / HF, fwd+bwd peak memory": ratio(rows, ("plain", T, "hf"), ours, "fwdbwd_mib"),
            "flex / torch, forward time": ratio(rows, ours, ("plain", T, "flex"), "fwd_s"),
            "dense / torch, fwd+bwd time": ratio(rows, ours, ("plain", T, "dense"), "fwdbwd_s"),
            "dilated / plain torch, fwd+bwd time": ratio(rows, ours, ("dilation2x2", T, "torch"), "fwdbwd_s"),
        }
        for label, value in lines.items():
            if value is not None:
                print(f"  T={T:<6} {label:<38} {value:6.2f}x")
    torch_mem = [(T, rows[("plain", T, "torch")]["fwdbwd_mib"]) for T in lengths
                 if "fwdbwd_mib" in rows.get(("plain", T, "torch"), {})]
    if len(torch_mem) >= 2:
        slope = _slope(torch_mem)
        print(f"  torch fwd+bwd peak memory slope: {slope * 1024:.1f} MiB per 1K tokens "
              f"(least squares over T = {', '.join(str(T) for T, _ in torch_mem)}); "
              + ", ".join(f"{m / T * 1024:.1f} MiB/1K at T={T}" for T, m in torch_mem))


def _slope(points):
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def save_length_plots(panels, title, path, log_y=False):
    """One row of panels over a log2 sequence-length axis; ``panels`` is ``[(title, {label: [(T, y), ...]})]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for ax, (panel_title, series) in zip(axes, panels):
        for label, points in series.items():
            if points:
                ax.plot(*zip(*points), "o-", label=label)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(panel_title)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)


def plot(rows, lengths, path):
    panels = (("fwd_s", "forward time (s)"), ("fwdbwd_s", "forward+backward time (s)"),
              ("fwdbwd_mib", "forward+backward peak memory (MiB)"))
    save_length_plots(
        [(title, {name: [(T, rows[("plain", T, name)][key]) for T in lengths if key in rows.get(("plain", T, name), {})]
                  for name in IMPLEMENTATIONS})
         for key, title in panels],
        f"Longformer attention on CPU ({torch.get_num_threads()} thread(s), 12 heads, d=64)", path, log_y=True)
    print(f"\nplot: {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--quick", action="store_true", help="T = 1024, 2048 and 2 repeats")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impl", nargs="+", default=list(IMPLEMENTATIONS), choices=list(IMPLEMENTATIONS))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/attention_cpu.png"))
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats = [1024, 2048], 2
    torch.set_num_threads(args.threads)
    mmap_large_blocks()

    configs = {"plain": [1] * HEADS, "dilation2x2": [1] * (HEADS - 2) + [2, 2]}
    rows = {}
    for T in args.lengths:
        for config, dilation in configs.items():
            names = [n for n in args.impl if config == "plain" or n in ("torch", "flex")]
            print(f"measuring {config} T={T}: {', '.join(names)} ...", file=sys.stderr, flush=True)
            for name, result in measure(names, T, args.window, dilation, args.repeats).items():
                rows[(config, T, name)] = result
    print(f"\nLongformer attention, CPU, {args.threads} thread(s), B=1, H={HEADS}, d={HEAD_DIM}, "
          f"window={args.window}; dilation2x2 = dilation 2 on 2 of the 12 heads\n")
    print_table(rows)
    print_ratios(rows, args.lengths)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.lengths, args.plot)


if __name__ == "__main__":
    main()
