"""Throughput and memory of ``longformer-prep-corpus`` on generated corpora (issue 6's targets).

For each corpus size (default 10 MB and 50 MB of raw text in the four sources' raw forms, written by
``data_prep.corpus.synthetic``) and each worker count (default 1 and 2) the CLI runs as a subprocess on a
fresh output folder, with a toy GPT-2-style BPE vocabulary of about 50K merges (no real GPT-2 files may be
downloaded here). The whole process tree (CLI, tokenizer workers, fairseq-preprocess and its workers) is
sampled every 50 ms from /proc: peak summed PSS (shared pages split between processes, so forked workers
are not double counted) and peak summed RSS, separately for the tokenization stage and for the whole run.

Usage::

    python benchmarks/corpus_prep.py                        # 10 and 50 MB, 1 and 2 workers
    python benchmarks/corpus_prep.py --sizes-mb 2 --workers 1 --shard-mb 1   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.corpus.synthetic import WordSource, write_synthetic_sources, write_toy_gpt2_bpe  # noqa: E402


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _memory_kb(pid: int) -> tuple[int, int, bool]:
    """(PSS kB, RSS kB, is this fairseq-preprocess) of one process; zeros if it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return 0, 0, False
    return pss, rss, b"fairseq_cli.preprocess" in cmdline


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; peak summed PSS/RSS of its process tree, overall and before fairseq-preprocess starts."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = {"pss": 0, "rss": 0, "tok_pss": 0, "tok_rss": 0}
    binarizing = False
    while proc.poll() is None:
        total_pss = total_rss = 0
        for pid in _tree(proc.pid):
            pss, rss, is_preprocess = _memory_kb(pid)
            total_pss += pss
            total_rss += rss
            binarizing = binarizing or is_preprocess
        peak["pss"], peak["rss"] = max(peak["pss"], total_pss), max(peak["rss"], total_rss)
        if not binarizing:
            peak["tok_pss"], peak["tok_rss"] = max(peak["tok_pss"], total_pss), max(peak["tok_rss"], total_rss)
        time.sleep(0.05)
    output = proc.stdout.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    return {"wall_s": time.perf_counter() - started, **{k: v / 1024 for k, v in peak.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[10, 50])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shard-mb", type=float, default=4.0,
                   help="shard budget; below the corpus sizes so that flat memory is visible")
    p.add_argument("--bpe-words", type=int, default=13000, help="words made single tokens by the toy BPE merges")
    p.add_argument("--bpe-cache-entries", type=int, nargs="+", default=[200_000],
                   help="GPT-2 encoder cache sizes to try (the cache is what grows with a corpus' vocabulary)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = p.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    words = WordSource(seed=0)
    bpe = write_toy_gpt2_bpe(base / "bpe", list(words.words[: args.bpe_words]))
    n_merges = sum(1 for _ in open(bpe["vocab_bpe"], encoding="utf-8")) - 1
    print(f"toy GPT-2 BPE: {n_merges:,} merges; work folder {base}; {os.cpu_count()} CPUs", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    rows = []
    for size in args.sizes_mb:
        raw = base / f"raw-{size:g}mb"
        if not raw.exists():
            t = time.perf_counter()
            write_synthetic_sources(raw, int(size * 2**20), seed=0)
            print(f"generated {size:g} MB corpus in {time.perf_counter() - t:.1f} s", flush=True)
        paths = {"books": raw / "books", "wikipedia": raw / "wikipedia", "realnews": raw / "realnews.jsonl",
                 "stories": raw / "stories.txt"}
        raw_bytes = sum(f.stat().st_size for p in paths.values() for f in ([p] if p.is_file() else p.rglob("*"))
                        if f.is_file())
        for workers, cache in [(w, c) for c in args.bpe_cache_entries for w in args.workers]:
            out = base / f"out-{size:g}mb-w{workers}-c{cache}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            cmd = [sys.executable, "-m", "data_prep.corpus.cli", "--output", str(out), "--workers", str(workers),
                   "--shard-mb", str(args.shard_mb), "--no-progress", "--bpe-cache-entries", str(cache),
                   "--gpt2-encoder-json", str(bpe["encoder_json"]), "--gpt2-vocab-bpe", str(bpe["vocab_bpe"]),
                   "--dict", str(bpe["dict_txt"])]
            for source, path in paths.items():
                cmd += [f"--{source}", str(path)]
            load_before = os.getloadavg()[0]
            measured = run_measured(cmd, env)
            measured["load_avg"] = (load_before + os.getloadavg()[0]) / 2  # other users of the CPUs
            stats = json.loads((out / "data-bin" / "stats.json").read_text())
            read = sum(s["counts"]["read"] for s in stats["sources"].values())
            tokenized_docs = read - sum(s["counts"]["sampled_out"] for s in stats["sources"].values())
            selected = stats["table5"]["all"]["docs"]
            tokens = stats["table5"]["all"]["tokens"]
            tok_s = stats["seconds"]["tokenize"]
            rows.append({
                "size_mb": round(raw_bytes / 2**20, 1), "workers": workers, "cache": cache, "docs_read": read,
                "docs_tokenized": tokenized_docs, "docs_selected": selected, "tokens": tokens,
                "tokenize_s": tok_s, "tokenize_cpu_s": stats["seconds"]["tokenize_cpu"],
                "binarize_s": stats["seconds"]["binarize"],
                "docs_per_s": read / tok_s, "tokens_per_s": tokens / tok_s,
                "raw_mb_per_s": raw_bytes / 2**20 / tok_s, **measured,
            })
            r = rows[-1]
            print(f"{r['size_mb']} MB, {workers} worker(s), cache {cache:,}: tokenize {tok_s:.1f} s, {r['tokens_per_s']:,.0f} tok/s, "
                  f"peak PSS tokenize {r['tok_pss']:.0f} MB, whole run {r['pss']:.0f} MB", flush=True)
    print()
    print("| Raw MB | Workers | BPE cache | Docs read | Docs tokenized | Docs kept | Tokens kept | Tokenize s | Tokenize CPU s | Docs read/s "
          "| Tokens/s | Raw MB/s | Binarize s | Wall s | Peak PSS tokenize MB | Peak RSS tokenize MB "
          "| Peak PSS run MB | Load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size_mb']} | {r['workers']} | {r['cache']:,} | {r['docs_read']:,} | {r['docs_tokenized']:,} | "
              f"{r['docs_selected']:,} | {r['tokens']:,} | {r['tokenize_s']:.1f} | {r['tokenize_cpu_s']:.1f} | "
              f"{r['docs_per_s']:,.0f} | "
              f"{r['tokens_per_s']:,.0f} | {r['raw_mb_per_s']:.2f} | {r['binarize_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['tok_pss']:.0f} | {r['tok_rss']:.0f} | {r['pss']:.0f} | {r['load_avg']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
