"""``longformer-prep-qa``: SQuAD-format JSON -> fairseq binaries for the ``longformer_span_qa`` task.

Output folder (built in a staging folder and renamed into place when complete):

* ``dict.txt``: the model's dictionary (``--model-dir``) or one built from the training split
  (``--tokenizer whitespace``);
* ``SPLIT.tokens.{bin,idx}``: one row per chunk, ``<s> question </s></s> document-chunk </s>``;
* ``SPLIT.starts.{bin,idx}`` / ``SPLIT.ends.{bin,idx}``: the chunk's gold start / end positions, one per
  answer occurrence in the chunk (first-listed answer first), ``[0]`` (``<s>``) when it has none;
* ``SPLIT.examples.jsonl``: one line per question: ``id``, ``question``, ``answers`` (gold texts for EM/F1),
  ``is_impossible``, ``context``, ``offsets`` (the document tokens' character spans, flat), ``doc_offset``
  (position of the first document token in a row) and ``chunks`` (``[row, first_token, num_tokens]``):
  what ``longformer-qa-predict`` needs to map a predicted token span back to the exact context text;
* ``SPLIT.skipped.txt``: malformed questions with their id and the reason (only if there were any);
* ``meta.json``: the options and per-split counts.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import staged_dir, write_json_atomic
from ..binarized import IndexedWriter, write_dictionary
from ..flags import run_tool
from ..jsonl import InputError
from ..lengths import length_stats, stats_line
from ..parallel import ordered_map
from ..text_tokenizer import TokenizerSpec, build_whitespace_dictionary
from .chunking import (
    SPECIAL_TOKENS,
    SPECIAL_TOKENS_BEFORE_DOC,
    build_chunks,
    token_spans,
)
from .squad import iter_paragraphs, parse_paragraph

logger = logging.getLogger("longformer-prep-qa")

FORMAT = "longformer_span_qa/1"
SHOWN_SKIPPED = 10  # malformed records printed per split (all of them go to SPLIT.skipped.txt)


@dataclass(frozen=True)
class ChunkOptions:
    max_positions: int = 4096
    doc_stride: int | None = None     # None: half of the smallest chunk
    max_question_tokens: int = 64
    max_chunks: int | None = None     # None: every chunk (1: cut the document, as the paper does for TriviaQA)

    def checked(self) -> ChunkOptions:
        smallest = self.max_positions - self.max_question_tokens - SPECIAL_TOKENS
        if self.max_question_tokens < 1 or smallest < 1:
            raise ValueError(f"--max-positions {self.max_positions} leaves no room for a document after a question "
                             f"of --max-question-tokens {self.max_question_tokens} and {SPECIAL_TOKENS} special "
                             "tokens; raise --max-positions or lower --max-question-tokens (>= 1)")
        stride = self.doc_stride if self.doc_stride is not None else max(1, smallest // 2)
        if not 1 <= stride <= smallest:
            raise ValueError(f"--doc-stride {stride} must be between 1 and {smallest} (the document tokens of a "
                             "chunk with the longest question), or chunks would leave gaps")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ValueError(f"--max-chunks must be >= 1, got {self.max_chunks}")
        return ChunkOptions(self.max_positions, stride, self.max_question_tokens, self.max_chunks)


# ------------------------------------------------------------------------------------- worker side

_worker: dict = {}


def _init_worker(spec: TokenizerSpec, options: ChunkOptions) -> None:
    tokenizer = spec.load()
    d = tokenizer.dictionary
    _worker.update(tokenizer=tokenizer, options=options, bos=d.bos(), eos=d.eos(), unk=d.unk(),
                   specials={d.bos(), d.eos(), d.pad()})


def _encode(text: str) -> tuple[list[int], list[tuple[int, int]], int]:
    """Ids and spans; a text token that *is* a special symbol (``</s>`` in whitespace text) becomes
    ``<unk>``, so that the only ``</s>`` of a row are the separators (the global mask relies on it)."""
    ids, spans = _worker["tokenizer"].encode(text)
    specials, unk = _worker["specials"], _worker["unk"]
    replaced = sum(1 for i in ids if i in specials)
    return ([unk if i in specials else i for i in ids] if replaced else ids), spans, replaced


def encode_paragraph(item: tuple[str, dict]) -> dict:
    """One paragraph -> its questions' chunks and example records, plus counts and skipped reports."""
    options: ChunkOptions = _worker["options"]
    paragraph = parse_paragraph(*item)
    out = {"questions": [], "skipped": list(paragraph.skipped), "replaced": 0}
    if not paragraph.questions:
        return out
    doc, offsets, replaced = _encode(paragraph.context)
    out["replaced"] += replaced
    if not doc:
        out["skipped"] += [f"{paragraph.where} question id {q.id}: the context has no tokens" for q in paragraph.questions]
        return out
    for q in paragraph.questions:
        question, _, replaced = _encode(q.question)
        out["replaced"] += replaced
        truncated = len(question) > options.max_question_tokens
        question = question[: options.max_question_tokens]
        mapped = [(occ, span) for occ, span in zip(q.occurrences, token_spans(offsets, q.occurrences)) if span]
        if q.occurrences and not mapped:
            out["skipped"].append(f"{paragraph.where} question id {q.id}: no answer covers a token")
            continue
        # an answer that starts or ends inside a token: its token span holds more text than the answer
        off_boundary = sum(1 for (cs, ce), (s, e) in mapped if (offsets[s][0], offsets[e][1]) != (cs, ce))
        spans = list(dict.fromkeys(span for _, span in mapped))  # distinct answers may cover the same tokens
        chunks = build_chunks(question, doc, spans, options.max_positions, options.doc_stride, _worker["bos"],
                              _worker["eos"], options.max_chunks)
        out["questions"].append({
            "record": {"id": q.id, "question": q.question, "answers": q.gold, "is_impossible": q.is_impossible,
                       "context": paragraph.context, "offsets": [i for span in offsets for i in span],
                       "doc_offset": len(question) + SPECIAL_TOKENS_BEFORE_DOC},
            "chunks": chunks, "length": len(question) + len(doc) + SPECIAL_TOKENS, "truncated": truncated,
            "occurrences": len(spans), "off_boundary": off_boundary,
        })
    return out


# --------------------------------------------------------------------------------------- main side


def prepare_split(split: str, path: Path, staging: Path, spec: TokenizerSpec, options: ChunkOptions,
                  vocab_size: int, workers: int, progress: bool) -> dict:
    counts = {key: 0 for key in ("questions", "chunks", "chunks_with_answer", "occurrences", "off_token_boundary",
                                 "questions_truncated", "special_tokens_replaced", "skipped")}
    lengths, seen, skipped = [], set(), []
    prefix = staging / split
    with IndexedWriter(f"{prefix}.tokens", vocab_size) as tokens, \
            IndexedWriter(f"{prefix}.starts", options.max_positions + 1) as starts, \
            IndexedWriter(f"{prefix}.ends", options.max_positions + 1) as ends, \
            open(f"{prefix}.examples.jsonl", "w", encoding="utf-8") as examples:
        results = ordered_map(encode_paragraph, iter_paragraphs(path), workers, _init_worker, (spec, options),
                              desc=split, unit="paragraph", progress=progress)
        for result in results:
            skipped += result["skipped"]
            counts["special_tokens_replaced"] += result["replaced"]
            for q in result["questions"]:
                record = q["record"]
                if record["id"] in seen:
                    skipped.append(f"{path}: question id {record['id']} repeats an earlier id; ids must be unique")
                    continue
                seen.add(record["id"])
                record["chunks"] = []
                for chunk in q["chunks"]:
                    record["chunks"].append([tokens.items, chunk.first_token, chunk.num_tokens])
                    tokens.add(chunk.tokens)
                    starts.add(chunk.starts)
                    ends.add(chunk.ends)
                    counts["chunks_with_answer"] += chunk.starts != [0]
                examples.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts["questions"] += 1
                counts["chunks"] += len(q["chunks"])
                counts["occurrences"] += q["occurrences"]
                counts["off_token_boundary"] += q["off_boundary"]
                counts["questions_truncated"] += q["truncated"]
                lengths.append(q["length"])
        counts["skipped"] = len(skipped)
        _report_skipped(split, skipped, staging)
        if not counts["questions"]:
            raise InputError(f"{path}: no usable question (every record was malformed; see the messages above)")
    logger.info(stats_line(split, length_stats(lengths, options.max_positions)).replace("items", "questions"))
    logger.info("%s: %s", split, ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in counts.items()))
    return counts


def _report_skipped(split: str, skipped: list[str], staging: Path) -> None:
    if not skipped:
        return
    for line in skipped[:SHOWN_SKIPPED]:
        logger.warning("skipped: %s", line)
    if len(skipped) > SHOWN_SKIPPED:
        logger.warning("... %d more skipped; all of them are listed in %s.skipped.txt", len(skipped) - SHOWN_SKIPPED,
                       split)
    (staging / f"{split}.skipped.txt").write_text("".join(line + "\n" for line in skipped), encoding="utf-8")


def _training_texts(path: Path):
    for where, raw in iter_paragraphs(path):
        paragraph = parse_paragraph(where, raw)
        if paragraph.questions:
            yield paragraph.context
            yield from (q.question for q in paragraph.questions)


def prepare(splits: dict[str, Path], output: Path, options: ChunkOptions, model_dir: Path | None = None,
            workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Prepare every split into ``output``; returns the contents of ``meta.json``."""
    from fairseq.data import Dictionary

    options = options.checked()
    for split, path in splits.items():
        if not Path(path).is_file():
            raise InputError(f"--{split} {path} does not exist or is not a file")
    spec = TokenizerSpec.from_model_dir(model_dir) if model_dir is not None else None
    with staged_dir(output, overwrite) as staging:
        dict_txt = staging / "dict.txt"
        if spec is None:
            write_dictionary(build_whitespace_dictionary(_training_texts(splits["train"])), dict_txt)
            spec = TokenizerSpec("whitespace", dict_txt)
        else:
            shutil.copyfile(spec.dict_txt, dict_txt)
        vocab_size = len(Dictionary.load(str(dict_txt)))
        meta = {"format": FORMAT, "tokenizer": spec.kind, **asdict(options), "splits": {}}
        for split, path in splits.items():
            meta["splits"][split] = prepare_split(split, Path(path), staging, spec, options, vocab_size, workers,
                                                  progress)
        write_json_atomic(staging / "meta.json", meta)
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longformer-prep-qa",
        description="SQuAD-format JSON (SQuAD v1.1/v2.0, TriviaQA converted) -> fairseq binaries for "
                    "--task longformer_span_qa: <s> question </s></s> document </s>, long documents in "
                    "overlapping chunks, every answer occurrence as a gold span.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train", type=Path, required=True, help="training split (SQuAD-format JSON)")
    p.add_argument("--valid", type=Path, required=True, help="validation split (SQuAD-format JSON)")
    p.add_argument("--test", type=Path, help="optional test split")
    p.add_argument("--output", type=Path, required=True, help="output folder (the task's data directory)")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--model-dir", type=Path,
                     help="pretrained model directory: its dict.txt and GPT-2 BPE (or sentencepiece) files")
    tok.add_argument("--tokenizer", choices=("whitespace",),
                     help="text that is already tokenized: one token per run of non-space characters, dictionary "
                          "built from --train")
    p.add_argument("--max-positions", type=int, default=ChunkOptions.max_positions,
                   help="tokens per row, special tokens included (the model's max positions)")
    p.add_argument("--doc-stride", type=int,
                   help="document tokens between the starts of consecutive chunks (default: half a chunk)")
    p.add_argument("--max-question-tokens", type=int, default=ChunkOptions.max_question_tokens,
                   help="longer questions are cut to their first N tokens")
    p.add_argument("--max-chunks", type=int,
                   help="keep only the first N chunks of a document (1: cut the document at --max-positions, "
                        "as the Longformer paper does for TriviaQA); default: all")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    splits = {name: getattr(args, name) for name in ("train", "valid", "test") if getattr(args, name)}
    options = ChunkOptions(args.max_positions, args.doc_stride, args.max_question_tokens, args.max_chunks)
    run_tool("longformer-prep-qa", lambda: prepare(splits, args.output, options, args.model_dir, args.workers,
                                                   args.overwrite, not args.no_progress))  # InputError is a ValueError
    return 0


if __name__ == "__main__":
    sys.exit(main())
