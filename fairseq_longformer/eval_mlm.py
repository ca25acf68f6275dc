"""``longformer-eval-mlm``: the rows of the paper's Table 6 (MLM BPC) on a binarized corpus.

Rows: the source RoBERTa at its own length; the converted Longformer before any training with
random new position rows and with copied ones (both converted in memory from ``--roberta``); then
each ``--checkpoint`` (e.g. ``checkpoint_2000.pt``), labelled with its update count. "BPC" is the
paper's: base-2 cross-entropy per masked token, exactly what the ``masked_lm``/``masked_lm_bpc``
criterions log. Masking is fairseq's (15%, 80/10/10) with a fixed seed, so every Longformer row sees
the same masked positions.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import fairseq_longformer  # noqa: F401  registers the plugin
from fairseq import checkpoint_utils
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

from .convert_roberta import ConversionError, ConversionOptions, build_longformer

logger = logging.getLogger("fairseq_longformer.eval_mlm")


@dataclass
class Row:
    name: str
    seq_len: int
    bpc: float
    masked_tokens: int


def masked_lm_bpc(model, data_dir: str, split: str, seq_len: int, seed: int = 1, batch_size: int = 4,
                  max_tokens: int | None = None, desc: str = "") -> tuple[float, int]:
    """Base-2 loss per masked token of ``model`` on ``split``, cut into blocks of ``seq_len`` tokens.

    ``max_tokens`` keeps the first blocks covering about that many tokens, the same text prefix
    whatever ``seq_len``.
    """
    task = MaskedLMTask.setup_task(MaskedLMConfig(data=data_dir, tokens_per_sample=seq_len, seed=seed))
    vocab = model.encoder.sentence_encoder.embed_tokens.num_embeddings
    if vocab != len(task.source_dictionary):
        raise ValueError(f"{data_dir}/dict.txt gives {len(task.source_dictionary)} symbols but the model has {vocab}; "
                         "binarize the corpus with the model's dict.txt (fairseq-preprocess --srcdict)")
    task.load_dataset(split)
    dataset = task.dataset(split)
    blocks = len(dataset) if max_tokens is None else max(1, math.ceil(max_tokens / seq_len))
    indices = list(range(min(blocks, len(dataset))))  # raw order = text order
    pad = task.source_dictionary.pad()
    device = next(model.parameters()).device
    model.eval()
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for start in tqdm(range(0, len(indices), batch_size), desc=desc or "eval", leave=False):
            batch = dataset.collater([dataset[i] for i in indices[start:start + batch_size]])
            src = batch["net_input"]["src_tokens"].to(device)
            target = batch["target"].to(device)
            masked = target.ne(pad)
            if not masked.any():
                continue
            logits = model(src, masked_tokens=masked)[0]
            loss_sum += F.cross_entropy(logits.float(), target[masked], reduction="sum").item()
            count += int(masked.sum())
    if count == 0:
        raise ValueError(f"no masked tokens in {data_dir}/{split}; is the split empty?")
    return loss_sum / count / math.log(2), count


def table6_rows(roberta_dir: str, data_dir: str, split: str, options: ConversionOptions,
                checkpoints: list[str], batch_size: int = 4, max_tokens: int | None = None,
                seed: int = 1) -> list[Row]:
    rows = []

    def evaluate(name, model, seq_len):
        bpc, n = masked_lm_bpc(model, data_dir, split, seq_len, seed, batch_size, max_tokens, desc=name)
        rows.append(Row(name, seq_len, bpc, n))
        logger.info("%s (seqlen %d): BPC %.3f over %d masked tokens", name, seq_len, bpc, n)

    for init in ("random", "copy"):
        cfg, longformer, roberta = build_longformer(
            roberta_dir, ConversionOptions(options.max_positions, options.attention_window, init, options.seed)
        )
        if init == "random":
            evaluate("RoBERTa", roberta, cfg.model.roberta_max_positions)
            evaluate("Longformer, random new positions", longformer, options.max_positions)
        else:
            evaluate("+ copy position embeddings", longformer, options.max_positions)
        del longformer, roberta

    for path in checkpoints:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data_dir})
        updates = state["optimizer_history"][-1].get("num_updates", 0) if state.get("optimizer_history") else 0
        evaluate(f"+ {updates} gradient updates", models[0], models[0].max_positions())
    return rows


def format_table(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'model':<{width}}  seqlen     BPC  masked tokens", "-" * (width + 32)]
    lines += [f"{r.name:<{width}}  {r.seq_len:>6}  {r.bpc:>6.3f}  {r.masked_tokens:>13}" for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-eval-mlm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--roberta", required=True, help="source fairseq RoBERTa directory (model.pt, dict.txt)")
    parser.add_argument("--data", required=True, help="fairseq-preprocess output binarized with RoBERTa's dict.txt")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--max-positions", type=int, default=4096, help="Longformer length (default 4096)")
    parser.add_argument("--attention-window", default="512", help="Longformer window (default 512)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                        help="a trained longformer_roberta checkpoint; repeat for several rows")
    parser.add_argument("--batch-size", type=int, default=4, help="blocks per forward pass")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="evaluate only the first ~N tokens of the split (same text for every row)")
    parser.add_argument("--seed", type=int, default=1, help="masking seed and random-position seed")
    return parser


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    for path in [os.path.join(args.data, "dict.txt")] + args.checkpoint:
        if not os.path.isfile(path):
            raise SystemExit(f"longformer-eval-mlm: error: {path} not found")
    options = ConversionOptions(args.max_positions, str(args.attention_window), "copy", args.seed)
    try:
        rows = table6_rows(args.roberta, args.data, args.split, options, args.checkpoint,
                           args.batch_size, args.max_tokens, args.seed)
    except (ConversionError, ValueError) as err:
        raise SystemExit(f"longformer-eval-mlm: error: {err}") from None
    print(format_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
