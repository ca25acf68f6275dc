"""Outputs appear whole or not at all: write beside the target, fsync, then rename over it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def write_text_atomic(dest: Path, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: Path, obj) -> None:
    write_text_atomic(dest, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def publish_dir(staging: Path, dest: Path) -> None:
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
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old)
