"""The one atomic-write helper: outputs appear whole or not at all.

Files are written beside their destination under a temporary name, flushed to disk, then renamed over
it; folders are built in a staging folder beside the destination and renamed into place in one step.
Readers (and a rerun after a crash) see the old complete output or the new complete one, never a mixture.
Every tool of the project writes through these functions (``fairseq_longformer`` imports them too).
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; when the block ends without error, move it onto ``dest``.

    The temporary name keeps ``dest``'s suffix, so writers that pick a format by extension (matplotlib's
    ``savefig``) still work. On error the temporary file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.tmp-{os.getpid()}{dest.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(dest.parent)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_file(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: str | os.PathLike, obj, indent: int = 1) -> None:
    write_text_atomic(dest, json.dumps(obj, indent=indent) + "\n")


def publish_dir(staging: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a finished ``staging`` folder to ``dest`` with one rename.

    An existing ``dest`` is first renamed aside and deleted after the swap, so readers see the old
    complete folder or the new complete one, never a mixture.
    """
    staging, dest = Path(staging), Path(dest)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(staging, dest)
    _fsync(dest.parent)
    if old is not None:
        shutil.rmtree(old)


def check_output_dir(dest: str | os.PathLike, overwrite: bool, flag: str = "--output") -> None:
    """Refuse to replace a non-empty ``dest`` unless ``overwrite``: the one wording every tool uses."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{flag} {dest} exists and is not a directory; choose another {flag}")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise ValueError(f"{flag} {dest} already exists and is not empty; pass --overwrite to replace it")


@contextmanager
def staged_dir(dest: str | os.PathLike, overwrite: bool = False, flag: str = "--output") -> Iterator[Path]:
    """Yield an empty staging folder beside ``dest``; publish it as ``dest`` when the block succeeds.

    A non-empty ``dest`` is refused unless ``overwrite`` (checked before any work). On any error, or an
    interrupt, the staging folder is deleted and ``dest`` is untouched: nothing half-written is left.
    """
    dest = Path(dest)
    check_output_dir(dest, overwrite, flag)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        publish_dir(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
