"""Readers for the raw forms of the four sources. Each yields ``Document`` and ``Problem`` items in a fixed order.

The order (sorted file names, then file order) is what makes sampling, sharding and resuming reproducible.
Files are read line by line in binary and decoded per line, so a bad byte is reported with its line and a
corpus of many GB never sits in memory; ``.gz`` and ``.bz2`` files are read transparently.

Forms understood:

* books:     a folder (searched recursively) of ``.txt`` files, one book each;
* wikipedia: WikiExtractor output, a folder or a file, in ``<doc ...>...</doc>`` form or ``--json`` lines
             (the JSON form's ``title`` becomes the first paragraph, as the ``<doc>`` form already has it);
* realnews:  ``realnews.jsonl`` (or a folder of ``.jsonl`` files) with a ``text`` field per line;
* stories:   a folder of ``.txt`` files (one story each) or a file with one story per line.
"""
from __future__ import annotations

import bz2
import gzip
import json
import os
import re
from pathlib import Path
from typing import Iterator, Union

from .documents import Document, Problem

Item = Union[Document, Problem]

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}
_DOC_OPEN = re.compile(r"<doc(\s[^>]*)?>\s*$")
_ATTR = re.compile(r'(\w+)="([^"]*)"')


def _open_binary(path: Path):
    opener = _COMPRESSED.get(path.suffix, open)
    return opener(path, "rb")


def _plain_suffix(path: Path) -> str:
    """``book.txt.gz`` -> ``.txt``: the suffix that says what the file holds."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _list_files(root: Path) -> list[Path]:
    """All regular files under ``root`` (or ``root`` itself), sorted, hidden files and folders excluded."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ValueError(f"input path {root} does not exist (give an existing file or folder)")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(found)


def input_files(root: Path) -> list[Path]:
    """The files a reader will look at, for the run's fingerprint (changed inputs -> fresh build)."""
    return _list_files(root)


def _rel(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def _lines(path: Path) -> Iterator[tuple[int, Union[str, UnicodeDecodeError]]]:
    """(1-based line number, decoded line without its end) or the decode error of that line."""
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                yield lineno, err


def paragraphs_of(text: str) -> list[str]:
    """A text's non-empty lines, stripped: the paragraphs that become output lines."""
    return [p for p in (line.strip() for line in text.split("\n")) if p]


def _text_file_document(source: str, path: Path, root: Path, max_doc_bytes: int) -> Item | None:
    """A whole ``.txt`` file as one document, or a Problem (bad UTF-8 line, too large); None if empty."""
    rel = _rel(path, root)
    paragraphs, nbytes = [], 0
    for lineno, line in _lines(path):
        if isinstance(line, UnicodeDecodeError):
            return Problem(source, str(path), lineno, "malformed", f"invalid UTF-8 ({line.reason}); document skipped")
        line = line.strip()
        if line:
            nbytes += len(line.encode("utf-8"))
            if nbytes > max_doc_bytes:
                return Problem(
                    source, str(path), lineno, "too_large",
                    f"document larger than {max_doc_bytes / 2**20:g} MiB (raise --max-doc-mb); document skipped",
                )
            paragraphs.append(line)
    return Document(source, rel, paragraphs, nbytes) if paragraphs else None


def read_text_folder(source: str, root: Path, max_doc_bytes: int) -> Iterator[Item]:
    """One document per ``.txt`` file; other files are reported as unknown input."""
    for path in _list_files(root):
        if _plain_suffix(path) != ".txt":
            yield Problem(source, str(path), 0, "unknown_file", "not a .txt file; skipped")
            continue
        item = _text_file_document(source, path, root, max_doc_bytes)
        if item is not None:
            yield item


def read_lines_as_documents(source: str, root: Path, max_doc_bytes: int) -> Iterator[Item]:
    """One document per non-empty line (the one-story-per-line form)."""
    for path in _list_files(root):
        rel = _rel(path, root)
        for lineno, line in _lines(path):
            if isinstance(line, UnicodeDecodeError):
                yield Problem(source, str(path), lineno, "malformed", f"invalid UTF-8 ({line.reason}); line skipped")
                continue
            text = line.strip()
            if not text:
                continue
            if len(text) > max_doc_bytes:
                yield Problem(source, str(path), lineno, "too_large", "document larger than --max-doc-mb; skipped")
                continue
            yield Document(source, f"{rel}:{lineno}", [text])


def _json_document(source, path, rel, lineno, line, max_doc_bytes, title_first) -> Item | None:
    """A JSON line with a string ``text`` field -> Document; anything else -> Problem."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return Problem(source, str(path), lineno, "malformed", f"invalid JSON ({err.msg} at column {err.colno})")
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        return Problem(source, str(path), lineno, "malformed", "JSON record has no string 'text' field")
    text = record["text"]
    if title_first and isinstance(record.get("title"), str) and record["title"].strip():
        text = record["title"] + "\n" + text
    if len(text) > max_doc_bytes:
        return Problem(source, str(path), lineno, "too_large", "document larger than --max-doc-mb; skipped")
    paragraphs = paragraphs_of(text)
    return Document(source, f"{rel}:{lineno}", paragraphs) if paragraphs else None


def read_json_lines(source: str, root: Path, max_doc_bytes: int, title_first: bool = False) -> Iterator[Item]:
    """One document per JSON line (Realnews); in a folder, only ``.jsonl`` / ``.json`` files are read."""
    for path in _list_files(root):
        if root.is_dir() and _plain_suffix(path) not in (".jsonl", ".json"):
            yield Problem(source, str(path), 0, "unknown_file", "not a .jsonl file; skipped")
            continue
        yield from _json_lines_file(source, path, root, max_doc_bytes, title_first)


def _json_lines_file(source, path, root, max_doc_bytes, title_first) -> Iterator[Item]:
    rel = _rel(path, root)
    for lineno, line in _lines(path):
        if isinstance(line, UnicodeDecodeError):
            yield Problem(source, str(path), lineno, "malformed", f"invalid UTF-8 ({line.reason}); line skipped")
            continue
        if not line.strip():
            continue
        item = _json_document(source, path, rel, lineno, line, max_doc_bytes, title_first)
        if item is not None:
            yield item


def _wikiextractor_doc_file(source: str, path: Path, root: Path, max_doc_bytes: int) -> Iterator[Item]:
    """Parse ``<doc id=.. title=..>`` ... ``</doc>`` blocks; truncated or stray text is reported."""
    rel = _rel(path, root)
    start, paragraphs, nbytes, broken = 0, [], 0, None  # start > 0 while inside a <doc>
    stray_reported = False
    for lineno, line in _lines(path):
        if isinstance(line, UnicodeDecodeError):
            if start:
                broken = broken or Problem(source, str(path), lineno, "malformed",
                                           f"invalid UTF-8 ({line.reason}); document skipped")
            else:
                yield Problem(source, str(path), lineno, "malformed", f"invalid UTF-8 ({line.reason}); line skipped")
            continue
        stripped = line.strip()
        if _DOC_OPEN.match(stripped):
            if start:
                yield Problem(source, str(path), start, "malformed",
                              f"<doc> opened here has no </doc> before line {lineno}; document skipped")
            start, paragraphs, nbytes, broken, stray_reported = lineno, [], 0, None, False
        elif stripped == "</doc>":
            if not start:
                yield Problem(source, str(path), lineno, "malformed", "</doc> without an opening <doc>; ignored")
            elif broken is not None:
                yield broken
            elif paragraphs:
                yield Document(source, f"{rel}:{start}", paragraphs, nbytes)
            start = 0
        elif start:
            if stripped and broken is None:
                nbytes += len(stripped.encode("utf-8"))
                if nbytes > max_doc_bytes:
                    broken = Problem(source, str(path), start, "too_large",
                                     "document larger than --max-doc-mb; skipped")
                paragraphs.append(stripped)
        elif stripped and not stray_reported:
            # One report per run of stray lines, not one per line.
            yield Problem(source, str(path), lineno, "malformed", "text outside <doc>...</doc>; ignored")
            stray_reported = True
    if start:
        yield Problem(source, str(path), start, "malformed", "<doc> opened here is not closed at end of file; "
                                                             "document skipped (truncated file?)")


def _first_content_byte(path: Path) -> bytes:
    with _open_binary(path) as f:
        for raw in f:
            if raw.strip():
                return raw.lstrip()[:1]
    return b""


def read_wikipedia(root: Path, max_doc_bytes: int) -> Iterator[Item]:
    """WikiExtractor output; the form (``<doc>`` or JSON lines) is detected per file."""
    for path in _list_files(root):
        first = _first_content_byte(path)
        if first == b"<":
            yield from _wikiextractor_doc_file("wikipedia", path, root, max_doc_bytes)
        elif first == b"{":
            yield from _json_lines_file("wikipedia", path, root, max_doc_bytes, title_first=True)
        elif first:
            yield Problem("wikipedia", str(path), 0, "unknown_file",
                          "neither WikiExtractor <doc> form nor JSON lines; skipped")


def read_books(root: Path, max_doc_bytes: int) -> Iterator[Item]:
    return read_text_folder("books", root, max_doc_bytes)


def read_realnews(root: Path, max_doc_bytes: int) -> Iterator[Item]:
    return read_json_lines("realnews", root, max_doc_bytes)


def read_stories(root: Path, max_doc_bytes: int) -> Iterator[Item]:
    """A folder of ``.txt`` stories, or one file with a story per line."""
    if root.is_dir():
        return read_text_folder("stories", root, max_doc_bytes)
    return read_lines_as_documents("stories", root, max_doc_bytes)


READERS = {
    "books": read_books,
    "wikipedia": read_wikipedia,
    "realnews": read_realnews,
    "stories": read_stories,
}
