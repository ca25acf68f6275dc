"""``longformer-demo``: the character-LM pipeline end to end on a corpus every CPython ships.

1. writes the 79 documents of ``pydoc_data.topics`` (~465K characters of English) to WORKDIR/docs,
2. ``longformer-prep-charlm --dataset text`` -> WORKDIR/data (character tokens, fairseq binaries),
3. ``longformer-staged-train configs/char_lm/demo.yaml`` -> WORKDIR/checkpoints (2 phases),
4. ``fairseq-eval-lm`` on the test split -> test BPC, printed next to the unigram entropy it must beat.

Rerunning resumes: prepared data is reused and finished phases are skipped. Each phase shows one
progress bar and the run ends with a table of the phases and the test BPC; fairseq's own logs go to
files (``--verbose`` streams them instead).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from data_prep.atomic import staged_dir, write_text_atomic
from data_prep.charlm import PrepError, prepare
from data_prep.charlm import build_parser as prep_parser
from data_prep.flags import add_renamed_flag

from . import staged_train

REPO_ROOT = Path(__file__).absolute().parent.parent
DEMO_SCHEDULE = REPO_ROOT / "configs" / "char_lm" / "demo.yaml"
# fairseq-eval-lm scores `tokens_per_sample - context_window` tokens per sample after `context_window`
# tokens of context: here 128 scored after 384, more than the demo model's receptive field
# (32 + 64 + 2 * 128 = 352 keys back), like the paper's protocol (32,256 - 31,744 = 512) in small.
EVAL_TOKENS_PER_SAMPLE = 512
EVAL_CONTEXT_WINDOW = 384
EVAL_LOG = "eval_lm.log"


def write_corpus(docs_dir: Path) -> int:
    from pydoc_data.topics import topics

    with staged_dir(docs_dir, overwrite=True) as tmp:
        for i, (name, text) in enumerate(sorted(topics.items())):
            (tmp / f"{i:03d}_{name}.txt").write_text(text, encoding="utf-8")
    return len(topics)


def eval_lm_command(data: Path, checkpoint: Path, tokens_per_sample: int, context_window: int) -> list[str]:
    return [
        sys.executable, "-m", "fairseq_cli.eval_lm", str(data),
        "--path", str(checkpoint),
        "--user-dir", str(staged_train.PLUGIN_DIR),
        "--task", "language_modeling", "--sample-break-mode", "none",
        "--gen-subset", "test",
        "--tokens-per-sample", str(tokens_per_sample), "--context-window", str(context_window),
        "--batch-size", "8",
    ]


def run_eval_lm(command: list[str], log_path: Path | None = None, verbose: bool = False) -> float:
    """Run fairseq-eval-lm and return its ``Loss (base 2)``: BPC for a character vocabulary.

    Its output goes to ``log_path`` (if given), and to the terminal with ``verbose``; a failure shows
    the end of it.
    """
    if verbose:
        print("running:", " ".join(command), flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log_path is not None:
        write_text_atomic(log_path, result.stdout)
    if verbose:
        sys.stdout.write(result.stdout[-3000:])
    match = re.search(r"Loss \(base 2\): ([0-9.]+)", result.stdout)
    if result.returncode or not match:
        tail = "\n".join(result.stdout.splitlines()[-30:])
        raise SystemExit(f"error: fairseq-eval-lm failed (exit {result.returncode}); its output ended with:\n{tail}")
    return float(match.group(1))


def summary(result: dict, prep: dict, workdir: Path) -> str:
    """What the demo prints at the end: the phase table, the test BPC and where the details are."""
    return (
        f"{staged_train.phase_table(result['phases'])}\n\n"
        f"Test BPC {result['test_bpc']:.4f} (fairseq-eval-lm, {prep['tokens']['test']:,} test characters) vs "
        f"unigram entropy {prep['train_unigram_entropy_bits']:.4f} bits (test cross-entropy under the train "
        f"unigram {prep['test_unigram_cross_entropy_bits']:.4f}); this run took "
        f"{staged_train.format_duration(result['wall_s_this_run'])}.\n"
        f"Results: {workdir / 'demo_result.json'}; BPC curves: {result['plot']}; fairseq logs: "
        f"{workdir / 'checkpoints'}/<phase>/train.log and {workdir / EVAL_LOG}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-demo", description=__doc__.splitlines()[0])
    add_renamed_flag(parser, "--output", "--workdir", default="longformer_demo",
                     help="where data, checkpoints and results go")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per training/eval process (OMP_NUM_THREADS). 1 is the robust choice "
                             "on a shared 2-core machine: measured here, 2 threads under load ran 6-10x slower")
    parser.add_argument("--verbose", action="store_true",
                        help="stream fairseq's logs to the terminal instead of one progress bar per phase")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every phase, e.g. optimization.max_update=50")
    return parser


def run(argv=None) -> dict:
    args = build_parser().parse_intermixed_args(argv)
    if args.threads < 1:
        raise SystemExit("error: --threads must be >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch in every fairseq subprocess
    if not DEMO_SCHEDULE.is_file():
        raise SystemExit(f"error: {DEMO_SCHEDULE} is missing; run the demo from a source checkout "
                         f"installed with `pip install -e .`")

    start = time.monotonic()
    workdir = Path(args.output).absolute()
    docs, data, save_dir = workdir / "docs", workdir / "data", workdir / "checkpoints"
    workdir.mkdir(parents=True, exist_ok=True)
    if not docs.is_dir():
        print(f"[demo] wrote {write_corpus(docs)} pydoc_data.topics documents to {docs}", flush=True)
    if not (data / "prep.json").is_file():
        print(f"[demo] preparing character data in {data} (longformer-prep-charlm)", flush=True)
        try:
            prepare(prep_parser().parse_args(["--dataset", "text", "--input", str(docs), "--output", str(data),
                                              "--overwrite"]))
        except PrepError as err:
            raise SystemExit(f"error: {err}") from None
    prep = json.loads((data / "prep.json").read_text())
    print("[demo] characters: " + ", ".join(f"{n:,} {split}" for split, n in prep["tokens"].items()), flush=True)

    print(f"[demo] training {DEMO_SCHEDULE.relative_to(REPO_ROOT)} -> {save_dir}", flush=True)
    phases = staged_train.run([str(DEMO_SCHEDULE), "--input", str(data), "--output", str(save_dir),
                               *(["--verbose"] if args.verbose else []), *args.overrides], show_table=False)
    print(f"[demo] scoring the test split with fairseq-eval-lm (log: {workdir / EVAL_LOG})", flush=True)
    test_bpc = run_eval_lm(eval_lm_command(data, Path(phases[-1]["checkpoint"]),
                                           EVAL_TOKENS_PER_SAMPLE, EVAL_CONTEXT_WINDOW),
                           workdir / EVAL_LOG, args.verbose)
    result = {
        "test_bpc": test_bpc,
        "train_unigram_entropy_bits": round(prep["train_unigram_entropy_bits"], 4),
        "test_unigram_cross_entropy_bits": round(prep["test_unigram_cross_entropy_bits"], 4),
        "test_tokens": prep["tokens"]["test"],
        "phases": [{k: p[k] for k in ("phase", "name", "tokens_per_sample", "updates", "train_bpc", "valid_bpc",
                                      "wall_s")} for p in phases],
        "wall_s_this_run": round(time.monotonic() - start, 1),
        "plot": str(save_dir / "bpc.png"),
    }
    write_text_atomic(workdir / "demo_result.json", json.dumps(result, indent=2) + "\n")
    print("\n" + summary(result, prep, workdir))
    return result


def main(argv=None) -> None:
    run(argv)  # the console script's exit status is main()'s return value: keep it None


if __name__ == "__main__":
    main()
