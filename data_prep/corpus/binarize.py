"""Binarization with fairseq's own ``fairseq-preprocess`` (run as a subprocess: its logging setup and its
multiprocessing stay out of our process, and a crash there cannot leave our state half-changed)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from .selection import SPLITS

logger = logging.getLogger("data_prep.corpus")


def preprocess_command(split_files: dict[str, Path], dict_txt: Path, destdir: Path, workers: int) -> list[str]:
    """``fairseq-preprocess --only-source --srcdict dict.txt`` over the non-empty splits."""
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--srcdict", str(dict_txt),
           "--destdir", str(destdir), "--workers", str(workers), "--dataset-impl", "mmap"]
    for split in SPLITS:
        path = split_files.get(split)
        if path is not None and path.stat().st_size > 0:
            cmd += [f"--{split}pref", str(path)]
    return cmd


def run_preprocess(split_files: dict[str, Path], dict_txt: Path, destdir: Path, workers: int) -> None:
    cmd = preprocess_command(split_files, dict_txt, destdir, workers)
    logger.info("binarizing: %s", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout.splitlines():
        if "sents" in line and "tokens" in line:  # fairseq's per-split summary line
            logger.info("fairseq-preprocess: %s", line.split(" | ")[-1])
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise RuntimeError(f"fairseq-preprocess failed (exit {proc.returncode}); its last output:\n{tail}")
