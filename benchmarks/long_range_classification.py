"""Long-range document classification on CPU: the effect the Longformer paper's Table 8 shows, in miniature.

A synthetic task whose label needs evidence from both ends of a long document. Each document is
``--doc-len`` filler words (uniform over ``--filler`` symbols) with two planted pieces of evidence: region
A (tokens 32-480) holds ``--repeats`` copies of marker ``m0`` or ``m1``, region B (the last 480 tokens)
``--repeats`` copies of ``m0`` or ``m1``, each drawn independently; the label is whether the two markers
agree. Any window that sees only one region, and every 512-token window does, carries no information
about the label: its accuracy is chance (50%). The evidence is dense (200 of each region's 448 tokens by
default). Measured here with 20 copies instead, global ``<s>`` was still at chance (47-48% held out) after
300 updates (LR 2e-3) and after 400 updates (LR 1e-3, separate markers per region): the agreement of two
pooled signals must be learned before attending to either pays off, and 20 copies are 1% of the keys.
With 200 copies and LR 3e-3 it reached 100% after 100 and 150 updates (two seeds).

Arms (same tiny ``longformer_roberta`` trained from scratch, same data, same updates):

* ``truncate-512``: ``--max-positions 512``, the task's own truncation (keeps ``<s>`` and ``</s>``), global
  ``<s>``: the 512-token baseline; it sees region A only.
* ``window-only``: full length, ``--global-attention none``: ``<s>`` sees its sliding window only.
* ``global-cls``: full length, global attention on ``<s>`` (the task's default): ``<s>`` sees everything.
* ``control-first-512``: as ``truncate-512`` but both regions lie inside the first 512 tokens: shows
  that the model and the 512-token input can learn the task when the evidence is in reach.

Everything runs through the real plugin: the JSON lines go through ``longformer-prep-classification``
(``--tokenizer whitespace``), batches come from the ``longformer_sentence_prediction`` task's datasets
(truncation, global-attention mask), the model is ``longformer_roberta`` with its classification head,
and each update is fairseq's own ``Trainer.train_step`` with the ``sentence_prediction`` criterion, Adam,
linear warmup over 10% of the updates then linear decay (the paper's classification schedule, §6 and
Appendix B). The loop around ``train_step`` is this script's (no checkpoints, no validation during
training): it is what ``fairseq-train`` does per update, without its per-epoch overhead. Held-out
accuracy is the criterion's on the test split after the last update. Each (arm, seed) runs in a fresh
process with one torch thread, so its tokens/s and peak RSS are its own; runs go seed by seed, the arms
interleaved, so a slow spell of a shared machine lands on every arm alike.

Usage::

    python benchmarks/long_range_classification.py                 # 4 arms x 3 seeds
    python benchmarks/long_range_classification.py --quick         # smoke run (minutes, no targets)
    python benchmarks/long_range_classification.py --write-jsonl DIR [--seed 1]   # the data only

Writes ``benchmarks/results/long_range_classification.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_prep.atomic import atomic_file, write_text_atomic  # noqa: E402  (after the sys.path line above)

RESULTS = REPO / "benchmarks" / "results"
SHORT = 512  # the pretrained-transformer limit the paper compares against
ARMS = {  # name: (data, positions: "short" | "full", global attention)
    "truncate-512": ("far", "short", "cls"),
    "window-only": ("far", "full", "none"),
    "global-cls": ("far", "full", "cls"),
    "control-first-512": ("near", "short", "cls"),
}
REGION = 448  # tokens per evidence region
EDGE = 32  # regions keep this far from the document's ends


# ------------------------------------------------------------------------------------------------ data


def regions(doc_len: int, kind: str) -> tuple[range, range]:
    """Where markers a and b go: ``far`` = first and last ~480 tokens, ``near`` = both in the first 480."""
    if kind == "far":
        return range(EDGE, EDGE + REGION), range(doc_len - EDGE - REGION, doc_len - EDGE)
    half = REGION // 2
    return range(EDGE, EDGE + half - 16), range(EDGE + half + 16, EDGE + REGION)


def document(rng: random.Random, doc_len: int, kind: str, repeats: int, filler: int) -> dict:
    a, b = rng.randrange(2), rng.randrange(2)
    words = [f"w{rng.randrange(filler)}" for _ in range(doc_len)]
    region_a, region_b = regions(doc_len, kind)
    for marker, region in ((f"m{a}", region_a), (f"m{b}", region_b)):
        for position in rng.sample(region, repeats):
            words[position] = marker
    return {"text": " ".join(words), "label": int(a == b)}


def write_jsonl(directory: Path, kind: str, seed: int, args) -> None:
    """train/valid/test JSON lines of one data kind (valid is a copy-sized draw, unused by the benchmark)."""
    rng = random.Random(f"{kind}-{seed}")
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train_docs), ("valid", args.test_docs), ("test", args.test_docs)):
        with atomic_file(directory / f"{split}.jsonl") as tmp, open(tmp, "w") as f:
            for _ in range(count):
                f.write(json.dumps(document(rng, args.doc_len, kind, args.repeats, args.filler)) + "\n")


def prepare(directory: Path, kind: str, seed: int, args) -> Path:
    from data_prep.prep_classification import main as prep_main

    jsonl = directory / f"{kind}-{seed}-jsonl"
    write_jsonl(jsonl, kind, seed, args)
    output = directory / f"{kind}-{seed}-bin"
    prep_main(["--train", str(jsonl / "train.jsonl"), "--valid", str(jsonl / "valid.jsonl"),
               "--test", str(jsonl / "test.jsonl"), "--output", str(output), "--tokenizer", "whitespace",
               "--max-positions", str(args.doc_len + 2), "--overwrite"])
    shutil.rmtree(jsonl)
    return output


# ------------------------------------------------------------------------------------------------ one run


def fairseq_argv(data: Path, positions: int, global_attention: str, seed: int, args) -> list[str]:
    warmup = max(1, args.updates // 10)  # Appendix B: warmup over 10% of the steps, then linear decay
    return [
        str(data), "--user-dir", str(REPO / "fairseq_longformer"),
        "--task", "longformer_sentence_prediction", "--num-classes", "2", "--max-positions", str(positions),
        "--global-attention", global_attention,
        "--arch", "longformer_roberta", "--encoder-layers", str(args.layers),
        "--encoder-embed-dim", str(args.dim), "--encoder-ffn-embed-dim", str(4 * args.dim),
        "--encoder-attention-heads", str(args.heads), "--attention-window", str(args.window),
        "--encoder-normalize-before", "--dropout", "0", "--attention-dropout", "0",
        "--criterion", "sentence_prediction",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", str(args.lr),
        "--lr-scheduler", "polynomial_decay", "--warmup-updates", str(warmup),
        "--total-num-update", str(args.updates), "--max-update", str(args.updates),
        "--batch-size", str(args.batch), "--required-batch-size-multiple", "1", "--num-workers", "0",
        "--cpu", "--seed", str(seed),
    ]


def accuracy(task, model, criterion, split: str, batch: int) -> float:
    import torch

    iterator = task.get_batch_iterator(task.dataset(split), max_sentences=batch, max_positions=task.max_positions(),
                                       seed=1, num_workers=0).next_epoch_itr(shuffle=False)
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for sample in iterator:
            _, size, log = criterion(model, sample)
            correct += int(log["ncorrect"])
            total += size
    return 100.0 * correct / total


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def worker(data: str, positions: int, global_attention: str, seed: int, args) -> dict:
    import torch

    torch.set_num_threads(1)
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    parsed = options.parse_args_and_arch(options.get_training_parser(),
                                         fairseq_argv(Path(data), positions, global_attention, seed, args))
    cfg = convert_namespace_to_omegaconf(parsed)
    utils.import_user_module(cfg.common)
    utils.set_torch_seed(seed)
    task = tasks.setup_task(cfg.task)
    for split in ("train", "test"):
        task.load_dataset(split)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    rss_setup = rss_mib()

    epoch, updates, tokens, curve = 1, 0, 0, []
    wall = cpu = 0.0
    while updates < args.updates:
        iterator = trainer.get_train_iterator(epoch, load_dataset=False).next_epoch_itr(shuffle=True)
        for sample in iterator:
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.train_step([sample])
            wall += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
            updates += 1
            tokens += int(sample["ntokens"])
            if args.eval_every and updates % args.eval_every == 0 and updates < args.updates:
                curve.append((updates, round(accuracy(task, model, criterion, "test", 16), 1)))
                model.train()
                print(f"[worker] {updates} updates: held-out {curve[-1][1]}%", file=sys.stderr, flush=True)
            if updates >= args.updates:
                break
        epoch += 1
    return {
        "seed": seed, "positions": positions, "global_attention": global_attention, "updates": updates,
        "held_out_accuracy": round(accuracy(task, model, criterion, "test", 16), 2), "curve": curve,
        "train_tokens": tokens, "tokens_per_s": round(tokens / wall, 1), "tokens_per_cpu_s": round(tokens / cpu, 1),
        "train_cpu_s": round(cpu, 1), "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_setup_MiB": round(rss_setup),
    }


def run_isolated(arm: str, data: Path, seed: int, args) -> dict:
    kind, length, global_attention = ARMS[arm]
    positions = SHORT if length == "short" else args.doc_len + 2
    command = [sys.executable, __file__, "--worker", str(data), "--positions", str(positions),
               "--global-attention", global_attention, "--seed", str(seed), *worker_flags(args)]
    print(f"[bench] seed {seed} {arm} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{done.stderr[-3000:]}")
    result = {"arm": arm, "data": kind, **json.loads(done.stdout.strip().splitlines()[-1])}
    print(f"[bench]   held-out {result['held_out_accuracy']}%, {result['tokens_per_s']} tokens/s, "
          f"peak RSS {result['peak_rss_MiB']} MiB", file=sys.stderr, flush=True)
    return result


MODEL_FLAGS = ("doc_len", "updates", "batch", "lr", "layers", "dim", "heads", "window", "eval_every")


def worker_flags(args) -> list[str]:
    return [item for name in MODEL_FLAGS for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


# ------------------------------------------------------------------------------------------------ report


def summarize(rows: list[dict]) -> list[dict]:
    summary = []
    for arm, (kind, _, global_attention) in ARMS.items():
        runs = [r for r in rows if r["arm"] == arm]
        if not runs:
            continue
        accs = [r["held_out_accuracy"] for r in runs]
        summary.append({
            "arm": arm, "data": kind, "positions": runs[0]["positions"], "global_attention": global_attention,
            "accuracies": accs, "mean": round(statistics.mean(accs), 1),
            "sd": round(statistics.stdev(accs), 1) if len(accs) > 1 else 0.0,
            "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs)),
            "tokens_per_cpu_s": round(statistics.median(r["tokens_per_cpu_s"] for r in runs)),
            "peak_rss_MiB": max(r["peak_rss_MiB"] for r in runs),
            "train_rss_MiB": max(r["peak_rss_MiB"] - r["rss_after_setup_MiB"] for r in runs),
        })
    return summary


def markdown(summary: list[dict], args, cpu_minutes: float, wall_minutes: float) -> str:
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        f"Synthetic long-range classification (label = do the markers of region A and region B agree; "
        f"{args.repeats} copies each; region A in the first {EDGE + REGION} tokens, region B in the last "
        f"{EDGE + REGION} of {args.doc_len}-token "
        f"documents; the control puts both in the first {EDGE + REGION}). Tiny `longformer_roberta` from scratch: "
        f"{args.layers} layers x {args.dim}, {args.heads} heads, window {args.window}; batch {args.batch}, "
        f"{args.updates} updates of fairseq's `Trainer.train_step`, Adam lr {args.lr}, 10% warmup then linear "
        f"decay; {args.train_docs} training and {args.test_docs} held-out documents per seed; seeds {seeds}. "
        f"Chance is 50%. CPU, 1 torch thread per run.",
        "",
        "| arm | data | positions | global attention | held-out accuracy % per seed | mean ± sd | "
        "train tokens/s (wall) | tokens per CPU-s | peak RSS MiB | RSS added in training MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['arm']} | {s['data']} | {s['positions']} | {s['global_attention']} | "
            f"{' / '.join(f'{a:.1f}' for a in s['accuracies'])} | {s['mean']:.1f} ± {s['sd']:.1f} | "
            f"{s['tokens_per_s']:,} | {s['tokens_per_cpu_s']:,} | {s['peak_rss_MiB']:,} | {s['train_rss_MiB']:,} |")
    lines += ["", f"Total: {cpu_minutes:.1f} CPU-minutes ({wall_minutes:.1f} wall-minutes) including data preparation."]
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's import turns on DEBUG logging
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [s["arm"] for s in summary]
    for i, s in enumerate(summary):
        left.bar(i, s["mean"], color="tab:blue" if s["data"] == "far" else "tab:gray")
        left.scatter([i] * len(s["accuracies"]), s["accuracies"], color="black", s=12, zorder=3)
    left.axhline(50, color="tab:red", linestyle="--", linewidth=1, label="chance")
    left.set_xticks(range(len(names)), names, rotation=20, ha="right")
    left.set_ylim(0, 100)
    left.set_ylabel("held-out accuracy % (dots: seeds)")
    left.legend(loc="lower right")
    right.bar(range(len(names)), [s["tokens_per_s"] for s in summary], color="tab:green")
    right.set_xticks(range(len(names)), names, rotation=20, ha="right")
    right.set_ylabel("training tokens/s (1 thread)")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--doc-len", type=int, default=2046, help="words per document (+ <s>, </s> = 2048)")
    parser.add_argument("--repeats", type=int, default=200, help="copies of each region's marker")
    parser.add_argument("--filler", type=int, default=200, help="filler vocabulary size")
    parser.add_argument("--train-docs", type=int, default=2000)
    parser.add_argument("--test-docs", type=int, default=300)
    parser.add_argument("--updates", type=int, default=250)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=0, help="also print held-out accuracy every N updates")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="1 seed, 30 updates, 1,000-word documents")
    parser.add_argument("--out", default=str(RESULTS / "long_range_classification"), help="output path, no suffix")
    parser.add_argument("--work-dir", help="where the data goes (default: a temporary folder, deleted)")
    parser.add_argument("--write-jsonl", metavar="DIR", help="only write train/valid/test JSON lines (far data) to DIR")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--positions", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--global-attention", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help="data seed for --write-jsonl")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.positions, args.global_attention, args.seed, args)))
        return
    if args.doc_len < 2 * (EDGE + REGION) + SHORT:
        raise SystemExit(f"--doc-len must be >= {2 * (EDGE + REGION) + SHORT} so that no 512-token window sees "
                         "both evidence regions")
    if args.write_jsonl:
        write_jsonl(Path(args.write_jsonl), "far", args.seed, args)
        print(f"wrote {args.write_jsonl}/{{train,valid,test}}.jsonl", file=sys.stderr)
        return
    if args.quick:
        args.seeds, args.updates, args.doc_len, args.train_docs, args.test_docs = [1], 30, 1472, 240, 64

    start = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="long_range_cls_"))
    rows = []
    try:
        for seed in args.seeds:
            data = {kind: prepare(work, kind, seed, args) for kind in {ARMS[arm][0] for arm in args.arms}}
            for arm in args.arms:
                rows.append(run_isolated(arm, data[ARMS[arm][0]], seed, args))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_minutes = sum(u.ru_utime + u.ru_stime for u in usage) / 60
    summary = summarize(rows)
    table = markdown(summary, args, cpu_minutes, (time.perf_counter() - start) / 60)
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(
        {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "positions", "global_attention")},
         "summary": summary, "runs": rows}, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), table)
    plot(summary, out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
