"""One build, start to finish: lock, skip if up to date, resume or start the journal, (train sentencepiece),
tokenize, binarize into a staging folder, write the statistics there, publish it as ``data-bin`` at once.

Output layout under ``--output``::

    data-bin/           fairseq binaries train/valid/test.{bin,idx}, dict.txt, stats.json, stats.md,
                        lengths.png, problems.tsv, prep.json (options + fingerprint), spm.model if trained
    .work/              the resumable state while a build is under way (deleted after success)
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from ..atomic import publish_dir, write_json_atomic, write_text_atomic
from .binarize import run_preprocess
from .config import CorpusPrepConfig
from .journal import PROBLEMS, Journal, split_file
from .pipeline import sample_paragraphs, tokenize_sources
from .selection import SPLITS
from .stats import THRESHOLDS, markdown_table, plot_lengths, summarize
from .tokenizers import SentencePieceSpec, train_sentencepiece

logger = logging.getLogger("data_prep.corpus")

FINAL = "data-bin"
WORK = ".work"
PREP_RECORD = "prep.json"


@contextmanager
def exclusive(out_dir: Path):
    """One build per output folder at a time (a second one would interleave the journal)."""
    with open(out_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another longformer-prep-corpus run is using {out_dir}; wait for it or "
                             f"choose another --output") from None
        yield


def existing_fingerprint(final: Path) -> str | None:
    try:
        return json.loads((final / PREP_RECORD).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def build(cfg: CorpusPrepConfig) -> Path:
    """Build (or resume, or confirm) the corpus; returns the published ``data-bin`` folder."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.tokenizer is not None:
        cfg.tokenizer.check()
    final, work = cfg.out_dir / FINAL, cfg.out_dir / WORK
    with exclusive(cfg.out_dir):
        fingerprint = cfg.fingerprint()
        if final.exists():
            if existing_fingerprint(final) == fingerprint:
                logger.info("%s is up to date with these inputs and options; nothing to do", final)
                if work.exists() and not cfg.keep_work:
                    shutil.rmtree(work)  # left by a crash between publishing and cleaning up
                print((final / "stats.md").read_text(), flush=True)
                return final
            if not cfg.overwrite:
                raise ValueError(f"{final} holds a corpus built from other inputs or options; pass --overwrite "
                                 f"to replace it, or choose another --output")
        journal = _start_journal(work, fingerprint, cfg)
        spec = cfg.tokenizer if cfg.tokenizer is not None else _trained_spm(cfg, work, journal)
        tokenize_sources(cfg, journal, spec)
        _finish(cfg, journal, spec, work, final)
        if not cfg.keep_work:
            shutil.rmtree(work)
    return final


def _start_journal(work: Path, fingerprint: str, cfg: CorpusPrepConfig) -> Journal:
    journal = Journal.load(work, fingerprint) if work.exists() else None
    if journal is not None:
        done = {s: st["shards_done"] for s, st in journal.data["sources"].items()}
        logger.info("resuming the interrupted build in %s (shards done: %s)", work, done)
        return journal
    if work.exists():
        logger.info("%s holds another or a broken build; starting afresh", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return Journal.fresh(work, fingerprint, list(cfg.sources))


def _trained_spm(cfg: CorpusPrepConfig, work: Path, journal: Journal) -> SentencePieceSpec:
    """Train once per build (the model is part of the journal's state, reused on resume)."""
    model = work / "spm.model"
    if journal.data.get("tokenizer") != "spm-trained" or not model.exists():
        sample = work / "spm-sample.txt"
        n = sample_paragraphs(cfg, sample)
        if n == 0:
            raise ValueError("no text to train sentencepiece on: every source is empty or sampled out")
        logger.info("training sentencepiece (%s, vocab %d) on %d sampled paragraphs",
                    cfg.train_spm.model_type, cfg.train_spm.vocab_size, n)
        trained = train_sentencepiece(sample, work / ".spm-training", cfg.train_spm.vocab_size,
                                      cfg.train_spm.model_type, cfg.workers)
        os.replace(trained, model)
        os.replace(work / ".spm-training.vocab", work / "spm.vocab")
        sample.unlink()
        journal.data["tokenizer"] = "spm-trained"
        journal.save()
    return SentencePieceSpec(model)


def _finish(cfg: CorpusPrepConfig, journal: Journal, spec, work: Path, final: Path) -> None:
    stats = journal.stats
    train_docs = sum(stats[s]["splits"]["train"]["docs"] for s in stats)
    if train_docs == 0:
        raise ValueError("no document was selected for the train split; check the inputs, --fraction, "
                         "--keep-longer-than and the caps (see the problems reported above)")
    staging = cfg.out_dir / f".{FINAL}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    started = time.perf_counter()
    dict_txt = spec.write_dict(work / "dict.txt")
    expected_items = sum(st["splits"][s]["tokens"] + st["splits"][s]["lines"] for st in stats.values() for s in SPLITS)
    run_preprocess({s: split_file(work, s) for s in SPLITS}, dict_txt, staging, cfg.workers, expected_items,
                   cfg.progress)
    seconds = dict(journal.data["seconds"], binarize=time.perf_counter() - started)
    if isinstance(spec, SentencePieceSpec) and cfg.tokenizer is None:
        shutil.copyfile(spec.model, staging / "spm.model")
    shutil.copyfile(work / PROBLEMS, staging / PROBLEMS)
    table = markdown_table(stats)
    write_json_atomic(staging / "stats.json", {
        "table5": summarize(stats), "thresholds": list(THRESHOLDS), "sources": stats, "seconds": seconds,
    })
    write_text_atomic(staging / "stats.md", "# Pretraining corpus statistics\n\n" + table)
    plot_lengths(stats, staging / "lengths.png")
    write_json_atomic(staging / PREP_RECORD, {"fingerprint": journal.data["fingerprint"], "options": cfg.describe()})
    publish_dir(staging, final)
    print(table, flush=True)
    logger.info("corpus ready in %s (tokenize %.1f s, binarize %.1f s)", final, seconds["tokenize"],
                seconds["binarize"])
