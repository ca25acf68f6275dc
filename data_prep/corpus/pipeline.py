"""Streaming, parallel, resumable tokenization of the selected documents into per-split id files.

A source's document stream is cut into shards of at most ``shard_docs`` documents read or ``shard_mb``
of text to tokenize, whichever comes first; both are functions of the input alone, so a rerun cuts the
same shards and can skip those the journal has committed (re-reading them, which is cheap, without
tokenizing). Only one shard is in memory at a time, so memory does not grow with the corpus.

Within a shard the documents are tokenized by a pool of worker processes, in order, and each kept
document is written as its paragraph lines followed by an empty line: fairseq binarizes that empty line
to a lone ``</s>``, the document separator that ``--sample-break-mode complete_doc`` respects.
"""
from __future__ import annotations

import logging
import multiprocessing
import random
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from .config import CorpusPrepConfig
from .documents import Document, InputError, Problem
from .journal import Journal
from .readers import READERS
from .selection import SPLITS, BlockSampler, SplitAssigner
from .stats import add_length
from .tokenizers import encode_in_worker, init_worker

logger = logging.getLogger("data_prep.corpus")

MAX_SHOWN_PROBLEMS = 20  # per source; the rest are counted and listed in problems.tsv


@dataclass
class Shard:
    index: int
    read: int = 0  # documents read (before sampling)
    sampled_out: int = 0
    docs: list[Document] = field(default_factory=list)  # sampled in: to tokenize
    problems: list[Problem] = field(default_factory=list)
    nbytes: int = 0


def iter_shards(items: Iterable, sampler: BlockSampler, shard_docs: int, shard_bytes: int) -> Iterator[Shard]:
    """Group a reader's stream into shards, applying the seeded sampling on the way."""
    ordinal, shard = 0, Shard(0)
    for item in items:
        if isinstance(item, Problem):
            shard.problems.append(item)
            continue
        shard.read += 1
        if sampler.keep(ordinal):
            shard.docs.append(item)
            shard.nbytes += item.nbytes
        else:
            shard.sampled_out += 1
        ordinal += 1
        if shard.read >= shard_docs or shard.nbytes >= shard_bytes:
            yield shard
            shard = Shard(shard.index + 1)
    if shard.read or shard.problems:
        yield shard


@contextmanager
def encoder_pool(spec, workers: int, max_line_tokens: int) -> Iterator[Callable]:
    """``encode_many(list of paragraph lists) -> iterator of results`` in order, in-process or in a pool."""
    if workers == 1:
        init_worker(spec, max_line_tokens)
        yield lambda jobs: map(encode_in_worker, jobs)
        return
    methods = multiprocessing.get_all_start_methods()
    # fork: workers start at once and share the parent's loaded modules; they never touch torch.
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers, initializer=init_worker, initargs=(spec, max_line_tokens)) as pool:
        def encode_many(jobs):
            chunksize = max(1, min(64, len(jobs) // (workers * 8)))
            return pool.imap(encode_in_worker, jobs, chunksize=chunksize)

        yield encode_many


class ProblemReporter:
    """Logs the first problems of each source, counts all, appends all to problems.tsv; or refuses."""

    def __init__(self, on_error: str, problems_file):
        self.on_error, self.file, self.shown = on_error, problems_file, {}

    def __call__(self, problem: Problem, counts: dict) -> None:
        if self.on_error == "fail":
            raise InputError(problem)
        counts[problem.kind] += 1
        self.file.write(f"{problem.source}\t{problem.where()}\t{problem.kind}\t{problem.message}\n".encode("utf-8"))
        shown = self.shown.get(problem.source, 0)
        if shown < MAX_SHOWN_PROBLEMS:
            logger.warning("%s", problem.describe())
        elif shown == MAX_SHOWN_PROBLEMS:
            logger.warning("[%s] further problems are counted and listed in problems.tsv, not shown", problem.source)
        self.shown[problem.source] = shown + 1


class ShardProcessor:
    """Tokenizes one shard and writes its kept documents; applies the length filter, caps and splits."""

    def __init__(self, cfg: CorpusPrepConfig, journal: Journal, outputs: dict, encode_many: Callable):
        self.cfg, self.journal, self.outputs, self.encode_many = cfg, journal, outputs, encode_many
        counts = {s: sum(journal.stats[src]["splits"][s]["docs"] for src in journal.stats) for s in SPLITS}
        self.assigner = SplitAssigner(cfg.valid_fraction, cfg.test_fraction, cfg.seed, counts)
        self.report = ProblemReporter(cfg.on_error, outputs["problems"])

    def __call__(self, source: str, shard: Shard, bar: tqdm) -> bool:
        """Process the shard; True when the source's cap was reached (stop reading it)."""
        stats = self.journal.stats[source]
        counts = stats["counts"]
        for problem in shard.problems:
            self.report(problem, counts)
        counts["read"] += shard.read
        counts["sampled_out"] += shard.sampled_out
        longer_than = self.cfg.longer_than.get(source, 0)
        # Tokens never outnumber bytes (+1 per paragraph for sentencepiece's leading piece), so documents
        # this small cannot pass the length filter and are not worth tokenizing.
        todo = [d for d in shard.docs if d.nbytes + len(d.paragraphs) > longer_than]
        counts["too_short"] += len(shard.docs) - len(todo)
        bar.update(shard.read - len(todo))
        results = self.encode_many([d.paragraphs for d in todo])
        max_docs = self.cfg.max_docs.get(source)
        max_tokens = self.cfg.max_tokens.get(source)
        for i, (doc, (n_tokens, lines, n_unk)) in enumerate(zip(todo, results)):
            bar.update(1)
            if n_tokens <= longer_than:
                counts["too_short"] += 1
                continue
            split = self.assigner.assign(source, doc.key)
            self.outputs[split].write(("\n".join(lines) + "\n\n").encode("utf-8"))
            add_length(stats["splits"][split], n_tokens, len(lines) + 1)
            counts["selected"] += 1
            counts["unk_tokens"] += n_unk
            selected_tokens = sum(stats["splits"][s]["tokens"] for s in SPLITS)
            # A cap stops the source once reached: the document that reaches it is the last one kept.
            if (max_docs is not None and counts["selected"] >= max_docs) or \
                    (max_tokens is not None and selected_tokens >= max_tokens):
                counts["capped"] += len(todo) - i - 1
                return True
            bar.set_postfix(selected=counts["selected"], tokens=selected_tokens, refresh=False)
        return False


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the pool's workers once it is closed)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def tokenize_sources(cfg: CorpusPrepConfig, journal: Journal, spec) -> None:
    """Run every source not yet finished, shard by shard, committing the journal after each shard."""
    outputs = journal.open_outputs()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    try:
        with encoder_pool(spec, cfg.workers, cfg.max_line_tokens) as encode_many:
            process = ShardProcessor(cfg, journal, outputs, encode_many)
            for source, root in cfg.sources.items():
                state = journal.source_state(source)
                if state["finished"]:
                    continue
                if cfg.max_docs.get(source) == 0:
                    state["finished"] = True
                    journal.commit()
                    continue
                sampler = BlockSampler(cfg.fractions.get(source, 1), cfg.seed, source)
                items = READERS[source](root, cfg.max_doc_bytes)
                with tqdm(desc=f"{source:>9}", unit=" doc", disable=not cfg.progress, dynamic_ncols=True) as bar:
                    for shard in iter_shards(items, sampler, cfg.shard_docs, cfg.shard_bytes):
                        if shard.index < state["shards_done"]:
                            continue  # committed by an earlier run
                        capped = process(source, shard, bar)
                        state["shards_done"] = shard.index + 1
                        state["finished"] = capped
                        journal.data["seconds"]["tokenize"] += time.perf_counter() - started
                        started = time.perf_counter()
                        journal.commit()
                        if capped:
                            logger.info("[%s] cap reached; the rest of the source is not read", source)
                            break
                state["finished"] = True
                journal.commit()
        # Wall time can mislead on a shared machine; CPU time (main + workers) measures the work itself.
        seconds = journal.data["seconds"]
        seconds["tokenize_cpu"] = seconds.get("tokenize_cpu", 0.0) + _cpu_seconds() - cpu_started
        journal.save()
    finally:
        journal.close()


def sample_paragraphs(cfg: CorpusPrepConfig, dest: Path, max_chars: int = 2000) -> int:
    """Seeded reservoir sample of paragraphs from the sampled-in documents, for sentencepiece training."""
    rng = random.Random(cfg.seed)
    reservoir: list[str] = []
    seen = 0
    size = cfg.train_spm.sample_lines
    for source, root in cfg.sources.items():
        sampler = BlockSampler(cfg.fractions.get(source, 1), cfg.seed, source)
        ordinal = 0
        items = READERS[source](root, cfg.max_doc_bytes)
        for item in tqdm(items, desc=f"spm sample {source}", unit=" doc", disable=not cfg.progress):
            if isinstance(item, Problem):
                continue  # reported (or refused) by the tokenization pass
            keep = sampler.keep(ordinal)
            ordinal += 1
            if not keep:
                continue
            for paragraph in item.paragraphs:
                seen += 1
                if len(reservoir) < size:
                    reservoir.append(paragraph[:max_chars])
                else:
                    j = rng.randrange(seen)
                    if j < size:
                        reservoir[j] = paragraph[:max_chars]
    with open(dest, "w", encoding="utf-8") as f:
        for paragraph in reservoir:
            f.write(paragraph + "\n")
    return len(reservoir)
