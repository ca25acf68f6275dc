"""Binarization with fairseq's own ``fairseq-preprocess`` (run as a subprocess: its logging setup and its
multiprocessing stay out of our process, and a crash there cannot leave our state half-changed).

Note on speed: fairseq 0.12's ``FileBinarizer.multiprocess_dataset`` lets ``workers - 1`` pool processes
binarize their chunks and only then binarizes the first chunk in the main process, so ``--workers 2``
is no faster than 1 and N workers take about 2/N of the single-worker time.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

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


def run_preprocess(split_files: dict[str, Path], dict_txt: Path, destdir: Path, workers: int,
                   expected_items: int, progress: bool = True) -> None:
    """Run fairseq-preprocess, with a progress bar on the binary output's growth.

    ``expected_items`` (tokens plus one </s> per line) times the id size gives the final .bin bytes;
    fairseq picks 2-byte ids for vocabularies under 65,500 symbols, else 4 bytes.
    """
    cmd = preprocess_command(split_files, dict_txt, destdir, workers)
    logger.info("binarizing: %s", " ".join(cmd))
    n_symbols = 4 + sum(1 for _ in open(dict_txt, encoding="utf-8"))
    expected_bytes = expected_items * (2 if n_symbols < 65_500 else 4)
    with tempfile.TemporaryFile("w+") as log, \
            tqdm(total=expected_bytes, unit="B", unit_scale=True, desc=" binarize", disable=not progress) as bar:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            time.sleep(0.5)
            done = sum(f.stat().st_size for f in destdir.glob("*.bin") if f.exists())
            bar.update(min(done, expected_bytes) - bar.n)
        bar.update(expected_bytes - bar.n if proc.returncode == 0 else 0)
        log.seek(0)
        output = log.read()
    for line in output.splitlines():
        if "sents" in line and "tokens" in line:  # fairseq's per-split summary line
            logger.info("fairseq-preprocess: %s", line.split(" | ")[-1])
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"fairseq-preprocess failed (exit {proc.returncode}); its last output:\n{tail}")
