"""``longformer-prep-charlm``: enwik8 / text8 / any UTF-8 text -> character tokens -> fairseq binaries.

Conventions follow Transformer-XL's ``prep_enwik8.py`` / ``prep_text8.py``:

* ``enwik8``: every byte is a token written as its decimal value; the newline byte ends the line, so
  fairseq's ``</s>`` *is* the newline byte (one token per byte). First 90M / next 5M / last 5M bytes.
* ``text8``: characters, spaces written as ``_``. text8 is a single 100M-character line, which
  ``fairseq-preprocess`` would load into one Python list; we end a line at the first space after
  every ``--line-chars`` characters instead, so that ``</s>`` stands for that space (still one token
  per character). Same 90M / 5M / 5M split.
* ``text``: a UTF-8 file or a folder of them (sorted, recursive). Each character is a token written as
  its Unicode code point (unambiguous for ``_``, spaces, tabs, any script); newlines end lines and
  every document ends with an empty line, so documents stay apart. Splits are cut at line ends.

Everything streams in chunks: nothing holds the corpus as a Python list. The output directory is
built beside ``--output`` and renamed into place when complete, then ``prep.json`` records sizes and
the unigram entropy a character model must beat.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from .atomic import check_output_dir, staged_dir

CHUNK = 1 << 20  # characters / bytes read at a time
SPLITS = ("train", "valid", "test")
DEFAULT_HELD_OUT = {"enwik8": 5_000_000, "text8": 5_000_000, "text": 0.05}


class PrepError(Exception):
    """Bad input; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------------------------- sources


def open_zip_member(path: Path, member: str):
    """The named member of a standard enwik8.zip / text8.zip, opened for streaming."""
    if not path.is_file():
        raise PrepError(f"{path} does not exist; download {member}.zip yourself (e.g. from "
                        f"http://mattmahoney.net/dc/{member}.zip) and pass its path with --input")
    if not zipfile.is_zipfile(path):
        raise PrepError(f"{path} is not a zip archive; --dataset {member} expects the original {member}.zip")
    archive = zipfile.ZipFile(path)
    names = archive.namelist()
    if member not in names:
        raise PrepError(f"{path} has no member named {member!r} (it holds {names[:5]}); is this the right "
                        f"archive for --dataset {member}?")
    return archive, archive.getinfo(member).file_size


def text_documents(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise PrepError(f"{path} holds no files; --dataset text needs UTF-8 text files")
        return files
    raise PrepError(f"{path} does not exist; pass a UTF-8 text file or a folder of them with --input")


def read_text_chunks(files: list[Path]) -> Iterator[str]:
    """Each document's text in chunks, newline-normalised, ending with an empty line (document break)."""
    for file in files:
        try:
            with open(file, encoding="utf-8", newline=None) as handle:
                last = ""
                while chunk := handle.read(CHUNK):
                    last = chunk
                    yield chunk
        except UnicodeDecodeError as err:
            raise PrepError(f"{file} is not UTF-8 ({err}); convert it (e.g. iconv -t utf-8) or leave it out") from err
        yield "\n\n" if last and not last.endswith("\n") else "\n"


# --------------------------------------------------------------------------------------- tokenisation


class SplitWriter:
    """Writes tokens to train/valid/test files in turn, switching split at given token counts.

    A split only ends at a line end (``cut_at_line_end``) or exactly at its size; every split file
    ends with a newline, so fairseq counts a ``</s>`` for it. Token counts include line ends.
    """

    def __init__(self, out_dir: Path, sizes: dict[str, int], cut_at_line_end: bool):
        self.out_dir = out_dir
        self.sizes = sizes
        self.cut_at_line_end = cut_at_line_end
        self.split_index = 0
        self.written = 0  # tokens of the current split, line ends included
        self.counts = {s: Counter() for s in SPLITS}
        self.handle = open(out_dir / f"{SPLITS[0]}.txt", "w", encoding="ascii")
        self.at_line_start = True

    @property
    def split(self) -> str:
        return SPLITS[self.split_index]

    def room(self) -> int:
        if self.split_index == len(SPLITS) - 1:
            return sys.maxsize  # the last split takes the rest
        return self.sizes[self.split] - self.written

    def write(self, symbols: list, newline: object) -> None:
        """Write a sequence of symbols (``newline`` marks a line end) across split boundaries."""
        start = 0
        while start < len(symbols):
            room = self.room()
            piece = symbols[start:start + room] if room > 0 else []
            if room <= 0 and self.cut_at_line_end:
                # past the target size: finish the current line, then switch
                try:
                    end = symbols.index(newline, start) + 1
                except ValueError:
                    end = len(symbols)
                piece = symbols[start:end]
            self._emit(piece, newline)
            start += len(piece)
            if self.room() <= 0 and (not self.cut_at_line_end or self.at_line_start):
                self._next_split()

    def _emit(self, piece: list, newline: object) -> None:
        if not piece:
            return
        self.counts[self.split].update(piece)
        self.written += len(piece)
        self.at_line_start = piece[-1] == newline
        # fairseq splits lines on any whitespace, so spaces around a "\n" symbol are harmless; but a
        # space after the file's last "\n" would be one more (empty) line, so none follows a line end.
        self.handle.write(" ".join(piece) + ("" if self.at_line_start else " "))

    def _next_split(self) -> None:
        self._finish_file()
        self.split_index += 1
        self.written = 0
        self.handle = open(self.out_dir / f"{self.split}.txt", "w", encoding="ascii")
        self.at_line_start = True

    def _finish_file(self) -> None:
        if not self.at_line_start:
            self.handle.write("\n")  # fairseq adds a </s> for this last line: count it
            self.counts[self.split]["\n"] += 1
        self.handle.close()

    def close(self) -> dict[str, Counter]:
        self._finish_file()
        while self.split_index < len(SPLITS) - 1:  # a tiny corpus may leave later splits empty
            self.split_index += 1
            open(self.out_dir / f"{self.split}.txt", "w").close()
        return self.counts


def enwik8_symbols(chunk: bytes) -> list[str]:
    return [_BYTE_TOKENS[b] for b in chunk]


_BYTE_TOKENS = [("\n" if b == 10 else str(b)) for b in range(256)]


def text8_symbols(chunk: str, state: dict, line_chars: int) -> list[str]:
    """Characters with ``_`` for spaces; the first space after every ``line_chars`` chars ends the line."""
    symbols: list[str] = []
    pos = 0
    while pos < len(chunk):
        want = max(pos, pos + line_chars - state["since_break"])
        cut = chunk.find(" ", want)
        if cut < 0:
            piece = chunk[pos:]
            state["since_break"] += len(piece)
            symbols.extend(piece.replace(" ", "_"))
            break
        symbols.extend(chunk[pos:cut].replace(" ", "_"))
        symbols.append("\n")
        state["since_break"] = 0
        pos = cut + 1
    return symbols


def text_symbols(chunk: str) -> list[str]:
    return ["\n" if c == "\n" else str(ord(c)) for c in chunk]


_TEXT8_ALPHABET = set("abcdefghijklmnopqrstuvwxyz ")


# ---------------------------------------------------------------------------------------------- driver


def held_out_sizes(total: int, valid: float, test: float, dataset: str) -> dict[str, int]:
    def count(x: float) -> int:
        return int(round(x * total)) if x < 1 else int(x)

    sizes = {"valid": count(valid), "test": count(test)}
    sizes["train"] = total - sizes["valid"] - sizes["test"]
    if min(sizes.values()) <= 0:
        raise PrepError(
            f"the {dataset} input has {total:,} tokens, too few for valid={sizes['valid']:,} and "
            f"test={sizes['test']:,} with a non-empty train split; lower --valid-size/--test-size "
            f"(a value below 1 is a fraction of the corpus)"
        )
    return sizes


def tokenise(args, raw_dir: Path) -> tuple[dict[str, int], dict[str, Counter]]:
    dataset = args.dataset
    valid = args.valid_size if args.valid_size is not None else DEFAULT_HELD_OUT[dataset]
    test = args.test_size if args.test_size is not None else DEFAULT_HELD_OUT[dataset]

    if dataset in ("enwik8", "text8"):
        archive, total = open_zip_member(Path(args.input), dataset)
        if total == 0:
            raise PrepError(f"{args.input}: the {dataset} member is empty")
        sizes = held_out_sizes(total, valid, test, dataset)
        # enwik8/text8 splits are exact offsets (Transformer-XL); token counts equal characters.
        writer = SplitWriter(raw_dir, sizes, cut_at_line_end=False)
        state = {"since_break": 0}
        with archive.open(dataset) as stream, tqdm(total=total, unit="B", unit_scale=True, desc=dataset) as bar:
            first = True
            while chunk := stream.read(CHUNK):
                if dataset == "enwik8":
                    symbols = enwik8_symbols(chunk)
                else:
                    text = chunk.decode("ascii", errors="replace")
                    if first and not set(text) <= _TEXT8_ALPHABET:
                        raise PrepError(f"{args.input}: the text8 member holds characters other than a-z and "
                                        f"space; is this the original text8.zip?")
                    symbols = text8_symbols(text, state, args.line_chars)
                first = False
                writer.write(symbols, "\n")
                bar.update(len(chunk))
        return sizes, writer.close()

    files = text_documents(Path(args.input))
    total = 0
    for chunk in tqdm(read_text_chunks(files), desc="counting characters", unit=" chunks"):
        total += len(chunk)
    if total <= len(files):  # only the document breaks we add
        raise PrepError(f"{args.input} holds no text; --dataset text needs non-empty UTF-8 files")
    sizes = held_out_sizes(total, valid, test, dataset)
    writer = SplitWriter(raw_dir, sizes, cut_at_line_end=True)
    with tqdm(total=total, unit="char", unit_scale=True, desc="text") as bar:
        for chunk in read_text_chunks(files):
            writer.write(text_symbols(chunk), "\n")
            bar.update(len(chunk))
    return sizes, writer.close()


def unigram_figures(counts: dict[str, Counter]) -> dict[str, float]:
    """Entropy of train's character distribution, and test's cross-entropy under it (add-one), in bits.

    Line ends are symbols here too, as ``</s>`` is in the model's BPC.
    """
    train = counts["train"]
    n = sum(train.values())
    entropy = -sum(c / n * math.log2(c / n) for c in train.values())
    vocab = set(train) | set(counts["test"])
    denom = n + len(vocab)
    test_n = sum(counts["test"].values())
    cross = (
        -sum(c * math.log2((train.get(s, 0) + 1) / denom) for s, c in counts["test"].items()) / test_n
        if test_n else float("nan")
    )
    return {"train_unigram_entropy_bits": entropy, "test_unigram_cross_entropy_bits": cross}


def binarise(raw_dir: Path, dest: Path, workers: int) -> None:
    cmd = [
        sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--dataset-impl", "mmap",
        "--trainpref", str(raw_dir / "train.txt"), "--validpref", str(raw_dir / "valid.txt"),
        "--testpref", str(raw_dir / "test.txt"), "--destdir", str(dest), "--workers", str(workers),
    ]
    print("binarising with fairseq-preprocess (its log: preprocess.log in --output)", flush=True)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        tail = "\n".join(result.stdout.splitlines()[-30:])
        raise PrepError(f"fairseq-preprocess failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")


def prepare(args) -> dict:
    try:
        check_output_dir(args.output, args.overwrite)
    except ValueError as err:
        raise PrepError(str(err)) from None
    with staged_dir(args.output, overwrite=True) as work:
        raw_dir = work / "raw"
        raw_dir.mkdir()
        sizes, counts = tokenise(args, raw_dir)
        binarise(raw_dir, work, args.workers)
        stats = {
            "dataset": args.dataset,
            "input": str(Path(args.input).resolve()),
            "tokens": {s: sum(counts[s].values()) for s in SPLITS},
            "line_ends": {s: counts[s]["\n"] for s in SPLITS},
            "distinct_symbols_train": len(counts["train"]),
            **unigram_figures(counts),
        }
        (work / "prep.json").write_text(json.dumps(stats, indent=2) + "\n")
        if not args.keep_raw:
            shutil.rmtree(raw_dir)
    return stats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longformer-prep-charlm",
        description="Character-level LM data (enwik8, text8, or any UTF-8 text) -> fairseq binaries in --output.",
    )
    parser.add_argument("--dataset", required=True, choices=["enwik8", "text8", "text"])
    parser.add_argument("--input", required=True, help="enwik8.zip, text8.zip, or a UTF-8 file / folder for 'text'")
    parser.add_argument("--output", required=True, help="directory for dict.txt, {train,valid,test}.{bin,idx}, prep.json")
    parser.add_argument("--valid-size", type=float, default=None,
                        help="validation tokens (a value < 1 = fraction); default 5M for enwik8/text8, 0.05 for text")
    parser.add_argument("--test-size", type=float, default=None, help="test tokens, as --valid-size")
    parser.add_argument("--line-chars", type=int, default=10_000,
                        help="text8 only: end a line at the first space after this many characters")
    parser.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    parser.add_argument("--keep-raw", action="store_true", help="keep the tokenised text in OUTPUT/raw/")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def main(argv: Iterable[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.line_chars < 1:
        raise SystemExit("error: --line-chars must be >= 1")
    try:
        stats = prepare(args)
    except PrepError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
