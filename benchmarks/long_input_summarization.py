"""Long-input seq2seq: what BART's 1,024 tokens miss and LED reads, and what the encoder costs.

Part 1, accuracy. A synthetic task whose answer lies thousands of tokens into the source. A source is
``<s>``, L-2 random filler tokens (``v0``..``v15``) and ``</s>``; at a random offset in its second half
(token 2,048 or later for L = 4,096) it holds a block of key/value tokens: the span
``k0=x0 k1=x1 ... k7=x7`` (one token per pair, x drawn from 16 values) repeated ``--repeats`` times in a
row. The target is that span, ``k0=x0 .. k7=x7 </s>``: the decoder has to find it (cross-attention over
every encoder state) and copy it in key order. The repetition only strengthens the learning signal of a
model trained from scratch (in our trials a single 8-token span in 1,024 or 2,048 tokens left LED at
chance after 150-200 updates; 16 copies in 1,024 tokens got it to 89% in 250). With the defaults the
block is 1,024 tokens long and starts at token 2,048 or later, so nothing of it is in the first 1,024. Two arms, trained from
scratch with the same steps, batches, learning rate and seeds:

* ``bart``: fairseq's own BART (full attention) on the source truncated to its first 1,024 tokens, what
  BART sees; the block is never in it, so the best it can do is the key part and chance, 1/16, per value;
* ``led``: ``longformer_bart`` (window 16, global attention on ``<s>``) on the whole source.

Both are tiny (2+2 layers, ``--dim`` 64, 4 heads) and built by fairseq's model builders from fairseq-train
arguments; training is a hand-written loop over the real models (cross-entropy, Adam, linear warmup,
gradient clipping 1.0), since fairseq-train's data pipeline adds nothing to the comparison.
Evaluation decodes greedily with fairseq's ``SequenceGenerator`` (incremental decoding) on held-out
samples: token accuracy (position by position over the 8 target tokens), exact match, ROUGE-1/2/L of
the target strings (``rouge-score``; its tokenizer splits ``k3=7`` into ``k3`` and ``7``, so ROUGE
credits the keys even where the values are wrong). Mean and min-max over seeds; time per arm.

Part 2, cost. Encoder forward+backward time and peak memory at 4K, 8K and 16K source tokens, batch 1,
one layer of BART-base's width (768 dims, 12 heads, FFN 3,072): LED's encoder layer (window 1,024,
global ``<s>``) against fairseq's own BART encoder layer (full attention: fairseq's MultiheadAttention
hands it to PyTorch's ``multi_head_attention_forward``, which on this torch runs ATen's CPU flash
attention, ``_scaled_dot_product_flash_attention_for_cpu``, O(T) memory). Times are medians of
interleaved rounds; memory is the rise of the process's peak RSS during the first call
(``benchmarks/attention_cpu.py``'s method).

    python benchmarks/long_input_summarization.py                  # ~50 CPU-minutes on one thread
    python benchmarks/long_input_summarization.py --quick          # a smoke run of the code paths
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fairseq_longformer  # noqa: E402,F401  registers longformer_bart
from attention_cpu import interleaved_seconds, mmap_large_blocks, peak_mib  # noqa: E402  the project's CPU timing/memory method
from data_prep.atomic import atomic_file, write_json_atomic, write_text_atomic  # noqa: E402
from fairseq import options  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from fairseq.models.bart import BARTModel  # noqa: E402
from fairseq.sequence_generator import SequenceGenerator  # noqa: E402
from fairseq.tasks.translation import TranslationConfig, TranslationTask  # noqa: E402
from fairseq_longformer.eval_summarization import rouge_scores  # noqa: E402
from fairseq_longformer.models.longformer_bart import LongformerBartModel  # noqa: E402

VALUES, KEYS = 16, 8
BART_LENGTH = 1024
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------- data


def dictionary() -> Dictionary:
    d = Dictionary()
    for i in range(VALUES):
        d.add_symbol(f"v{i}")
    for key in range(KEYS):
        for value in range(VALUES):
            d.add_symbol(f"k{key}={value}")
    return d


class CopyTask:
    """Samples ``(source, target)`` of the long-range span copy task (see the module doc)."""

    def __init__(self, d: Dictionary, length: int, span_from: int, repeats: int = 1):
        self.d, self.length, self.span_from, self.repeats = d, length, span_from, repeats
        self.values = torch.tensor([d.index(f"v{i}") for i in range(VALUES)])
        # pairs[key, value] = the id of "k{key}={value}"
        self.pairs = torch.tensor([[d.index(f"k{k}={v}") for v in range(VALUES)] for k in range(KEYS)])

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sources = self.values[torch.randint(VALUES, (size, self.length), generator=generator)]
        sources[:, 0], sources[:, -1] = self.d.bos(), self.d.eos()
        answers = torch.randint(VALUES, (size, KEYS), generator=generator)
        span = self.pairs[torch.arange(KEYS), answers]  # [size, KEYS]: k0=x0 k1=x1 ...
        width = KEYS * self.repeats
        starts = torch.randint(self.span_from, self.length - 1 - width + 1, (size,), generator=generator)
        for row, start in enumerate(starts.tolist()):
            sources[row, start: start + width] = span[row].repeat(self.repeats)
        targets = torch.cat([span, torch.full((size, 1), self.d.eos())], dim=1)
        return sources, targets


def truncate(sources: torch.Tensor, length: int, eos: int) -> torch.Tensor:
    """What a 1,024-position model sees: the first ``length - 1`` tokens and ``</s>``."""
    if sources.shape[1] <= length:
        return sources
    cut = sources[:, :length].clone()
    cut[:, -1] = eos
    return cut


# ----------------------------------------------------------------------------------------- models


def build(kind: str, d: Dictionary, source_positions: int, window: int, dims: dict):
    """A tiny ``bart`` or ``longformer_bart`` built by fairseq from fairseq-train arguments."""
    argv = [
        "unused-data-dir", "--task", "translation", "--arch", "bart_base" if kind == "bart" else "longformer_bart",
        "--encoder-layers", str(dims["layers"]), "--decoder-layers", str(dims["layers"]),
        "--encoder-embed-dim", str(dims["dim"]), "--decoder-embed-dim", str(dims["dim"]),
        "--encoder-ffn-embed-dim", str(dims["ffn"]), "--decoder-ffn-embed-dim", str(dims["ffn"]),
        "--encoder-attention-heads", str(dims["heads"]), "--decoder-attention-heads", str(dims["heads"]),
        "--max-source-positions", str(source_positions), "--max-target-positions", "64",
        "--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0",
    ]
    if kind == "led":
        argv += ["--attention-window", str(window), "--source-global-attention", "cls"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = TranslationTask(TranslationConfig(), d, d)
    model_class = BARTModel if kind == "bart" else LongformerBartModel
    return model_class.build_model(args, task)


def train_and_evaluate(kind: str, seed: int, args, d: Dictionary) -> dict:
    torch.manual_seed(seed)
    task = CopyTask(d, args.length, args.span_from, args.repeats)
    positions = BART_LENGTH if kind == "bart" else args.length
    model = build(kind, d, positions, args.window, dict(layers=2, dim=args.dim, ffn=2 * args.dim, heads=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / args.warmup))
    data = torch.Generator().manual_seed(1000 + seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    losses = []
    for step in range(args.steps):
        sources, targets = task.batch(args.batch, data)
        if kind == "bart":
            sources = truncate(sources, BART_LENGTH, d.eos())
        prev = torch.cat([torch.full((len(targets), 1), d.eos()), targets[:, :-1]], dim=1)
        logits, _ = model(sources, torch.full((len(sources),), sources.shape[1]), prev)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if args.verbose and (step + 1) % 50 == 0:
            print(f"  {kind} seed {seed} step {step + 1}: loss {statistics.mean(losses[-50:]):.3f}", flush=True)
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    scores = evaluate(model, kind, task, args, d, seed)
    return {"arm": kind, "seed": seed, "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu, 1),
            "final_loss": round(statistics.mean(losses[-50:]), 4), **scores}


def evaluate(model, kind: str, task: CopyTask, args, d: Dictionary, seed: int) -> dict:
    model.eval()
    generator = SequenceGenerator([model], d, beam_size=1, max_len_a=0, max_len_b=KEYS + 1, min_len=KEYS)
    data = torch.Generator().manual_seed(10_000 + seed)  # held-out samples, never trained on
    correct = exact = 0
    hypotheses, references = [], []
    for start in range(0, args.eval_samples, args.batch):
        sources, targets = task.batch(min(args.batch, args.eval_samples - start), data)
        if kind == "bart":
            sources = truncate(sources, BART_LENGTH, d.eos())
        sample = {"net_input": {"src_tokens": sources, "src_lengths": torch.full((len(sources),), sources.shape[1])}}
        with torch.no_grad():
            hypos = generator.generate([model], sample)
        for hypo, target in zip(hypos, targets):
            predicted = hypo[0]["tokens"][:KEYS]
            predicted = torch.cat([predicted, predicted.new_full((KEYS - len(predicted),), d.pad())])
            matches = predicted.eq(target[:KEYS])
            correct += int(matches.sum())
            exact += int(matches.all())
            hypotheses.append(d.string(predicted[predicted.ne(d.pad())]))
            references.append(d.string(target[:KEYS]))
    rouge = rouge_scores(hypotheses, references)
    return {"token_accuracy": round(100 * correct / (KEYS * args.eval_samples), 2),
            "exact_match": round(100 * exact / args.eval_samples, 2),
            "rouge1": round(rouge["rouge1"], 2), "rouge2": round(rouge["rouge2"], 2), "rougeL": round(rouge["rougeL"], 2)}


# ------------------------------------------------------------------------------------ encoder cost


def encoder_cost(lengths: list[int], rounds: int, d: Dictionary) -> list[dict]:
    dims = dict(layers=1, dim=768, ffn=3072, heads=12)
    rows = []
    for length in lengths:
        models = {"led": build("led", d, length, 1024, dims).encoder, "bart": build("bart", d, length, 0, dims).encoder}
        tokens = torch.randint(d.nspecial, len(d), (1, length), generator=torch.Generator().manual_seed(length))
        tokens[0, 0], tokens[0, -1] = d.bos(), d.eos()

        def step(encoder):
            encoder.zero_grad(set_to_none=True)
            out = encoder(tokens)["encoder_out"][0]
            out.float().square().mean().backward()

        runs = {name: (lambda e=encoder: step(e)) for name, encoder in models.items()}
        # the first call of each (first-touch allocations, kernel selection) gives its peak memory
        peaks = {name: peak_mib(run) for name, run in runs.items()}
        seconds = interleaved_seconds(runs, rounds)
        for name in runs:
            rows.append({"encoder": name, "length": length, "seconds": round(seconds[name], 3),
                         "peak_mib": round(peaks[name], 1)})
            print(f"  {name} encoder, {length:,} tokens: {seconds[name]:.3f} s, {peaks[name]:.0f} MiB", flush=True)
        del models, runs
    return rows


# --------------------------------------------------------------------------------------- reporting


def summarize(runs: list[dict]) -> list[dict]:
    table = []
    for arm in ("bart", "led"):
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            continue
        entry = {"arm": arm, "seeds": len(rows)}
        for key in ("token_accuracy", "exact_match", "rouge1", "rouge2", "rougeL", "train_seconds", "train_cpu_seconds"):
            values = [r[key] for r in rows]
            entry[key] = (round(statistics.mean(values), 2), min(values), max(values))
        table.append(entry)
    return table


def markdown(args, table: list[dict], runs: list[dict], cost: list[dict], total_seconds: float,
             total_cpu: float) -> str:
    names = {"bart": f"BART, source cut to {BART_LENGTH:,}", "led": f"LED, whole source ({args.length:,})"}
    lines = [
        "# Long-input seq2seq: BART's 1,024 tokens vs LED on the whole source",
        "",
        f"`python benchmarks/long_input_summarization.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        f"Task: sources of {args.length:,} tokens; the {KEYS}-pair span, {args.repeats} times in a row, starts at a "
        f"random offset >= {args.span_from:,}; target = the span ({VALUES} values per key: chance 1/{VALUES} = "
        f"{100 / VALUES:.2f}% per token once the key is known). Models: 2+2 layers, {args.dim} dims, 4 heads; LED window "
        f"{args.window}, global <s>. Training: {args.steps} steps of {args.batch} samples, Adam lr {args.lr}, "
        f"{args.warmup} warmup steps; evaluation: greedy decoding of {args.eval_samples} held-out samples. "
        f"torch threads: {torch.get_num_threads()}.",
        "",
        "| arm | seeds | token accuracy % (mean, min-max) | exact match % | ROUGE-1 | ROUGE-2 | ROUGE-L | "
        "train wall s / seed | train CPU s / seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        def cell(key):
            mean, lo, hi = e[key]
            return f"{mean:.2f} ({lo:.2f}-{hi:.2f})"
        lines.append(f"| {names[e['arm']]} | {e['seeds']} | {cell('token_accuracy')} | {cell('exact_match')} | "
                     f"{e['rouge1'][0]:.2f} | {e['rouge2'][0]:.2f} | {e['rougeL'][0]:.2f} | {e['train_seconds'][0]:.0f} | "
                     f"{e['train_cpu_seconds'][0]:.0f} |")
    lines += ["", "Per seed:", "", "| arm | seed | token accuracy % | exact match % | final train loss | wall s | CPU s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['seed']} | {r['token_accuracy']:.2f} | {r['exact_match']:.2f} | {r['final_loss']:.3f} | "
              f"{r['train_seconds']:.0f} | {r['train_cpu_seconds']:.0f} |" for r in runs]
    if cost:
        lines += ["", "## Encoder forward+backward, batch 1, one layer of BART-base width (768 dims, 12 heads)", "",
                  "| source tokens | LED s (window 1,024) | BART s (full) | BART / LED time | LED MiB | BART MiB | "
                  "BART / LED memory |", "|---|---|---|---|---|---|---|"]
        for length in sorted({c["length"] for c in cost}):
            led = next(c for c in cost if c["length"] == length and c["encoder"] == "led")
            bart = next(c for c in cost if c["length"] == length and c["encoder"] == "bart")
            lines.append(f"| {length:,} | {led['seconds']:.2f} | {bart['seconds']:.2f} | "
                         f"{bart['seconds'] / led['seconds']:.2f}x | {led['peak_mib']:.0f} | {bart['peak_mib']:.0f} | "
                         f"{bart['peak_mib'] / max(led['peak_mib'], 1e-9):.2f}x |")
    lines += ["", f"Whole run: {total_seconds / 60:.1f} min wall, {total_cpu / 60:.1f} min CPU (this process).", ""]
    return "\n".join(lines)


def plot(table: list[dict], cost: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if cost else 1, figsize=(13 if cost else 5, 4))
    axes = axes if cost else [axes]
    arms = [e["arm"] for e in table]
    means = [e["token_accuracy"][0] for e in table]
    errors = [[m - e["token_accuracy"][1] for m, e in zip(means, table)],
              [e["token_accuracy"][2] - m for m, e in zip(means, table)]]
    axes[0].bar(arms, means, yerr=errors, capsize=6, color=["tab:gray", "tab:blue"][: len(arms)])
    axes[0].axhline(100 / VALUES, ls="--", color="k", lw=1, label="chance")
    axes[0].set_ylabel("token accuracy %")
    axes[0].set_title("copy from thousands of tokens in")
    axes[0].legend()
    if cost:
        for ax, key, label in ((axes[1], "seconds", "fwd+bwd seconds"), (axes[2], "peak_mib", "peak MiB")):
            for name, style in (("led", "o-"), ("bart", "s--")):
                points = sorted((c["length"], c[key]) for c in cost if c["encoder"] == name)
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name)
            ax.set_xlabel("source tokens")
            ax.set_ylabel(label)
            ax.set_title(f"encoder layer {label}")
            ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=4096, help="source length of the copy task")
    parser.add_argument("--span-from", type=int, default=2048, help="earliest start of the key span")
    parser.add_argument("--repeats", type=int, default=128, help="copies of the key span in a row (learning signal)")
    parser.add_argument("--window", type=int, default=16, help="LED attention window in the copy task")
    parser.add_argument("--dim", type=int, default=64, help="model width of the copy-task models")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--arms", default="led,bart")
    parser.add_argument("--cost-lengths", default="4096,8192,16384", help="'' to skip part 2")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds in part 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 60 steps, short sources")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "long_input_summarization"),
                        help="results prefix (.md, .json, .png)")
    args = parser.parse_args(argv)
    if args.quick:
        args.length, args.span_from, args.repeats, args.steps, args.seeds, args.eval_samples = 2048, 1100, 8, 20, 1, 16
        args.cost_lengths, args.rounds = "1024,2048", 1
    torch.set_num_threads(args.threads)
    mmap_large_blocks()  # for the whole run, as when the results in benchmarks/results/ were measured
    logging.getLogger().setLevel(logging.WARNING)  # fairseq's builders log every argument at INFO
    start, cpu_start = time.perf_counter(), time.process_time()
    d = dictionary()
    runs = []
    for seed in range(1, args.seeds + 1):
        for arm in args.arms.split(","):  # arms interleaved per seed: a slow spell of the machine hits both
            runs.append(train_and_evaluate(arm, seed, args, d))
            print(json.dumps(runs[-1]), flush=True)
    table = summarize(runs)
    lengths = [int(x) for x in args.cost_lengths.split(",") if x]
    cost = encoder_cost(lengths, args.rounds, d) if lengths else []
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    report = markdown(args, table, runs, cost, total, total_cpu)
    print(report)
    output = Path(args.output)
    write_text_atomic(output.with_suffix(".md"), report)
    write_json_atomic(output.with_suffix(".json"), {"args": vars(args), "runs": runs, "summary": table,
                                                    "encoder_cost": cost, "total_seconds": round(total, 1),
                                                    "total_cpu_seconds": round(total_cpu, 1)})
    plot(table, cost, output.with_suffix(".png"))


if __name__ == "__main__":
    main()
