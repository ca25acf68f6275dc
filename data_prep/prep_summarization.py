"""``longformer-prep-summarization``: JSON lines of documents and summaries -> fairseq binaries for the
``translation`` task (LED finetuning).

Each input line is a JSON object with a document and its summary (fields ``document`` and ``summary``
unless ``--source-field``/``--target-field`` say otherwise). Both sides are tokenized the way the model
was pretrained: the model directory's GPT-2 BPE and ``dict.txt`` (``--model-dir``), or whitespace tokens
(``--tokenizer whitespace``) looked up in the model's ``dict.txt`` (with ``--model-dir``) or in a
dictionary built from the training split (without). Both become
``<s> tokens </s>``, BART's pretraining layout (and what its hub's ``encode``/``sample`` use); documents
are cut to ``--max-source-positions`` tokens and summaries to ``--max-target-positions``, and every cut
is counted. The output folder is what ``fairseq-train DIR --task translation`` reads:

    {train,valid,test}.source-target.{source,target}.{bin,idx}, dict.source.txt, dict.target.txt

plus ``dict.txt`` and the tokenizer files (for ``longformer-eval-summarization`` to turn ids back into
text) and ``prep.json`` (token-length statistics of both sides per split). Input is streamed, tokenized
by ``--workers`` processes in order, and the folder appears only when complete.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .atomic import check_output_dir, staged_dir
from .binarized import IndexedWriter, write_dictionary
from .flags import run_tool
from .jsonl import InputError, read_jsonl, text_field
from .lengths import length_stats, stats_line
from .parallel import ordered_map
from .text_tokenizer import GPT2_FILES, SPM_FILE, TokenizerSpec, build_whitespace_dictionary

logger = logging.getLogger("data_prep.prep_summarization")

SOURCE_LANG, TARGET_LANG = "source", "target"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PairOptions:
    source_field: str = "document"
    target_field: str = "summary"
    max_source_positions: int = 16384
    max_target_positions: int = 1024


def split_prefix(directory: Path, split: str, lang: str) -> Path:
    """fairseq's translation-task file name (without ``.bin``/``.idx``)."""
    return directory / f"{split}.{SOURCE_LANG}-{TARGET_LANG}.{lang}"


# ----------------------------------------------------------------------------- per record, in workers

_worker: dict = {}


def _init_worker(spec: TokenizerSpec, options: PairOptions) -> None:
    tokenizer = spec.load()
    _worker.update(tokenizer=tokenizer, options=options, bos=tokenizer.dictionary.bos(),
                   eos=tokenizer.dictionary.eos())


def encode_pair(item: tuple[str, dict]) -> tuple[list[int], list[int], int, int]:
    """``(source_ids, target_ids, full_source_length, full_target_length)`` of one record (with ``<s>``/``</s>``)."""
    where, record = item
    options: PairOptions = _worker["options"]
    document = text_field(record, options.source_field, where, "--source-field")
    summary = text_field(record, options.target_field, where, "--target-field")
    source = _framed(_worker["tokenizer"].encode(document)[0], options.max_source_positions)
    target = _framed(_worker["tokenizer"].encode(summary)[0], options.max_target_positions)
    return source[0], target[0], source[1], target[1]


def _framed(ids: list[int], limit: int) -> tuple[list[int], int]:
    """``<s> ids </s>`` cut to ``limit`` tokens (the ``</s>`` kept), and the uncut length."""
    return [_worker["bos"], *ids[: limit - 2], _worker["eos"]], len(ids) + 2


# ---------------------------------------------------------------------------------------- driver


def write_split(path: str, split: str, out: Path, spec: TokenizerSpec, options: PairOptions, vocab_size: int,
                workers: int) -> dict:
    """Tokenize one JSON-lines file into the split's source/target binaries; returns its statistics."""
    source_lengths, target_lengths = [], []
    with IndexedWriter(split_prefix(out, split, SOURCE_LANG), vocab_size) as sources, \
            IndexedWriter(split_prefix(out, split, TARGET_LANG), vocab_size) as targets:
        for source, target, source_length, target_length in ordered_map(
                encode_pair, read_jsonl(path), workers, _init_worker, (spec, options), desc=split, unit="doc"):
            sources.add(source)
            targets.add(target)
            source_lengths.append(source_length)
            target_lengths.append(target_length)
    if not source_lengths:
        raise InputError(f"{path} holds no records; each line must be a JSON object with "
                         f"{options.source_field!r} and {options.target_field!r}")
    stats = {"source": length_stats(source_lengths, options.max_source_positions),
             "target": length_stats(target_lengths, options.max_target_positions)}
    for side, flag in (("source", "--max-source-positions"), ("target", "--max-target-positions")):
        print(stats_line(f"{split} {side}", stats[side]), flush=True)
        if stats[side]["over_limit"]:
            logger.info("%s: %d of %d %ss cut to %d tokens (%s)", split, stats[side]["over_limit"],
                        stats[side]["count"], "document" if side == "source" else "summary", stats[side]["limit"], flag)
    return stats


def _tokenizer_spec(args, work: Path) -> TokenizerSpec:
    """The tokenizer, with its dictionary and files written into the output folder."""
    if args.model_dir and args.tokenizer == "whitespace":
        spec = TokenizerSpec("whitespace", _model_dictionary(args.model_dir))
    elif args.model_dir:
        spec = TokenizerSpec.from_model_dir(args.model_dir)
        for name in (*GPT2_FILES, SPM_FILE):
            if (Path(args.model_dir) / name).is_file():
                shutil.copyfile(Path(args.model_dir) / name, work / name)
    else:
        write_dictionary(build_whitespace_dictionary(_train_texts(args)), work / "dict.txt")
        spec = TokenizerSpec("whitespace", work / "dict.txt")
    if spec.dict_txt != work / "dict.txt":
        write_dictionary(spec.load().dictionary, work / "dict.txt")
    for lang in (SOURCE_LANG, TARGET_LANG):  # one dictionary for both sides (BART shares its embeddings)
        shutil.copyfile(work / "dict.txt", work / f"dict.{lang}.txt")
    return spec


def _model_dictionary(model_dir: str) -> Path:
    path = Path(model_dir) / "dict.txt"
    if not path.is_file():
        raise ValueError(f"--model-dir {model_dir} has no dict.txt; give the pretrained model's directory "
                         "(what longformer-convert-bart writes)")
    return path


def _train_texts(args) -> Iterator[str]:
    for where, record in read_jsonl(args.train):
        yield text_field(record, args.source_field, where, "--source-field")
        yield text_field(record, args.target_field, where, "--target-field")


def prepare(args) -> dict:
    options = PairOptions(args.source_field, args.target_field, args.max_source_positions, args.max_target_positions)
    inputs = {"train": args.train, "valid": args.valid, "test": args.test}
    with staged_dir(args.output, overwrite=args.overwrite) as work:
        spec = _tokenizer_spec(args, work)
        vocab_size = len(spec.load().dictionary)
        splits = {split: write_split(path, split, work, spec, options, vocab_size, args.workers)
                  for split, path in inputs.items() if path}
        stats = {"tokenizer": spec.kind, "vocab_size": vocab_size,
                 "source_field": options.source_field, "target_field": options.target_field,
                 "max_source_positions": options.max_source_positions,
                 "max_target_positions": options.max_target_positions,
                 "layout": "<s> tokens </s> on both sides", "splits": splits}
        (work / "prep.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-prep-summarization", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="JSON lines: one {document, summary} object per line")
    parser.add_argument("--valid", required=True, help="validation split, same format")
    parser.add_argument("--test", help="test split, same format (optional)")
    parser.add_argument("--output", required=True, help="folder for the fairseq binaries (created whole)")
    parser.add_argument("--model-dir", help="the LED/BART directory whose dict.txt and GPT-2 BPE (encoder.json, vocab.bpe) "
                                             "tokenize both sides (what longformer-convert-bart writes)")
    parser.add_argument("--tokenizer", choices=["whitespace"],
                        help="already tokenized text: whitespace tokens, looked up in --model-dir's dict.txt, or "
                             "without --model-dir in a dictionary built from the training split")
    parser.add_argument("--source-field", default="document", help="JSON field of the document (default: document)")
    parser.add_argument("--target-field", default="summary", help="JSON field of the summary (default: summary)")
    parser.add_argument("--max-source-positions", type=int, default=16384,
                        help="documents are cut to this many tokens, <s> and </s> included (default 16384: LED)")
    parser.add_argument("--max-target-positions", type=int, default=1024,
                        help="summaries are cut to this many tokens (default 1024: BART's decoder)")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.model_dir or args.tokenizer):
        parser.error("give --model-dir DIR (the model's tokenizer and dictionary) or --tokenizer whitespace")
    for flag, value in (("--max-source-positions", args.max_source_positions),
                        ("--max-target-positions", args.max_target_positions)):
        if value < 3:
            raise SystemExit(f"longformer-prep-summarization: error: {flag} must be >= 3 (<s>, a token, </s>), got {value}")

    def check_and_prepare() -> dict:
        check_output_dir(args.output, args.overwrite)
        return prepare(args)

    return run_tool("longformer-prep-summarization", check_and_prepare, (InputError, ValueError))


if __name__ == "__main__":
    main(sys.argv[1:])
