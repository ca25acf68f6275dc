"""The resumable state of a build: append-only output files plus a journal of how much of them is final.

Tokenized documents are appended to ``<work>/<split>.ids`` (and problems to ``problems.tsv``). After each
shard the files are flushed and fsynced, then ``journal.json`` is replaced atomically with the new
committed lengths, the shard count per source and the merged statistics. On restart every file is cut
back to its committed length, so half-written shards never reach the output, and work resumes with the
next shard.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_json_atomic
from .selection import SPLITS
from .stats import new_stats

JOURNAL = "journal.json"
PROBLEMS = "problems.tsv"


def split_file(work: Path, split: str) -> Path:
    return work / f"{split}.ids"


class Journal:
    """In-memory view of ``journal.json``; ``commit()`` makes the appended output durable and final."""

    def __init__(self, work: Path, data: dict):
        self.work, self.data = work, data
        self._files = {}

    @classmethod
    def fresh(cls, work: Path, fingerprint: str, sources) -> "Journal":
        data = {
            "fingerprint": fingerprint,
            "committed": {name: 0 for name in (*SPLITS, "problems")},
            "sources": {s: {"shards_done": 0, "finished": False} for s in sources},
            "stats": new_stats(sources),
            "seconds": {"tokenize": 0.0},
            "tokenizer": None,
        }
        journal = cls(work, data)
        journal.save()
        return journal

    @classmethod
    def load(cls, work: Path, fingerprint: str) -> "Journal | None":
        """The journal of an interrupted build with the same fingerprint, or None (then build afresh)."""
        path = work / JOURNAL
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("fingerprint") != fingerprint:
            return None
        for name, length in data["committed"].items():
            target = work / PROBLEMS if name == "problems" else split_file(work, name)
            if (target.stat().st_size if target.exists() else 0) < length:
                return None  # a committed file lost bytes: nothing can be trusted, rebuild
        return cls(work, data)

    def save(self) -> None:
        write_json_atomic(self.work / JOURNAL, self.data)

    def open_outputs(self) -> dict:
        """Open the output files for appending, first cutting off anything past the committed length."""
        for name, length in self.data["committed"].items():
            path = self.work / PROBLEMS if name == "problems" else split_file(self.work, name)
            f = open(path, "ab")
            f.truncate(length)
            f.seek(length)
            self._files[name] = f
        return self._files

    def commit(self) -> None:
        for name, f in self._files.items():
            f.flush()
            os.fsync(f.fileno())
            self.data["committed"][name] = f.tell()
        self.save()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    @property
    def stats(self) -> dict:
        return self.data["stats"]

    def source_state(self, source: str) -> dict:
        return self.data["sources"][source]
