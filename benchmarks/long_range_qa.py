"""Long-range extractive QA: can the model answer from far away when the question tokens are global?

A synthetic SQuAD-format set (``data_prep/qa/synthetic.py``): each document holds six candidate entities,
all at least ``--min-distance`` tokens after the question; the question names one, and the answer is
its mention. A 2-layer ``longformer_roberta`` with window 32 sees 32 tokens around each token, so a
mention can only be matched against the question through global attention. Arms, each trained from
scratch with the same updates and tokens per update:

* ``global``: the whole ``<s> question </s></s> document </s>`` row, question tokens global
  (``--global-attention question``, the Longformer paper's QA setting);
* ``no-global``: the same rows, sliding window only (``--global-attention none``): expected at chance;
* ``chunks-512``: the usual workaround for 512-token models: the document in 512-token rows (stride 256)
  with the question repeated in each, the answer taken from the best row. Inside a row every token sees
  the question: by default through global attention on the question (the same model as ``global``, so
  the arm differs only by the chunking); ``--chunk-attention full`` gives RoBERTa-style full attention
  in the row instead (window 1,024 >= 2 x 511; about 3x the CPU time per update). The evidence here is
  local (the mention and the question share a row), so this arm can work; it is reported as measured.

Everything runs through the plugin's real pieces: ``longformer-prep-qa`` writes the data,
``fairseq-train`` (a subprocess per run: task ``longformer_span_qa``, criterion ``span_qa`` with the OR
loss, the model's span head) trains, and ``longformer-qa-predict`` (a subprocess) picks the spans and
computes exact match / F1. CPU time and peak RSS of each subprocess come from ``os.wait4``.

    python benchmarks/long_range_qa.py            # the recorded run (see benchmarks/results/long_range_qa.md)
    python benchmarks/long_range_qa.py --quick    # smoke run: tiny data, few updates, 1 seed

Writes ``benchmarks/results/long_range_qa.{json,md,png}`` (``--quick``: ``long_range_qa_quick.*``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_prep.atomic import atomic_file, write_json_atomic, write_text_atomic  # noqa: E402
from data_prep.qa.cli import main as prep_main  # noqa: E402
from data_prep.qa.synthetic import LongRangeQa, write_long_range_qa  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
USER_DIR = ROOT / "fairseq_longformer"
ARMS = ("global", "no-global", "chunks-512")
CHUNK = 512


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--train", type=int, default=6000, help="training questions")
    p.add_argument("--valid", type=int, default=300, help="evaluation questions")
    p.add_argument("--doc-tokens", type=int, default=1024)
    p.add_argument("--min-distance", type=int, default=512, help="tokens between the question and any mention")
    p.add_argument("--candidates", type=int, default=6)
    p.add_argument("--name-tokens", type=int, choices=(1, 2), default=2, help="tokens per entity name")
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--rows-per-update", type=int, default=4, help="full-length rows per update; the chunk arm "
                   "gets the same number of tokens per update")
    p.add_argument("--lr", type=float, default=2e-3, help="peak LR, after --warmup updates")
    p.add_argument("--end-lr", type=float, default=1e-4, help="LR at the last update (linear decay)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--chunk-attention", choices=("global", "full"), default="global",
                   help="how a 512-token row of the chunk arm sees its question")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, deleted at the end)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 20 updates, one seed")
    return p


def _wait(cmd: list[str], log: Path, threads: int) -> dict:
    """Run ``cmd``; its CPU time, wall time and peak RSS (this child alone, from ``os.wait4``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT}{os.pathsep}"
           + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); last lines of {log}:\n"
                           + "".join(open(log).readlines()[-20:]))
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def _train_curve(log: Path) -> list[tuple[int, float]]:
    """``(updates, train start_acc)`` from fairseq's train_inner lines."""
    curve = []
    for line in open(log):
        match = re.search(r"start_acc=([\d.]+).*num_updates=(\d+)", line)
        if match and "train_inner" in line:
            curve.append((int(match.group(2)), float(match.group(1))))
    return curve


def prepare(work: Path, args, task: LongRangeQa) -> dict:
    raw = write_long_range_qa(work / "squad", task, args.train, args.valid, seed=0)
    full = task.doc_tokens + 16  # the question is 5-6 tokens, plus 4 special tokens
    layouts = {"full": ["--max-positions", str(full)],
               "chunks": ["--max-positions", str(CHUNK), "--doc-stride", str(CHUNK // 2)]}
    meta = {}
    for name, flags in layouts.items():
        out = work / f"bin-{name}"
        prep_main(["--train", str(raw["train"]), "--valid", str(raw["valid"]), "--output", str(out),
                   "--tokenizer", "whitespace", "--max-question-tokens", "16", "--no-progress", *flags])
        meta[name] = json.loads((out / "meta.json").read_text())
    return meta


def arm_flags(arm: str, meta: dict, args) -> tuple[str, list[str]]:
    full_tokens = meta["full"]["max_positions"] * args.rows_per_update
    if arm == "chunks-512":
        attention = (["--global-attention", "none", "--attention-window", str(2 * CHUNK)]
                     if args.chunk_attention == "full" else
                     ["--global-attention", "question", "--attention-window", str(args.window)])
        return "chunks", [*attention, "--max-positions", str(CHUNK), "--max-tokens", str(full_tokens)]
    return "full", ["--global-attention", "question" if arm == "global" else "none",
                    "--attention-window", str(args.window), "--max-positions", str(meta["full"]["max_positions"]),
                    "--max-tokens", str(full_tokens)]


def run_arm(work: Path, arm: str, seed: int, meta: dict, args) -> dict:
    layout, flags = arm_flags(arm, meta, args)
    data, save = work / f"bin-{layout}", work / f"ckpt-{arm}-{seed}"
    train = [sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir", str(USER_DIR),
             "--task", "longformer_span_qa", "--criterion", "span_qa", "--span-loss", "or",
             "--arch", "longformer_roberta", "--encoder-layers", str(args.layers), "--encoder-embed-dim", str(args.dim),
             "--encoder-ffn-embed-dim", str(4 * args.dim), "--encoder-attention-heads", str(max(1, args.dim // 16)),
             "--encoder-normalize-before", "--dropout", "0", "--attention-dropout", "0", *flags,
             "--optimizer", "adam", "--lr", str(args.lr), "--lr-scheduler", "polynomial_decay",
             "--warmup-updates", str(args.warmup), "--total-num-update", str(args.updates),
             "--end-learning-rate", str(args.end_lr),
             "--max-update", str(args.updates), "--required-batch-size-multiple", "1", "--seed", str(seed),
             "--cpu", "--disable-validation", "--save-dir", str(save), "--no-epoch-checkpoints",
             "--log-format", "simple", "--log-interval", str(max(1, args.updates // 30)), "--num-workers", "0"]
    trained = _wait(train, work / f"train-{arm}-{seed}.log", args.threads)
    output = work / f"pred-{arm}-{seed}.json"
    predict = [sys.executable, "-m", "fairseq_longformer.qa_predict", "--data", str(data), "--split", "valid",
               "--path", str(save / "checkpoint_last.pt"), "--output", str(output), "--cpu", "--batch-size", "8"]
    predicted = _wait(predict, work / f"predict-{arm}-{seed}.log", args.threads)
    result = json.loads(output.read_text())
    shutil.rmtree(save)
    return {"arm": arm, "seed": seed, "exact_match": round(result["exact_match"], 2), "f1": round(result["f1"], 2),
            "train": trained, "predict": predicted, "curve": _train_curve(work / f"train-{arm}-{seed}.log")}


def summarize(runs: list[dict], meta: dict, args) -> list[dict]:
    rows = []
    for arm in args.arms:
        mine = [r for r in runs if r["arm"] == arm]
        layout = "chunks" if arm == "chunks-512" else "full"
        split = meta[layout]["splits"]
        ems = [r["exact_match"] for r in mine]
        rows.append({
            "arm": arm, "row_tokens": meta[layout]["max_positions"],
            "rows_per_question": round(split["valid"]["chunks"] / split["valid"]["questions"], 2),
            "em_mean": round(statistics.mean(ems), 1), "em_sd": round(statistics.stdev(ems), 1) if len(ems) > 1 else 0.0,
            "f1_mean": round(statistics.mean(r["f1"] for r in mine), 1), "em_per_seed": ems,
            "train_cpu_s": round(statistics.mean(r["train"]["cpu_s"] for r in mine)),
            "train_wall_s": round(statistics.mean(r["train"]["wall_s"] for r in mine)),
            "train_peak_rss_mib": max(r["train"]["peak_rss_mib"] for r in mine),
            "predict_cpu_s": round(statistics.mean(r["predict"]["cpu_s"] for r in mine), 1),
            "predict_peak_rss_mib": max(r["predict"]["peak_rss_mib"] for r in mine),
        })
    return rows


def markdown(rows: list[dict], args, task: LongRangeQa, total_cpu: float, total_wall: float, load: tuple) -> str:
    chance = 100 / task.candidates
    lines = [
        f"Long-range QA ({args.train:,} training / {args.valid:,} evaluation questions; documents of "
        f"{task.doc_tokens:,} tokens, {task.candidates} candidate entities each at least {task.min_distance:,} tokens "
        f"after the question; chance = {chance:.1f}% EM). Model: `longformer_roberta`, {args.layers} layers x "
        f"{args.dim}, window {args.window}, trained from scratch with fairseq-train for {args.updates:,} updates of "
        f"{args.rows_per_update} full-length rows (the chunk arm: the same tokens per update; {args.chunk_attention} "
        f"attention to the question in its rows), LR {args.lr:g} after {args.warmup} warmup updates, linear decay "
        f"to {args.end_lr:g}, OR loss; seeds {', '.join(map(str, args.seeds))}; {args.threads} torch thread(s) per run, CPU.",
        "",
        "| arm | tokens per row | rows per question | EM (mean ± sd) | F1 | EM per seed | train CPU s | "
        "train wall s | train peak RSS MiB | predict CPU s | predict peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['row_tokens']:,} | {r['rows_per_question']} | {r['em_mean']} ± {r['em_sd']} | "
                     f"{r['f1_mean']} | {' / '.join(map(str, r['em_per_seed']))} | {r['train_cpu_s']:,} | "
                     f"{r['train_wall_s']:,} | {r['train_peak_rss_mib']:,} | {r['predict_cpu_s']} | "
                     f"{r['predict_peak_rss_mib']:,} |")
    by_arm = {r["arm"]: r for r in rows}
    if "global" in by_arm and "no-global" in by_arm:
        lines += ["", f"EM, global vs no-global: {by_arm['global']['em_mean']} vs {by_arm['no-global']['em_mean']} "
                      f"(chance {chance:.1f})."]
    lines += ["", f"Total CPU time {total_cpu / 60:.1f} min (data generation and prep, training and prediction), wall "
                  f"{total_wall / 60:.1f} min; load average at start / end {load[0]:.1f} / {load[1]:.1f} on "
                  f"{os.cpu_count()} cores (other jobs share the machine: wall times are inflated, CPU times less so)."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], runs: list[dict], path: Path, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(rows):
        left.bar(i, r["em_mean"], color="#bbb")
        left.scatter([i] * len(r["em_per_seed"]), r["em_per_seed"], color="k", zorder=3, s=12)
    left.axhline(chance, ls="--", color="r", label="chance")
    left.set_xticks(range(len(rows)), [r["arm"] for r in rows])
    left.set_ylabel("exact match (%)")
    left.set_ylim(0, 100)
    left.legend()
    left.set_title("EM per arm (dots: seeds)")
    colors = {"global": "C0", "no-global": "C1", "chunks-512": "C2"}
    for run in runs:
        if run["curve"]:
            updates, acc = zip(*run["curve"])
            right.plot(updates, acc, color=colors[run["arm"]], alpha=0.7,
                       label=run["arm"] if run["seed"] == runs[0]["seed"] else None)
    right.set_xlabel("updates")
    right.set_ylabel("train start accuracy (% of rows)")
    right.set_title("training curves")
    right.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.quick:
        args.seeds, args.train, args.valid, args.updates = args.seeds[:1], 64, 16, 20
        args.doc_tokens, args.min_distance = 600, 300
    task = LongRangeQa(args.doc_tokens, args.candidates, args.min_distance, name_tokens=args.name_tokens)
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="long_range_qa_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        meta = prepare(work, args, task)
        after = resource.getrusage(resource.RUSAGE_SELF)
        prep_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        runs = []
        for seed in args.seeds:          # seeds outside, arms inside: the arms share each stretch of machine load
            for arm in args.arms:
                runs.append(run_arm(work, arm, seed, meta, args))
                r = runs[-1]
                print(f"seed {seed} {arm:10s} EM {r['exact_match']:6.2f} F1 {r['f1']:6.2f}  train CPU "
                      f"{r['train']['cpu_s']:7.1f} s wall {r['train']['wall_s']:7.1f} s RSS "
                      f"{r['train']['peak_rss_mib']} MiB", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = summarize(runs, meta, args)
    total_cpu = prep_cpu + sum(r["train"]["cpu_s"] + r["predict"]["cpu_s"] for r in runs)
    total_wall = time.perf_counter() - start
    text = markdown(rows, args, task, total_cpu, total_wall, (load_start, os.getloadavg()[0]))
    print(text)
    stem = "long_range_qa_quick" if args.quick else "long_range_qa"
    write_text_atomic(RESULTS / f"{stem}.md", text + f"\n![EM per arm and training curves]({stem}.png)\n")
    write_json_atomic(RESULTS / f"{stem}.json", {"args": {k: str(v) if isinstance(v, Path) else v
                                                           for k, v in vars(args).items()},
                                                  "rows": rows, "runs": runs, "total_cpu_s": total_cpu,
                                                  "total_wall_s": round(total_wall, 1)})
    plot(rows, runs, RESULTS / f"{stem}.png", 100 / task.candidates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
