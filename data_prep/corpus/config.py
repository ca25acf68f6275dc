"""The run's configuration (a dataclass, as fairseq does it) and its fingerprint.

The fingerprint covers everything that changes the output: input files (path, size, mtime), tokenizer
files (content hashes), selection options, seed, split fractions, and the shard layout the journal relies
on. Same fingerprint: a rerun is a no-op (finished) or a resume (interrupted). Different: a clean rebuild.
Worker count, progress display and error policy do not change the output and are left out.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

from .documents import SOURCE_ORDER
from .readers import input_files
from .tokenizers import Gpt2BpeSpec, SentencePieceSpec

# The paper's selection (§5): one third of Realnews (documents longer than 1,200 tokens) and of Stories.
DEFAULT_FRACTIONS = {"realnews": Fraction(1, 3), "stories": Fraction(1, 3)}
DEFAULT_LONGER_THAN = {"realnews": 1200}


@dataclass
class SpmTrainConfig:
    """Train a sentencepiece model on a seeded sample of paragraphs before tokenizing."""

    vocab_size: int = 32000
    model_type: str = "unigram"
    sample_lines: int = 200_000  # reservoir size; each sampled paragraph is cut at 2,000 characters


@dataclass
class CorpusPrepConfig:
    sources: dict[str, Path]
    out_dir: Path
    tokenizer: Optional[Union[Gpt2BpeSpec, SentencePieceSpec]] = None  # None: train one (see ``train_spm``)
    train_spm: Optional[SpmTrainConfig] = None
    fractions: dict[str, Fraction] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    longer_than: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LONGER_THAN))
    max_docs: dict[str, int] = field(default_factory=dict)
    max_tokens: dict[str, int] = field(default_factory=dict)
    # Longest output line: Longformer's 4,096-token samples less <s> and </s>, so fairseq's complete_doc
    # blocks never meet a line they cannot hold (longer paragraphs are split into near-equal lines).
    max_line_tokens: int = 4094
    valid_fraction: float = 0.01
    test_fraction: float = 0.01
    seed: int = 1
    workers: int = 1
    shard_docs: int = 10_000
    shard_mb: float = 32.0
    max_doc_mb: float = 64.0
    on_error: str = "skip"  # "skip": report, count and go on; "fail": stop at the first problem
    keep_work: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        # Absolute paths: the fingerprint must not change when a rerun starts from another folder.
        self.sources = {s: Path(self.sources[s]).resolve() for s in SOURCE_ORDER if self.sources.get(s) is not None}
        self.out_dir = Path(self.out_dir)
        if not self.sources:
            raise ValueError("no input source given: pass at least one of --books, --wikipedia, --realnews, --stories")
        if (self.tokenizer is None) == (self.train_spm is None):
            raise ValueError("choose exactly one tokenizer: GPT-2 BPE files, --spm-model, or --train-spm")
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers}: must be at least 1")
        if self.shard_docs < 1 or self.shard_mb <= 0 or self.max_doc_mb <= 0:
            raise ValueError("--shard-docs, --shard-mb and --max-doc-mb must be positive")
        if self.max_line_tokens < 1:
            raise ValueError(f"--max-line-tokens {self.max_line_tokens}: must be at least 1")
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"--on-error {self.on_error!r}: choose 'skip' or 'fail'")
        if self.train_spm is not None:
            if self.train_spm.model_type not in ("unigram", "bpe"):
                raise ValueError(f"--spm-model-type {self.train_spm.model_type!r}: choose 'unigram' or 'bpe'")
            if self.train_spm.vocab_size < 300:
                raise ValueError("--spm-vocab-size must be at least 300 (256 byte-fallback pieces plus text pieces)")
        if self.valid_fraction < 0 or self.test_fraction < 0 or self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(f"--valid-fraction {self.valid_fraction} and --test-fraction {self.test_fraction} "
                             f"must be >= 0 and sum to less than 1")
        for name, path in self.sources.items():
            if not path.exists():
                raise ValueError(f"--{name} {path} does not exist")

    @property
    def shard_bytes(self) -> int:
        return int(self.shard_mb * 2**20)

    @property
    def max_doc_bytes(self) -> int:
        return int(self.max_doc_mb * 2**20)

    def fingerprint(self) -> str:
        inputs = {}
        for name, root in self.sources.items():
            inputs[name] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in input_files(root)]
        described = {
            "inputs": inputs,
            "tokenizer": self.tokenizer.fingerprint() if self.tokenizer is not None else None,
            "train_spm": vars(self.train_spm) if self.train_spm is not None else None,
            "fractions": {k: str(v) for k, v in sorted(self.fractions.items())},
            "longer_than": dict(sorted(self.longer_than.items())),
            "max_docs": dict(sorted(self.max_docs.items())),
            "max_tokens": dict(sorted(self.max_tokens.items())),
            "splits": [self.valid_fraction, self.test_fraction],
            "max_line_tokens": self.max_line_tokens,
            "seed": self.seed,
            "shards": [self.shard_docs, self.shard_bytes, self.max_doc_bytes],
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        """A readable record of the options, stored beside the output."""
        return {
            "sources": {k: str(v) for k, v in self.sources.items()},
            "tokenizer": ({"name": self.tokenizer.name, **{k: str(v) for k, v in vars(self.tokenizer).items()}}
                          if self.tokenizer is not None else {"name": "spm (trained)", **vars(self.train_spm)}),
            "fractions": {k: str(v) for k, v in self.fractions.items()},
            "longer_than": self.longer_than,
            "max_docs": self.max_docs,
            "max_tokens": self.max_tokens,
            "max_line_tokens": self.max_line_tokens,
            "valid_fraction": self.valid_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }
