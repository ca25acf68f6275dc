"""What readers yield: documents, and problems found in the raw input (reported, counted, never silent)."""
from __future__ import annotations

from dataclasses import dataclass, field

# The paper's four sources, in the order the corpus is built (and its statistics listed, as in Table 5).
SOURCE_ORDER = ("books", "wikipedia", "realnews", "stories")


@dataclass
class Document:
    """One document: its source, a key that is stable across runs (relative path and line), its paragraphs.

    Paragraphs are the document's non-empty lines, stripped; each becomes one line of token ids in the
    output, as in RoBERTa's own preprocessing.
    """

    source: str
    key: str
    paragraphs: list[str]
    nbytes: int = field(default=0)  # UTF-8 size of the paragraphs, for shard budgets and the length bound

    def __post_init__(self):
        if not self.nbytes:
            self.nbytes = sum(len(p.encode("utf-8")) for p in self.paragraphs)


@dataclass(frozen=True)
class Problem:
    """Input that could not be used: an unknown file, a malformed record, an oversized document.

    ``kind`` is one of ``PROBLEM_KINDS``; ``line`` is 1-based (0 when the whole file is concerned).
    """

    source: str
    path: str
    line: int
    kind: str
    message: str

    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def describe(self) -> str:
        return f"[{self.source}] {self.where()}: {self.message}"


PROBLEM_KINDS = ("unknown_file", "malformed", "too_large")


class InputError(ValueError):
    """Raised for a problem in the raw input when the run was asked to refuse (``--on-error fail``)."""

    def __init__(self, problem: Problem):
        super().__init__(
            f"{problem.describe()}\n  (fix or remove this input, or rerun with --on-error skip to skip and count it)"
        )
        self.problem = problem
