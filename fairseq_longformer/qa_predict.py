"""``longformer-qa-predict``: answer every question of a prepared split with a trained span-QA model.

For each row (chunk) the best span is the pair ``start <= end < start + --max-answer-tokens`` inside
the row's document part with the highest ``start_logit + end_logit``; a question's answer is its best
span over all its chunks, mapped back to the exact context text through the token offsets
``longformer-prep-qa`` kept. With ``--null-threshold T`` (SQuAD 2.0) the answer is empty when the
no-answer score (``<s>``'s start + end logit, the lowest over the question's chunks, as BERT) beats the
best span's score by more than ``T``. Prints exact match and F1 (``squad_metrics.py``, the official
SQuAD definitions) and writes ``{"exact_match", "f1", "questions", "predictions": {id: text}}``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass

import torch

from data_prep.atomic import write_json_atomic
from data_prep.flags import run_tool

from .modules.span_head import SPAN_HEAD
from .squad_metrics import evaluate
from .tasks.longformer_span_qa import GLOBAL_MODES

logger = logging.getLogger("longformer-qa-predict")


@dataclass
class RowSpan:
    score: float      # start + end logit of the best span
    start: int        # its first and last token, as positions in the row
    end: int
    null_score: float  # start + end logit of <s> (no answer in this row)
    doc_start: int    # the row's first and one-past-last document position
    doc_end: int


def document_bounds(tokens: torch.Tensor, eos: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``<s> question </s></s> document </s> <pad>...``: first and one-past-last document position."""
    is_eos = tokens.eq(eos)
    first_eos = is_eos.int().argmax(-1)
    return first_eos + 2, tokens.ne(pad).sum(-1) - 1


def best_spans(start: torch.Tensor, end: torch.Tensor, doc_start: torch.Tensor, doc_end: torch.Tensor,
               max_answer_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Highest ``start[s] + end[e]`` over ``doc_start <= s <= e < min(s + max_answer_tokens, doc_end)``, per row.

    ``start``/``end``: logits ``[B, T]``. Returns the scores, starts and ends ``[B]``.
    """
    positions = torch.arange(start.shape[1], device=start.device)
    in_doc = (positions >= doc_start[:, None]) & (positions < doc_end[:, None])
    best = torch.full((start.shape[0],), float("-inf"), device=start.device)
    best_start = torch.zeros(start.shape[0], dtype=torch.long, device=start.device)
    best_length = torch.zeros_like(best_start)
    for length in range(min(max_answer_tokens, start.shape[1])):  # spans of `length + 1` tokens
        width = start.shape[1] - length
        scores = (start[:, :width] + end[:, length:]).masked_fill(~(in_doc[:, :width] & in_doc[:, length:]),
                                                                  float("-inf"))
        score, where = scores.max(-1)
        better = score > best
        best = torch.where(better, score, best)
        best_start = torch.where(better, where, best_start)
        best_length = torch.where(better, torch.full_like(best_length, length), best_length)
    return best, best_start, best_start + best_length


@torch.inference_mode()
def score_rows(model, task, split: str, max_answer_tokens: int, batch_size: int, device) -> dict[int, RowSpan]:
    """The best span of every row of ``split``, through the task's own dataset (and global attention)."""
    dataset = task.dataset(split)
    batches = task.get_batch_iterator(dataset, max_sentences=batch_size, max_positions=task.max_positions(),
                                      ignore_invalid_inputs=False, num_workers=0).next_epoch_itr(shuffle=False)
    eos, pad = task.source_dictionary.eos(), task.source_dictionary.pad()
    rows = {}
    for sample in batches:
        net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
        logits, _ = model(**net_input, span_head_name=SPAN_HEAD)
        start, end = logits.float().unbind(-1)
        doc_start, doc_end = document_bounds(net_input["src_tokens"], eos, pad)
        score, first, last = best_spans(start, end, doc_start, doc_end, max_answer_tokens)
        null = start[:, 0] + end[:, 0]
        for i, row in enumerate(sample["id"].tolist()):
            rows[row] = RowSpan(score[i].item(), first[i].item(), last[i].item(), null[i].item(),
                                doc_start[i].item(), doc_end[i].item())
    return rows


def answer_question(example: dict, rows: dict[int, RowSpan], null_threshold: float | None) -> str:
    """The text of the question's best span over its chunks ('' for no answer)."""
    best, null = None, float("inf")
    for row, first_token, num_tokens in example["chunks"]:
        span = rows[row]
        if (span.doc_start, span.doc_end - span.doc_start) != (example["doc_offset"], num_tokens):
            raise ValueError(f"question {example['id']}: row {row} does not match its examples.jsonl record; "
                             "the split's files come from different longformer-prep-qa runs")
        null = min(null, span.null_score)
        if best is None or span.score > best[0]:
            best = (span.score, first_token + span.start - span.doc_start, first_token + span.end - span.doc_start)
    if null_threshold is not None and null - best[0] > null_threshold:
        return ""
    offsets = example["offsets"]
    return example["context"][offsets[2 * best[1]]:offsets[2 * best[2] + 1]]


def predict(data: str, split: str, path: str, max_answer_tokens: int = 30, null_threshold: float | None = None,
            batch_size: int = 8, cpu: bool = False, global_attention: str | None = None) -> dict:
    """Load the checkpoint, answer every question of ``split``; ``{"exact_match", "f1", "questions", "predictions"}``."""
    from fairseq import checkpoint_utils

    examples_path = os.path.join(data, f"{split}.examples.jsonl")
    if not os.path.isfile(examples_path):
        raise ValueError(f"{examples_path} is missing; prepare split {split!r} with longformer-prep-qa --output {data}")
    if not os.path.isfile(path):
        raise ValueError(f"--path {path} is not a file; give a checkpoint written by fairseq-train")
    if max_answer_tokens < 1:
        raise ValueError(f"--max-answer-tokens must be >= 1, got {max_answer_tokens}")
    overrides = {"data": data, **({"global_attention": global_attention} if global_attention else {})}
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides)
    except RuntimeError as err:
        if "size mismatch" in str(err):
            raise ValueError(f"{path} does not fit the dictionary of {data}: prepare the data with the model's "
                             f"dict.txt (longformer-prep-qa --model-dir) ({str(err).splitlines()[-1].strip()})") from None
        raise
    if task.__class__.__name__ != "LongformerSpanQaTask":
        raise ValueError(f"{path} was not trained with --task longformer_span_qa")
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    model = models[0].to(device).eval()
    task.load_dataset(split)
    rows = score_rows(model, task, split, max_answer_tokens, batch_size, device)
    predictions, answers = {}, {}
    with open(examples_path, encoding="utf-8") as f:
        for line in f:
            example = json.loads(line)
            predictions[example["id"]] = answer_question(example, rows, null_threshold)
            answers[example["id"]] = example["answers"]
    return {**evaluate(predictions, answers), "predictions": predictions}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longformer-qa-predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by longformer-prep-qa")
    p.add_argument("--split", default="valid", help="split to answer")
    p.add_argument("--path", required=True, help="checkpoint trained with --task longformer_span_qa")
    p.add_argument("--output", help="JSON to write (default: predictions_SPLIT.json beside the checkpoint)")
    p.add_argument("--max-answer-tokens", type=int, default=30, help="longest answer, in tokens")
    p.add_argument("--null-threshold", type=float,
                   help="SQuAD 2.0: answer '' when the no-answer score beats the best span by more than this")
    p.add_argument("--global-attention", choices=list(GLOBAL_MODES),
                   help="override the checkpoint's --global-attention")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is there")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_tool("longformer-qa-predict", lambda: predict(
        args.data, args.split, args.path, args.max_answer_tokens, args.null_threshold, args.batch_size, args.cpu,
        args.global_attention), (ValueError, FileNotFoundError))
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.path)), f"predictions_{args.split}.json")
    write_json_atomic(output, result)
    print(f"{args.split}: exact match {result['exact_match']:.2f}, F1 {result['f1']:.2f} over {result['questions']:,} "
          f"questions; predictions in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
