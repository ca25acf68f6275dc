"""``longformer-prep-classification``: JSON lines -> the fairseq binaries ``sentence_prediction`` reads.

Each input line is one JSON object, ``{"text": ..., "label": ...}`` (plus a second text, e.g. a question,
with ``--pair-field``). The texts are tokenized exactly as the pretrained model was (its ``dict.txt`` and
GPT-2 BPE or sentencepiece files from ``--model-dir``; ``--tokenizer whitespace`` for text that is already
tokenized, with a dictionary built from the training split) and written as::

    OUTPUT/input0/{dict.txt,train,valid,test}.{bin,idx}   first text: ids + </s>  (the task adds <s>)
    OUTPUT/input1/...                                      second text, with --pair-field
    OUTPUT/label/{dict.txt,train,valid,test}.{bin,idx}    class symbol + </s>
    OUTPUT/prep.json                                       classes, tokenizer, per-split statistics

``input0/dict.txt`` is the model's own dictionary, copied byte for byte, so the ids are the ids the model
was pretrained on. Classes are the training split's labels, sorted (numerically when every label is an
integer); class ``k`` is the ``k``-th symbol of ``label/dict.txt``, which is how fairseq's
``sentence_prediction`` turns label items into targets. A valid/test label the training split lacks is
refused; a test file may carry no labels at all (then there is no ``label/test``).

Everything streams (two passes over the training file: classes, then ids), tokenization runs in
``--workers`` processes, the output folder appears only when complete, and each split prints one stats
line (documents, length percentiles, how many exceed ``--max-positions``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Iterator

from fairseq.data import Dictionary

from .atomic import check_output_dir, staged_dir, write_json_atomic
from .binarized import IndexedWriter, write_dictionary
from .jsonl import InputError, read_jsonl, text_field
from .lengths import length_stats, stats_line
from .parallel import ordered_map
from .text_tokenizer import TokenizerSpec, build_whitespace_dictionary

PROG = "longformer-prep-classification"
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # the task's label dictionary has these already
LABELS = Dictionary()  # the specials every fairseq dictionary starts with
EOS = LABELS.eos()  # </s> ends every item, as fairseq-preprocess writes them


# ------------------------------------------------------------------------------------------------ records


def record_label(record: dict, name: str, where: str) -> str:
    """The record's class as a label-dictionary symbol (JSON strings and integers)."""
    if name not in record:
        fields = ", ".join(sorted(map(repr, record))) or "none"
        raise InputError(f"{where}: no field {name!r} (fields: {fields}); name the label field with --label-field")
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: label {value!r} must be a string or an integer, got {type(value).__name__}")
    label = str(value)
    if not label.strip() or label != label.strip() or "\n" in label or "\r" in label:
        raise InputError(f"{where}: label {label!r} is empty, has leading/trailing white space or a line break; "
                         "fix the label")
    if label in SPECIAL_SYMBOLS:
        raise InputError(f"{where}: label {label!r} is one of fairseq's special symbols {SPECIAL_SYMBOLS}; "
                         "rename the class")
    return label


def records(path: str, args, labelled: bool = True) -> Iterator[tuple[str, list[str], str | None]]:
    """``(where, texts, label)`` per line; an unlabelled file (``labelled=False``) must have no label anywhere."""
    for where, record in read_jsonl(path):
        texts = [text_field(record, args.text_field, where, "--text-field")]
        if args.pair_field:
            texts.append(text_field(record, args.pair_field, where, "--pair-field"))
        if labelled:
            label = record_label(record, args.label_field, where)
        elif args.label_field in record:
            raise InputError(f"{where}: has a {args.label_field!r} field but the first record of {path} has "
                             "none; label every test record or none")
        else:
            label = None
        yield where, texts, label


def sorted_labels(labels: Iterable[str]) -> list[str]:
    """Numeric order when every label is an integer (``2`` before ``10``), else string order."""
    labels = list(labels)
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def label_dictionary(counts: Counter) -> Dictionary:
    """Classes in :func:`sorted_labels` order after the specials: class k is symbol ``nspecial + k``."""
    dictionary = Dictionary()
    for name in sorted_labels(counts):
        dictionary.add_symbol(name, n=counts[name])
    return dictionary


def check_label_dictionary(path: Path, classes: list[str]) -> None:
    """Read ``label/dict.txt`` back as ``sentence_prediction`` does and check every class's target."""
    from fairseq.tasks.sentence_prediction import SentencePredictionTask

    loaded = SentencePredictionTask.load_dictionary(str(path))
    read = [loaded.index(name) - loaded.nspecial for name in classes]
    if read != list(range(len(classes))):
        raise InputError(f"labels {classes} do not read back from {path.name} in order (got targets {read}); "
                         "rename the classes to plain symbols")


# ------------------------------------------------------------------------------------------------ workers

_tokenizer = None


def _load_tokenizer(spec: TokenizerSpec) -> None:
    global _tokenizer
    _tokenizer = spec.load()


def _encode(item: tuple[str, list[str], int | None]) -> tuple[list[list[int]], int | None, int]:
    """Dictionary ids of each text (no specials), the class index, and the number of ``<unk>`` ids."""
    where, texts, target = item
    encoded = []
    for text in texts:
        ids, _ = _tokenizer.encode(text)
        if not ids:
            raise InputError(f"{where}: the text has no tokens; remove the record or fill it")
        encoded.append(ids)
    unk = _tokenizer.dictionary.unk()
    return encoded, target, sum(i == unk for ids in encoded for i in ids)


# ------------------------------------------------------------------------------------------------ prep


def scan_train(args) -> tuple[Counter, Dictionary | None]:
    """Pass 1 over the training split: class counts, and the dictionary for ``--tokenizer whitespace``."""
    counts = Counter()

    def texts():
        for _, texts, label in records(args.train, args):
            counts[label] += 1
            yield from texts

    if args.tokenizer == "whitespace":
        dictionary = build_whitespace_dictionary(texts())
    else:
        dictionary = None
        for _ in texts():
            pass
    if not counts:
        raise InputError(f"--train {args.train} holds no records")
    if len(counts) < 2:
        raise InputError(f"--train {args.train} has a single class {list(counts)}; a classifier needs at least two")
    return counts, dictionary


def has_labels(path: str, label: str) -> bool:
    """Whether a test file is labelled, judged by its first record (the others must agree)."""
    for _, record in read_jsonl(path):
        return label in record
    return True


def write_split(split: str, path: str, stage: Path, args, spec: TokenizerSpec, vocab_size: int,
                classes: dict[str, int] | None) -> dict:
    """Tokenize one split into ``stage`` (``classes=None``: an unlabelled test file); returns its statistics."""

    def items():
        for where, texts, label in records(path, args, labelled=classes is not None):
            if classes is not None and label not in classes:
                raise InputError(f"{where}: label {label!r} does not occur in the training split (classes: "
                                 f"{', '.join(classes)}); fix the label or add training examples of it")
            yield where, texts, None if classes is None else classes[label]

    lengths, per_class, unknown = [], Counter(), 0
    with ExitStack() as files:
        inputs = [files.enter_context(IndexedWriter(stage / f"input{i}" / split, vocab_size))
                  for i in range(2 if args.pair_field else 1)]
        labels = None
        if classes is not None:
            labels = files.enter_context(IndexedWriter(stage / "label" / split, LABELS.nspecial + len(classes)))
        for encoded, target, unk in ordered_map(_encode, items(), args.workers, _load_tokenizer, (spec,),
                                                desc=split, unit="doc"):
            for writer, ids in zip(inputs, encoded):
                writer.add(ids + [EOS])
            # <s> text </s> [</s> pair </s>]: what the task feeds the model (--init-token, --separator-token)
            lengths.append(sum(len(ids) + 2 for ids in encoded))
            unknown += unk
            if labels is not None:
                labels.add([LABELS.nspecial + target, EOS])
                per_class[target] += 1
        if not lengths:
            raise InputError(f"--{split} {path} holds no records")
    stats = length_stats(lengths, args.max_positions)
    stats["unk_tokens"] = unknown
    if classes is not None:
        stats["labels"] = {name: per_class[k] for name, k in classes.items()}
    return stats


def prepare(args) -> dict:
    check_output_dir(args.output, args.overwrite)
    if args.max_positions < 2:
        raise InputError(f"--max-positions must be >= 2 (<s> and </s>), got {args.max_positions}")
    model_spec = TokenizerSpec.from_model_dir(args.model_dir) if args.model_dir else None
    counts, whitespace_dictionary = scan_train(args)
    classes = {name: k for k, name in enumerate(sorted_labels(counts))}
    splits = {"train": args.train, "valid": args.valid, **({"test": args.test} if args.test else {})}
    report = {"tokenizer": args.tokenizer if model_spec is None else model_spec.kind, "num_classes": len(classes),
              "classes": list(classes), "pairs": bool(args.pair_field), "max_positions": args.max_positions,
              "splits": {}}

    with staged_dir(args.output, args.overwrite) as stage:
        dict_dirs = ["input0", "input1"] if args.pair_field else ["input0"]
        for name in dict_dirs:
            if model_spec is not None:  # the model's dictionary, kept as is
                (stage / name).mkdir()
                shutil.copyfile(model_spec.dict_txt, stage / name / "dict.txt")
            else:
                write_dictionary(whitespace_dictionary, stage / name / "dict.txt")
        spec = model_spec or TokenizerSpec("whitespace", stage / "input0" / "dict.txt")
        vocab_size = len(Dictionary.load(str(spec.dict_txt)))
        write_dictionary(label_dictionary(counts), stage / "label" / "dict.txt")
        check_label_dictionary(stage / "label" / "dict.txt", list(classes))

        for split, path in splits.items():
            labelled = split != "test" or has_labels(path, args.label_field)
            stats = write_split(split, path, stage, args, spec, vocab_size, classes if labelled else None)
            report["splits"][split] = stats
            print(stats_line(split, stats) + f", {stats['unk_tokens']:,} <unk> tokens"
                  + ("" if labelled else ", no labels"), file=sys.stderr)
        write_json_atomic(stage / "prep.json", report)
    print(f"{PROG}: wrote {args.output}: {len(classes)} classes ({', '.join(classes)}); train with "
          f"--task longformer_sentence_prediction --num-classes {len(classes)} --max-positions {args.max_positions}",
          file=sys.stderr)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="training split, JSON lines")
    parser.add_argument("--valid", required=True, help="validation split, JSON lines")
    parser.add_argument("--test", help="test split, JSON lines (labels optional)")
    parser.add_argument("--output", required=True, help="output folder (fairseq data dir)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="the pretrained Longformer's directory: dict.txt and GPT-2 BPE "
                                            "(encoder.json, vocab.bpe) or sentencepiece.bpe.model")
    source.add_argument("--tokenizer", choices=["whitespace"],
                        help="whitespace: the text is already tokenized; the dictionary is built from --train")
    parser.add_argument("--text-field", default="text", help="field of the (first) text (default: text)")
    parser.add_argument("--pair-field", help="field of a second text (pairs: <s> text </s></s> pair </s>)")
    parser.add_argument("--label-field", default="label", help="field of the class (default: label)")
    parser.add_argument("--max-positions", type=int, default=4096,
                        help="the model's positions, for the statistics (default 4096; longer inputs are "
                             "truncated by the task, not here)")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def main(argv: Iterable[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        prepare(args)  # its report is OUTPUT/prep.json
    except (InputError, ValueError) as err:
        raise SystemExit(f"{PROG}: error: {err}") from None


if __name__ == "__main__":
    main()
