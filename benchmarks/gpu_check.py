"""Python steps of benchmarks/gpu_check.sh: a synthetic masked-LM corpus, and the training log's verdict.

    python benchmarks/gpu_check.py data DIR [--tokens N]      # dict.txt + train.{bin,idx} for fairseq
    python benchmarks/gpu_check.py train-summary LOG          # Markdown: loss finite and falling, tokens/s, memory

The corpus is drawn from a Zipf distribution over 1,000 symbols, so a model that is learning shows it
within a few updates (its loss falls towards the unigram entropy). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

VOCAB = 1000


def write_corpus(directory: Path, tokens: int, seed: int = 1) -> None:
    """fairseq binaries of ``tokens`` Zipf-distributed symbols in lines of 50..500, and their dictionary."""
    import numpy as np
    import torch
    from fairseq.data import Dictionary, indexed_dataset

    directory.mkdir(parents=True, exist_ok=True)
    dictionary = Dictionary()
    for i in range(VOCAB):
        dictionary.add_symbol(str(i), n=VOCAB - i)
    dictionary.save(str(directory / "dict.txt"))
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, VOCAB + 1)
    probs /= probs.sum()
    prefix = str(directory / "train")
    builder = indexed_dataset.make_builder(prefix + ".bin", "mmap", vocab_size=len(dictionary))
    written = 0
    while written < tokens:
        ids = rng.choice(VOCAB, size=int(rng.integers(50, 500)), p=probs) + dictionary.nspecial
        builder.add_item(torch.tensor([*ids.tolist(), dictionary.eos()], dtype=torch.int64))
        written += len(ids) + 1
    builder.finalize(prefix + ".idx")
    print(f"wrote {written} tokens ({len(dictionary)} symbols) to {directory}")


def read_updates(log: Path) -> list[dict]:
    """The per-update records of a ``fairseq-train --log-format json --log-interval 1`` log."""
    records = []
    for line in log.read_text(errors="replace").splitlines():
        if "| train_inner |" in line:
            records.append(json.loads(line.split("| train_inner |", 1)[1]))
    return records


def train_summary(log: Path, total_gib: float | None) -> tuple[str, bool]:
    """Markdown lines about the run in ``log`` and whether it passed (finite, falling loss)."""
    updates = read_updates(log)
    if not updates:
        return "no `train_inner` record in the log: training did not reach its first update", False
    loss = [float(u["loss"]) for u in updates]
    wps = [float(u["wps"]) for u in updates[1:]] or [float(updates[0]["wps"])]  # update 1 includes compiling
    finite = all(math.isfinite(x) for x in loss)
    k = max(1, len(loss) // 4)
    first, last = statistics.mean(loss[:k]), statistics.mean(loss[-k:])
    falling = finite and last < first
    lines = [
        f"- updates logged: {len(updates)} (last `num_updates` {updates[-1].get('num_updates')})",
        f"- loss: first {loss[0]:.3f}, last {loss[-1]:.3f}; mean of the first {k} {first:.3f}, "
        f"of the last {k} {last:.3f}: {'finite' if finite else 'NOT FINITE'}, "
        f"{'falling' if falling else 'NOT FALLING'}",
        f"- tokens/s (fairseq `wps`, median of updates 2..): {statistics.median(wps):,.0f}",
    ]
    free = [float(u["gb_free"]) for u in updates if "gb_free" in u]
    if free and total_gib:
        lines.append(f"- peak GPU memory allocated: {total_gib - min(free):.1f} GiB of {total_gib:.1f} "
                     "(fairseq's `gb_free` = total - peak allocated per update)")
    else:
        lines.append("- peak GPU memory: not logged (no CUDA)")
    return "\n".join(lines), falling


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write a synthetic masked-LM corpus")
    data.add_argument("directory", type=Path)
    data.add_argument("--tokens", type=int, default=200_000)
    summary = sub.add_parser("train-summary", help="Markdown verdict of a fairseq-train json log")
    summary.add_argument("log", type=Path)
    args = parser.parse_args(argv)

    if args.command == "data":
        write_corpus(args.directory, args.tokens)
        return 0
    if not args.log.exists():
        raise SystemExit(f"train-summary: no log at {args.log}")
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    text, passed = train_summary(args.log, total)
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
