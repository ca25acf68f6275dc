"""Writing fairseq's binary datasets (``PREFIX.bin``/``PREFIX.idx``, mmap format) and dictionaries."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from fairseq.data import Dictionary, indexed_dataset


class IndexedWriter:
    """``add(ids)`` one item at a time; ``with IndexedWriter(prefix, len(dictionary)) as w: ...``.

    The files are what ``fairseq-preprocess --dataset-impl mmap`` writes, so every fairseq task reads them
    (ids are stored as uint16 below 65,500 symbols, else int32, as fairseq chooses).
    """

    def __init__(self, prefix: str | Path, vocab_size: int):
        self.prefix = str(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.builder = indexed_dataset.make_builder(self.prefix + ".bin", "mmap", vocab_size=vocab_size)
        self.items = 0

    def add(self, ids: Sequence[int]) -> None:
        self.builder.add_item(torch.as_tensor(ids, dtype=torch.int64))
        self.items += 1

    def __enter__(self) -> "IndexedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.builder.finalize(self.prefix + ".idx")


def write_dictionary(dictionary: Dictionary, path: str | Path) -> None:
    """``dict.txt`` in fairseq's format (the specials are implied, as fairseq writes them)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dictionary.save(str(path))
