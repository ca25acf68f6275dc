"""``longformer-eval-summarization``: generate summaries for a binarized split with fairseq and score them
with ROUGE (the ``rouge-score`` package: Google's reimplementation of ROUGE-1.5.5, stemming on).

The split is one ``longformer-prep-summarization`` wrote (``--task translation`` binaries). The model is
loaded onto a ``translation`` task over ``--data``, so a finetuned checkpoint and a converted LED
directory's ``model.pt`` both work; generation is fairseq's ``SequenceGenerator`` (beam search, length
penalty, min/max length, no-repeat n-grams). Hypotheses and references are turned back into text with
the data folder's tokenizer (GPT-2 BPE or whitespace), ``<s>``/``</s>`` dropped.

Scores are the mean F-measure over the split, x100: ROUGE-1, ROUGE-2, ROUGE-L (one sequence) and
ROUGE-Lsum (summary-level LCS over sentences: a text's own newlines separate its sentences, else
``.``/``!``/``?`` followed by white space do). Written: a JSON of scores (``--output``) and the
hypotheses with their references as JSON lines (``--hypotheses``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import fairseq_longformer  # noqa: F401  registers the plugin, allows fairseq types in torch.load
from data_prep.atomic import atomic_file, write_json_atomic
from data_prep.flags import run_tool
from data_prep.prep_summarization import SOURCE_LANG, TARGET_LANG
from data_prep.text_tokenizer import GPT2_FILES, SPM_FILE, TokenizerSpec
from fairseq import checkpoint_utils, utils
from fairseq.dataclass.configs import GenerationConfig
from fairseq.tasks.translation import TranslationConfig, TranslationTask

logger = logging.getLogger("fairseq_longformer.eval_summarization")

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def rouge_lsum_text(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects: kept if the text has newlines, else split after . ! ?"""
    text = text.strip()
    if "\n" in text:
        return "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return "\n".join(_SENTENCE_END.split(text))


def rouge_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measures x100 (1, 2, L, Lsum) of ``hypotheses`` against ``references``, stemming on."""
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need as many hypotheses as references (> 0), got {len(hypotheses)} and {len(references)}")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        scores = scorer.score(rouge_lsum_text(reference), rouge_lsum_text(hypothesis))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100 * total / len(hypotheses) for name, total in totals.items()}


def data_tokenizer(data_dir: str):
    """The tokenizer the data were prepared with (``prep.json``; else found from the folder's files)."""
    folder = Path(data_dir)
    dictionary = folder / f"dict.{TARGET_LANG}.txt"
    kind = None
    if (folder / "prep.json").is_file():
        kind = json.loads((folder / "prep.json").read_text()).get("tokenizer")
    elif all((folder / name).is_file() for name in GPT2_FILES):
        kind = "gpt2"
    elif (folder / SPM_FILE).is_file():
        kind = "sentencepiece"
    return TokenizerSpec(kind or "whitespace", dictionary, folder if kind in ("gpt2", "sentencepiece") else None).load()


def load(data_dir: str, split: str, checkpoint: str, use_cuda: bool, fp16: bool):
    """``(task, model)``: a translation task over ``data_dir`` with ``split`` loaded, the checkpoint on it."""
    for name in (f"dict.{SOURCE_LANG}.txt", f"dict.{TARGET_LANG}.txt", f"{split}.{SOURCE_LANG}-{TARGET_LANG}.{SOURCE_LANG}.idx"):
        if not os.path.isfile(os.path.join(data_dir, name)):
            raise ValueError(f"{data_dir}/{name} is missing: --data must be a folder written by "
                             f"longformer-prep-summarization that has the {split!r} split")
    if not os.path.isfile(checkpoint):
        raise ValueError(f"--path {checkpoint} does not exist; give a checkpoint file (e.g. SAVE_DIR/checkpoint_best.pt)")
    task = TranslationTask.setup_task(TranslationConfig(
        data=data_dir, source_lang=SOURCE_LANG, target_lang=TARGET_LANG,
        max_source_positions=1 << 30, max_target_positions=1 << 30,  # the model's limits apply below
        dataset_impl=None, train_subset="train", required_seq_len_multiple=1,  # set by fairseq's CLIs otherwise
    ))
    task.load_dataset(split)
    models, _ = checkpoint_utils.load_model_ensemble([checkpoint], arg_overrides={"data": data_dir}, task=task)
    model = models[0]
    model.eval()
    if fp16:
        model.half()
    if use_cuda:
        model.cuda()
    return task, model


def generate(task, model, split: str, generation: GenerationConfig, batch_size: int | None,
             max_tokens: int | None, use_cuda: bool) -> dict[int, tuple[list[int], list[int]]]:
    """``{sample id: (hypothesis ids, reference ids)}``; ids without ``<s>``/``</s>``/padding."""
    dictionary = task.target_dictionary
    special = {dictionary.bos(), dictionary.eos(), dictionary.pad()}
    generator = task.build_generator([model], generation)
    dataset = task.dataset(split)
    batches = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=False, num_workers=0, disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=False)
    out = {}
    with tqdm(total=len(dataset), desc=f"generating {split}", unit="doc") as bar:
        for sample in batches:
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            hypos = task.inference_step(generator, [model], sample)
            for i, sample_id in enumerate(sample["id"].tolist()):
                best = hypos[i][0]["tokens"].tolist()
                reference = utils.strip_pad(sample["target"][i], dictionary.pad()).tolist()
                out[sample_id] = ([t for t in best if t not in special], [t for t in reference if t not in special])
            bar.update(len(sample["id"]))
    return out


def evaluate(args) -> dict:
    use_cuda = torch.cuda.is_available() and not args.cpu
    task, model = load(args.data, args.split, args.path, use_cuda, args.fp16 and use_cuda)
    generation = GenerationConfig(beam=args.beam, lenpen=args.lenpen, min_len=args.min_len,
                                  max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                                  no_repeat_ngram_size=args.no_repeat_ngram_size)
    start = time.perf_counter()
    generated = generate(task, model, args.split, generation, args.batch_size, args.max_tokens, use_cuda)
    seconds = time.perf_counter() - start
    tokenizer = data_tokenizer(args.data)
    ids = sorted(generated)
    hypotheses = [tokenizer.decode(generated[i][0]) for i in ids]
    references = [tokenizer.decode(generated[i][1]) for i in ids]
    scores = rouge_scores(hypotheses, references)

    output = Path(args.output or Path(args.path).with_name(f"rouge_{args.split}.json"))
    hypotheses_path = Path(args.hypotheses or output.with_suffix(".hypotheses.jsonl"))
    with atomic_file(hypotheses_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, hypothesis, reference in zip(ids, hypotheses, references):
            f.write(json.dumps({"id": i, "hypothesis": hypothesis, "reference": reference}, ensure_ascii=False) + "\n")
    result = {**{name: round(value, 4) for name, value in scores.items()},
              "count": len(ids), "split": args.split, "checkpoint": str(args.path), "data": str(args.data),
              "generation": {"beam": args.beam, "lenpen": args.lenpen, "min_len": args.min_len,
                             "max_len_a": args.max_len_a, "max_len_b": args.max_len_b,
                             "no_repeat_ngram_size": args.no_repeat_ngram_size},
              "generation_seconds": round(seconds, 2), "hypotheses": str(hypotheses_path),
              "scorer": "rouge-score, F-measure x100, use_stemmer=True"}
    write_json_atomic(output, result)
    print(json.dumps(result, indent=1))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-eval-summarization", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder written by longformer-prep-summarization")
    parser.add_argument("--split", default="valid", help="split to summarize (default valid)")
    parser.add_argument("--path", required=True, help="checkpoint: a finetuned checkpoint_*.pt or an LED model.pt")
    parser.add_argument("--beam", type=int, default=4, help="beam size (default 4)")
    parser.add_argument("--lenpen", type=float, default=1.0, help="length penalty (default 1.0: none)")
    parser.add_argument("--min-len", type=int, default=1, help="minimum summary length in tokens (default 1)")
    parser.add_argument("--max-len-a", type=float, default=0.0, help="max length = a * source length + b (default a=0)")
    parser.add_argument("--max-len-b", type=int, default=256, help="max length = a * source length + b (default b=256)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0, help="block repeated n-grams of this size (0: off)")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per batch (default 8)")
    parser.add_argument("--max-tokens", type=int, default=None, help="or: source tokens per batch")
    parser.add_argument("--output", help="JSON of scores (default: rouge_SPLIT.json beside the checkpoint)")
    parser.add_argument("--hypotheses", help="hypotheses and references, JSON lines (default: OUTPUT with "
                                             ".hypotheses.jsonl)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is available")
    parser.add_argument("--fp16", action="store_true", help="half precision on GPU")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.beam < 1:
        raise SystemExit(f"longformer-eval-summarization: error: --beam must be >= 1, got {args.beam}")
    return run_tool("longformer-eval-summarization", lambda: evaluate(args))


if __name__ == "__main__":
    main(sys.argv[1:])
