"""The paper's selection rules, as pure functions of (seed, source, document position/key).

* Sampling ("one third of Realnews, one third of Stories"): stratified by blocks. For a fraction a/b, every
  consecutive block of b documents of a source keeps exactly a of them, chosen by an RNG seeded with
  (seed, source, block). The kept share is therefore exact up to one block, random within blocks,
  reproducible, and independent of sharding, resuming and worker counts.
* Realnews "longer than 1,200 tokens": applied after tokenization, on the tokenizer's own count.
  Sampling runs first (it needs no tokens, so sampled-out documents are never tokenized); since the
  sample is independent of length, this keeps the same expected third of the long documents.
* Splits by document: a document's split depends only on a hash of (seed, source, key), so a document is
  in exactly one split whatever else changes. The first documents fill valid/test while those are empty,
  so a tiny corpus still gets non-empty held-out sets.
"""
from __future__ import annotations

import hashlib
import random
from fractions import Fraction

SPLITS = ("train", "valid", "test")


def parse_fraction(text: str) -> Fraction:
    """'1/3', '0.25' or '1' -> Fraction in [0, 1] (denominator at most 1000, the block size)."""
    try:
        value = Fraction(text.strip()).limit_denominator(1000)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"fraction {text!r} is not a number like 1/3 or 0.25") from None
    if not 0 <= value <= 1:
        raise ValueError(f"fraction {text!r} must be between 0 and 1")
    return value


def parse_source_values(pairs: list[str] | None, parse, option: str, sources) -> dict:
    """``["realnews=1/3", ...]`` -> {"realnews": parse("1/3")}; unknown sources or bad values are refused."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or name not in sources:
            raise ValueError(f"{option} {pair!r}: expected SOURCE=VALUE with SOURCE one of {', '.join(sources)}")
        try:
            out[name] = parse(value)
        except ValueError as err:
            raise ValueError(f"{option} {pair!r}: {err}") from None
    return out


def parse_count(text: str) -> int:
    """'1200', '2_000_000' or '2e6' -> a non-negative int."""
    try:
        value = float(text.replace("_", "")) if any(c in text for c in ".eE") else int(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a count") from None
    if value < 0 or value != int(value):
        raise ValueError(f"{text!r} must be a non-negative whole number")
    return int(value)


def _digest(*parts) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()


class BlockSampler:
    """Keeps exactly ``fraction.numerator`` of every ``fraction.denominator`` consecutive documents."""

    def __init__(self, fraction: Fraction, seed: int, source: str):
        self.fraction, self.seed, self.source = fraction, seed, source
        self._block, self._kept = -1, frozenset()

    def keep(self, ordinal: int) -> bool:
        a, b = self.fraction.numerator, self.fraction.denominator
        if a == b:
            return True
        if a == 0:
            return False
        block = ordinal // b
        if block != self._block:
            rng = random.Random(_digest("sample", self.seed, self.source, block))
            self._block, self._kept = block, frozenset(rng.sample(range(b), a))
        return ordinal % b in self._kept


class SplitAssigner:
    """Train/valid/test by document: a hash of the document's key against the held-out fractions."""

    def __init__(self, valid_fraction: float, test_fraction: float, seed: int, counts: dict[str, int] | None = None):
        if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
            raise ValueError(
                f"held-out fractions valid={valid_fraction} test={test_fraction} must be >= 0 and sum to < 1"
            )
        self.valid_fraction, self.test_fraction, self.seed = valid_fraction, test_fraction, seed
        # Documents already assigned (restored from the journal on resume), for the non-empty rule.
        self.counts = {s: 0 for s in SPLITS} | dict(counts or {})

    def hashed_split(self, source: str, key: str) -> str:
        u = int.from_bytes(_digest("split", self.seed, source, key)[:8], "big") / 2**64
        if u < self.valid_fraction:
            return "valid"
        if u < self.valid_fraction + self.test_fraction:
            return "test"
        return "train"

    def assign(self, source: str, key: str) -> str:
        split = self.hashed_split(source, key)
        if split == "train":
            if self.valid_fraction > 0 and self.counts["valid"] == 0:
                split = "valid"
            elif self.test_fraction > 0 and self.counts["test"] == 0:
                split = "test"
        self.counts[split] += 1
        return split
