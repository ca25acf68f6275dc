"""Training throughput and peak memory: ``longformer_lm`` vs fairseq's own ``transformer_lm``, on CPU.

Both models have the same size (default: the paper's small model, 12 layers, 8 heads, 512 hidden,
FFN 2048, pre-LN, GeLU, dropout 0.2) and a 256-symbol vocabulary (enwik8 bytes). A training step is
forward + cross-entropy + backward + AdamW step on one sequence. Ours uses window 512 on every layer
(dilation on 2 heads of the upper layers as in Table 12) and exact Transformer-XL relative positions;
fairseq's ``transformer_lm`` uses learned absolute positions and its dense T x T future mask.

A third row, ``window1_bound``, is our model with window 1 (each character attends itself and the one before):
everything but attention costs what it costs in ours, so its speed-up over ``transformer_lm`` is
the most that *any* attention implementation could give this model at that length (Amdahl's law).

Each (model, length) runs in a fresh subprocess so its peak RSS is its own. Usage::

    python benchmarks/charlm_throughput.py                 # 12 layers, T = 4096 and 8192
    python benchmarks/charlm_throughput.py --quick         # 2 layers, 2 timed steps (smoke run)

Writes ``benchmarks/results/charlm_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from data_prep.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("transformer_lm", "longformer_lm", "window1_bound")


def model_window(kind: str, window: int) -> int | None:
    """The attention window a model row runs with (transformer_lm: full causal attention)."""
    return {"longformer_lm": window, "window1_bound": 1}.get(kind)


def build_model(kind: str, seq_len: int, layers: int, window: int, checkpoint_activations: bool = False,
                rel_pos_dim: int = 0):
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for byte in range(256):
        dictionary.add_symbol(str(byte))

    class Task:
        source_dictionary = target_dictionary = dictionary

    if kind != "transformer_lm":
        window = model_window(kind, window)
        from fairseq_longformer.models.longformer_lm import LongformerLanguageModel, LongformerLMConfig

        upper = layers // 2  # Table 12: no dilation in the lower half, gaps 1/2/3 above
        dilation = [1] * (layers - upper) + [2 + (3 * i) // upper for i in range(upper)]
        cfg = LongformerLMConfig(decoder_layers=layers, attention_window=[window], attention_dilation=dilation,
                                 dropout=0.2, checkpoint_activations=checkpoint_activations, rel_pos_dim=rel_pos_dim)
        return LongformerLanguageModel.build_model(cfg, Task())

    from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

    args = TransformerLanguageModelConfig(
        decoder_layers=layers, decoder_embed_dim=512, decoder_ffn_embed_dim=2048, decoder_attention_heads=8,
        decoder_normalize_before=True, activation_fn="gelu", dropout=0.2,
        tokens_per_sample=seq_len, max_target_positions=seq_len, checkpoint_activations=checkpoint_activations,
    )
    return TransformerLanguageModel.build_model(args, Task())


def worker(kind: str, seq_len: int, layers: int, window: int, steps: int, threads: int,
           checkpoint_activations: bool, rel_pos_dim: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(kind, seq_len, layers, window, checkpoint_activations, rel_pos_dim).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    tokens = torch.randint(4, 260, (1, seq_len + 1))
    source, target = tokens[:, :-1], tokens[:, 1:]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step():
        logits = model(source)[0]
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    step()  # warm-up (allocator, one-time masks)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "model": kind, "seq_len": seq_len, "layers": layers, "window": model_window(kind, window),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "tokens_per_s": round(seq_len * steps / elapsed, 1), "s_per_step": round(elapsed / steps, 3),
        # CPU seconds of this process: less sensitive than wall time to other jobs on a shared machine
        "tokens_per_cpu_s": round(seq_len * steps / cpu, 1), "cpu_s_per_step": round(cpu / steps, 3),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_training_MiB": round(rss_before), "threads": threads,
        "checkpoint_activations": checkpoint_activations,
        "rel_pos_dim": None if kind == "transformer_lm" else rel_pos_dim,
    }


def run_isolated(kind: str, seq_len: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--seq-len", str(seq_len), "--layers", str(args.layers),
               "--window", str(args.window), "--steps", str(args.steps), "--threads", str(args.threads),
               "--rel-pos-dim", str(args.rel_pos_dim)]
    if args.checkpoint_activations:
        command.append("--checkpoint-activations")
    print(f"[bench] {kind} T={seq_len} ...", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": kind, "seq_len": seq_len, "error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        reason = "killed (out of memory?)" if done.returncode < 0 else done.stderr.strip().splitlines()[-1:]
        return {"model": kind, "seq_len": seq_len, "error": f"exit {done.returncode}: {reason}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"[bench]   {result['tokens_per_s']} tokens/s ({result['tokens_per_cpu_s']} per CPU-s), "
          f"peak RSS {result['peak_rss_MiB']} MiB", flush=True)
    return result


def median_run(results: list[dict]) -> dict:
    """The round with the median throughput, with every round's tokens/s alongside."""
    ok = sorted((r for r in results if "error" not in r), key=lambda r: r["tokens_per_s"])
    if not ok:
        return results[0]
    return ok[(len(ok) - 1) // 2] | {"rounds_tokens_per_s": [r["tokens_per_s"] for r in ok]}


def markdown(rows: list[dict], args) -> str:
    lines = [
        f"Training step (fwd + bwd + AdamW) on CPU, {args.threads} threads, {args.layers} layers x 512 hidden, "
        f"batch 1, {args.steps} timed steps, median of {args.rounds} interleaved round(s); "
        f"window {args.window} for longformer_lm"
        f"{'; gradient checkpointing on both' if args.checkpoint_activations else ''}"
        f"{f'; --rel-pos-dim {args.rel_pos_dim}' if args.rel_pos_dim else ''}.",
        "",
        "| T | model | tokens/s (wall; range over rounds) | s/step | tokens per CPU-s | peak RSS MiB | speed-up vs transformer_lm (wall / CPU) | memory vs transformer_lm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["model"], r["seq_len"]): r for r in rows}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seq_len']} | {r['model']} | {r['error']} | | | | | |")
            continue
        base = by_key.get(("transformer_lm", r["seq_len"]), {})
        speed = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x / {r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x"
                 if "tokens_per_s" in base else "-")
        mem = f"{r['peak_rss_MiB'] / base['peak_rss_MiB']:.2f}x" if "peak_rss_MiB" in base else "-"
        spread = r.get("rounds_tokens_per_s", [])
        tokens_per_s = f"{r['tokens_per_s']}" + (f" ({spread[0]}-{spread[-1]})" if len(spread) > 1 else "")
        lines.append(f"| {r['seq_len']} | {r['model']} | {tokens_per_s} | {r['s_per_step']} | "
                     f"{r['tokens_per_cpu_s']} | {r['peak_rss_MiB']} | {speed} | {mem} |")
    lines += ["", "Peak RSS added per 1K tokens as T grows (flat = memory linear in T):", ""]
    for model in args.models:
        ok = sorted((r["seq_len"], r["peak_rss_MiB"]) for r in rows if r["model"] == model and "error" not in r)
        steps = [f"{t0}->{t1}: {1024 * (m1 - m0) / (t1 - t0):.0f} MiB" for (t0, m0), (t1, m1) in zip(ok, ok[1:])]
        if steps:
            lines.append(f"- {model}: " + ", ".join(steps))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="4096,8192")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of every model per length, interleaved; the median is reported")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per (model, length) run")
    parser.add_argument("--quick", action="store_true", help="2 layers, 2 timed steps")
    parser.add_argument("--checkpoint-activations", action="store_true",
                        help="gradient checkpointing in both models (the paper trained this way)")
    parser.add_argument("--rel-pos-dim", type=int, default=0,
                        help="longformer_lm's sinusoid size per head (0 = head size, the default model)")
    parser.add_argument("--out", default=str(RESULTS / "charlm_throughput"), help="output path without suffix")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                        help="window1_bound: our model with window 1, the (almost) attention-free speed ceiling")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seq_len, args.layers, args.window, args.steps, args.threads,
                                args.checkpoint_activations, args.rel_pos_dim)))
        return
    if args.quick:
        args.layers, args.steps = 2, 2
    try:
        seq_lens = [int(s) for s in args.seq_lens.split(",")]
    except ValueError:
        raise SystemExit(f"error: --seq-lens must be comma-separated integers, got {args.seq_lens!r}") from None

    rows = []
    for T in seq_lens:
        # Rounds interleave the models (A, B, C, A, B, C, ...) so a slow spell of a shared machine
        # lands on all of them alike; each row keeps the median round.
        runs = {kind: [] for kind in args.models}
        for _ in range(args.rounds):
            for kind in args.models:
                runs[kind].append(run_isolated(kind, T, args))
        rows += [median_run(results) for results in runs.values()]
    table = markdown(rows, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n"), (".md", table)):
        write_text_atomic(out.with_name(out.name + suffix), text)
    print(table)


if __name__ == "__main__":
    main()
