"""The repository stands on its own: no file in it points a reader at a document outside it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("fairseq_longformer", "triton_kernels", "data_prep", "configs", "benchmarks", "docs", "tests", ".ci")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ""}
# spelled in pieces so that this file does not match itself
OUTSIDE = ("DESIGN" + ".md", "../" + "shared", "NOTES" + ".md")


def _text_files():
    yield ROOT / "README.md"
    yield ROOT / "pyproject.toml"
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                yield path


def test_no_file_refers_to_a_document_outside_the_repository():
    found = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in OUTSIDE:
            if name in text:
                line = text[: text.index(name)].count("\n") + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)
