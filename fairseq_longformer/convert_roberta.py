"""``longformer-convert-roberta``: a fairseq RoBERTa directory -> a Longformer-RoBERTa directory.

Paper §5: the attention becomes a sliding window (512 by default); learned positions grow from 512
to 4,096 by copying RoBERTa's 512 rows (Table 6: far better than random rows) while the two
padding-offset rows 0 and 1 stay; the global projections Qg/Kg/Vg start as copies of Q/K/V (own
parameters, not tied). The source is read the way fairseq reads it (``RobertaModel.load_state_dict``
with its key upgrades), so released checkpoints' legacy names (``decoder.*``, ``emb_layer_norm``,
fused ``in_proj``) and current ones both work. The result is loaded strictly into a
``longformer_roberta`` model before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from fairseq import tasks
from fairseq.models.roberta import RobertaModel

from data_prep.flags import add_input_output_flags

from .conversion import (
    ConversionError, check_output, check_positions, check_windows, converted_cfg, copy_global_projections,
    extend_positions, load_source_model, model_name, run_tool, source_positions, write_converted,
)

logger = logging.getLogger("fairseq_longformer.convert_roberta")

POSITIONS_KEY = "encoder.sentence_encoder.embed_positions.weight"
ARCH_MAP = {"roberta_large": "longformer_roberta_large"}  # everything else -> longformer_roberta_base


@dataclass
class ConversionOptions:
    max_positions: int = 4096
    attention_window: str = "512"
    position_init: str = "copy"  # "copy" (paper) or "random" (Table 6's ablation row)
    seed: int = 1


def load_roberta(roberta_dir: str):
    """Return ``(cfg, task, RobertaModel)`` read from ``roberta_dir/model.pt`` and ``dict.txt``."""
    return load_source_model(roberta_dir, RobertaModel, "RoBERTa", "roberta/roberta_base/roberta_large")


def longformer_state_dict(roberta_state: dict, num_layers: int, options: ConversionOptions) -> dict:
    """RoBERTa weights (current fairseq names) -> Longformer weights: positions extended, Qg/Kg/Vg copied."""
    state = {k: v.clone() for k, v in roberta_state.items()}
    state[POSITIONS_KEY] = extend_positions(roberta_state[POSITIONS_KEY], options.max_positions,
                                            options.position_init, options.seed)
    copy_global_projections(state, [f"encoder.sentence_encoder.layers.{i}.self_attn." for i in range(num_layers)])
    return state


def longformer_cfg(cfg, source_positions: int, options: ConversionOptions):
    """The source config with the model switched to ``longformer_roberta`` and the lengths raised."""
    model_cfg = cfg.model
    arch = ARCH_MAP.get(getattr(model_cfg, "arch", None) or model_name(model_cfg), "longformer_roberta_base")
    updates = dict(
        max_positions=options.max_positions, max_source_positions=options.max_positions,
        tokens_per_sample=options.max_positions,
        attention_window=options.attention_window, attention_backend="auto",
        roberta_max_positions=source_positions, freeze_roberta=False,
    )
    return converted_cfg(cfg, arch, updates, {"tokens_per_sample": options.max_positions})


def build_longformer(roberta_dir: str, options: ConversionOptions):
    """Convert in memory: returns ``(cfg, longformer_model, roberta_model)``; nothing is written."""
    _check_options(options)
    cfg, _, roberta = load_roberta(roberta_dir)
    source = source_positions(roberta.encoder.sentence_encoder.embed_positions.weight)
    check_positions(options.max_positions, source, "--max-positions")
    num_layers = len(roberta.encoder.sentence_encoder.layers)
    check_windows(options.attention_window, num_layers)

    new_cfg = longformer_cfg(cfg, source, options)
    new_state = longformer_state_dict(roberta.state_dict(), num_layers, options)
    longformer = tasks.setup_task(new_cfg.task).build_model(new_cfg.model)
    longformer.load_state_dict(new_state, strict=True, model_cfg=new_cfg.model)  # proves the names line up
    return new_cfg, longformer, roberta


def convert(input_dir: str, output_dir: str, options: ConversionOptions, overwrite: bool = False):
    """Convert and write ``output_dir`` (``model.pt`` + ``dict.txt`` + BPE files); returns the model."""
    check_output(input_dir, output_dir, overwrite)
    cfg, longformer, roberta = build_longformer(input_dir, options)
    write_converted(input_dir, output_dir, cfg, longformer.state_dict(), "MaskedLmLoss")
    logger.info("wrote %s: %d layers, positions %d -> %d (%s), attention window %s", output_dir,
                len(roberta.encoder.sentence_encoder.layers), cfg.model.roberta_max_positions,
                options.max_positions, options.position_init, options.attention_window)
    return longformer


def _check_options(options: ConversionOptions) -> None:
    if options.max_positions < 1:
        raise ConversionError(f"--max-positions must be >= 1, got {options.max_positions}")
    if options.position_init not in ("copy", "random"):
        raise ConversionError(f"--position-init must be 'copy' or 'random', got {options.position_init!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-convert-roberta", description=__doc__.split("\n\n")[0])
    add_input_output_flags(parser, "fairseq RoBERTa directory (model.pt, dict.txt)",
                           "directory to write the Longformer model to",
                           overwrite_help="replace an existing OUTPUT/model.pt")
    parser.add_argument("--max-positions", type=int, default=4096, help="new maximum sequence length (default 4096)")
    parser.add_argument("--attention-window", default="512",
                        help="sliding window per layer, even (default 512); one value or a comma list per layer")
    parser.add_argument("--position-init", choices=("copy", "random"), default="copy",
                        help="new position rows: copies of RoBERTa's (paper) or random (Table 6 ablation)")
    parser.add_argument("--seed", type=int, default=1, help="seed for --position-init random")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    options = ConversionOptions(args.max_positions, str(args.attention_window), args.position_init, args.seed)
    run_tool("longformer-convert-roberta", lambda: convert(args.input, args.output, options, overwrite=args.overwrite))


if __name__ == "__main__":
    main(sys.argv[1:])
