"""``longformer-prep-corpus``: the paper's long-document pretraining corpus from raw sources on disk.

Example (GPT-2 BPE exactly as RoBERTa, so a converted RoBERTa trains on the output directly)::

    longformer-prep-corpus --books books/ --wikipedia wiki-extracted/ --realnews realnews.jsonl \\
        --stories stories.txt --gpt2-encoder-json encoder.json --gpt2-vocab-bpe vocab.bpe \\
        --dict dict.txt --output corpus/ --workers 8
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..flags import add_renamed_flag
from .build import build
from .config import DEFAULT_FRACTIONS, DEFAULT_LONGER_THAN, CorpusPrepConfig, SpmTrainConfig
from .documents import SOURCE_ORDER
from .selection import parse_count, parse_fraction, parse_source_values
from .tokenizers import BPE_CACHE_ENTRIES, Gpt2BpeSpec, SentencePieceSpec


def _defaults(values: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the empty ones (None / False) that would only say '(default: None)'."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.help is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longformer-prep-corpus",
        description="Build the Longformer pretraining corpus (paper §5, Table 5): read Books / Wikipedia / "
                    "Realnews / Stories, select as in the paper, tokenize, binarize with fairseq, report statistics.",
        formatter_class=_HelpFormatter,
    )
    src = p.add_argument_group("sources (at least one)")
    src.add_argument("--books", type=Path, help="folder of .txt books (one book per file)")
    src.add_argument("--wikipedia", type=Path, help="WikiExtractor output folder or file (<doc> form or --json lines)")
    src.add_argument("--realnews", type=Path, help="realnews.jsonl (or a folder of .jsonl) with a 'text' field")
    src.add_argument("--stories", type=Path, help="folder of .txt stories, or a file with one story per line")

    tok = p.add_argument_group("tokenizer (GPT-2 BPE as RoBERTa, or sentencepiece)")
    tok.add_argument("--gpt2-encoder-json", type=Path, help="GPT-2 encoder.json")
    tok.add_argument("--gpt2-vocab-bpe", type=Path, help="GPT-2 vocab.bpe")
    tok.add_argument("--dict", type=Path, help="RoBERTa's fairseq dict.txt (with the GPT-2 files)")
    tok.add_argument("--bpe-cache-entries", type=int, default=BPE_CACHE_ENTRIES,
                     help="GPT-2 encoder cache size per worker (cleared when exceeded): speed vs memory")
    tok.add_argument("--spm-model", type=Path, help="an existing sentencepiece model")
    tok.add_argument("--train-spm", action="store_true", help="train a sentencepiece model on a sample first")
    tok.add_argument("--spm-vocab-size", type=int, default=SpmTrainConfig.vocab_size, help="trained vocabulary size")
    tok.add_argument("--spm-model-type", default=SpmTrainConfig.model_type, choices=("unigram", "bpe"),
                     help="trained model type")
    tok.add_argument("--spm-sample-lines", type=int, default=SpmTrainConfig.sample_lines,
                     help="paragraphs in the seeded reservoir sample used for training")

    sel = p.add_argument_group("selection (defaults follow the paper)")
    sel.add_argument("--fraction", action="append", metavar="SOURCE=F",
                     help=f"keep this share of a source, seeded (e.g. realnews=1/3); default {_defaults(DEFAULT_FRACTIONS)}")
    sel.add_argument("--keep-longer-than", action="append", metavar="SOURCE=N",
                     help=f"keep only documents with more than N tokens; default {_defaults(DEFAULT_LONGER_THAN)}")
    sel.add_argument("--max-docs", action="append", metavar="SOURCE=N", help="cap on documents kept from a source")
    sel.add_argument("--max-tokens", action="append", metavar="SOURCE=N", help="cap on tokens kept from a source")
    sel.add_argument("--max-line-tokens", type=int, default=4094,
                     help="split longer paragraphs into near-equal lines (fairseq blocks never split a line); "
                          "use tokens-per-sample - 2")
    sel.add_argument("--valid-fraction", type=float, default=0.01, help="share of documents held out for valid")
    sel.add_argument("--test-fraction", type=float, default=0.01, help="share of documents held out for test")
    sel.add_argument("--seed", type=int, default=1, help="seed of sampling and splitting")

    run = p.add_argument_group("running")
    add_renamed_flag(run, "--output", "--out-dir", type=Path, required=True,
                     help="output folder; the corpus lands in OUTPUT/data-bin")
    run.add_argument("--workers", type=int, default=1, help="tokenizer processes (and fairseq-preprocess workers)")
    run.add_argument("--shard-docs", type=int, default=10_000, help="documents per resumable shard")
    run.add_argument("--shard-mb", type=float, default=32.0, help="MiB of text per resumable shard (memory bound)")
    run.add_argument("--max-doc-mb", type=float, default=64.0, help="larger documents are reported and skipped")
    run.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                     help="unknown or malformed input: report, count and skip it, or stop the run")
    run.add_argument("--keep-work", action="store_true", help="keep the tokenized text in OUTPUT/.work after success")
    run.add_argument("--overwrite", action="store_true", help="replace an OUTPUT/data-bin built with other options")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _tokenizer(args):
    gpt2 = [args.gpt2_encoder_json, args.gpt2_vocab_bpe, args.dict]
    chosen = sum([any(x is not None for x in gpt2), args.spm_model is not None, args.train_spm])
    if chosen != 1:
        raise ValueError("choose one tokenizer: --gpt2-encoder-json/--gpt2-vocab-bpe/--dict, --spm-model, "
                         "or --train-spm")
    if args.spm_model is not None:
        return SentencePieceSpec(args.spm_model), None
    if args.train_spm:
        return None, SpmTrainConfig(args.spm_vocab_size, args.spm_model_type, args.spm_sample_lines)
    if any(x is None for x in gpt2):
        raise ValueError("GPT-2 BPE needs all three of --gpt2-encoder-json, --gpt2-vocab-bpe and --dict")
    if args.bpe_cache_entries < 0:
        raise ValueError(f"--bpe-cache-entries {args.bpe_cache_entries}: must be >= 0")
    return Gpt2BpeSpec(*gpt2, cache_entries=args.bpe_cache_entries), None


def config_from_args(args) -> CorpusPrepConfig:
    tokenizer, train_spm = _tokenizer(args)
    fractions = dict(DEFAULT_FRACTIONS) | parse_source_values(args.fraction, parse_fraction, "--fraction", SOURCE_ORDER)
    longer = dict(DEFAULT_LONGER_THAN) | parse_source_values(args.keep_longer_than, parse_count,
                                                             "--keep-longer-than", SOURCE_ORDER)
    return CorpusPrepConfig(
        sources={s: getattr(args, s) for s in SOURCE_ORDER},
        out_dir=args.output,
        tokenizer=tokenizer,
        train_spm=train_spm,
        fractions=fractions,
        longer_than=longer,
        max_docs=parse_source_values(args.max_docs, parse_count, "--max-docs", SOURCE_ORDER),
        max_tokens=parse_source_values(args.max_tokens, parse_count, "--max-tokens", SOURCE_ORDER),
        max_line_tokens=args.max_line_tokens,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        workers=args.workers,
        shard_docs=args.shard_docs,
        shard_mb=args.shard_mb,
        max_doc_mb=args.max_doc_mb,
        on_error=args.on_error,
        keep_work=args.keep_work,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        build(cfg)
    except (ValueError, RuntimeError) as err:  # InputError is a ValueError
        raise SystemExit(f"longformer-prep-corpus: error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
