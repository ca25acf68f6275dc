"""Ordered work over a stream of items, in this process or in a pool of workers, with a progress bar."""
from __future__ import annotations

import multiprocessing
from typing import Callable, Iterable, Iterator

from tqdm import tqdm


def ordered_map(fn: Callable, items: Iterable, workers: int = 1, initializer: Callable | None = None,
                initargs: tuple = (), desc: str = "", unit: str = "it", total: int | None = None,
                progress: bool = True, chunksize: int = 16) -> Iterator:
    """``fn(item)`` for every item, results in input order; the input is consumed lazily (streaming).

    ``initializer(*initargs)`` runs once per worker (e.g. to load a tokenizer); with ``workers == 1`` it
    runs here and nothing is forked. Workers are forked where the platform allows it (they start at once
    and share the parent's loaded modules).
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not progress, mininterval=1.0)
    try:
        if workers == 1:
            if initializer is not None:
                initializer(*initargs)
            for result in map(fn, items):
                bar.update()
                yield result
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
            for result in pool.imap(fn, items, chunksize=chunksize):
                bar.update()
                yield result
    finally:
        bar.close()
