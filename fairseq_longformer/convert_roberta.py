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
import os
import shutil
import sys
from argparse import Namespace
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf, open_dict

import fairseq_longformer  # noqa: F401  registers the plugin, allows fairseq types in torch.load
from data_prep.atomic import atomic_file
from fairseq import checkpoint_utils, tasks
from fairseq.models.roberta import RobertaModel

from .models.longformer_roberta import PADDING_OFFSET_ROWS, parse_attention_windows
from .modules.longformer_self_attention import GLOBAL_PROJECTIONS, LOCAL_PROJECTIONS

logger = logging.getLogger("fairseq_longformer.convert_roberta")

POSITIONS_KEY = "encoder.sentence_encoder.embed_positions.weight"
COPIED_FILES = ("dict.txt", "encoder.json", "vocab.bpe", "sentencepiece.bpe.model")
ARCH_MAP = {"roberta_large": "longformer_roberta_large"}  # everything else -> longformer_roberta_base


@dataclass
class ConversionOptions:
    max_positions: int = 4096
    attention_window: str = "512"
    position_init: str = "copy"  # "copy" (paper) or "random" (Table 6's ablation row)
    seed: int = 1


class ConversionError(ValueError):
    """The input cannot be converted; the message says why and what to do."""


def read_checkpoint(path: str, data_dir: str, what: str) -> dict:
    """A fairseq checkpoint with its ``cfg`` and weights; ``path`` and ``data_dir/dict.txt`` must exist (``what``
    says what ``--input`` must hold)."""
    for needed in (path, os.path.join(data_dir, "dict.txt")):
        if not os.path.isfile(needed):
            raise ConversionError(f"{needed} not found: --input must be {what}")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as err:  # unpickling errors come in many types
        raise ConversionError(f"{path} is not a readable fairseq checkpoint ({type(err).__name__}: {err})") from err
    cfg = state.get("cfg")
    if cfg is None or cfg.get("model") is None or "model" not in state:
        raise ConversionError(f"{path} has no model config/weights; is it a fairseq model checkpoint?")
    return state


def build_from_checkpoint(state: dict, data_dir: str, path: str):
    """``(task, model)``: the checkpoint's own config with the dictionary of ``data_dir``, weights loaded strictly."""
    cfg = state["cfg"]
    with open_dict(cfg):
        cfg.task.data = os.path.abspath(data_dir)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    try:
        model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    except RuntimeError as err:
        raise ConversionError(f"{path} does not match its own config: {err}") from err
    return task, model


def load_roberta(roberta_dir: str):
    """Return ``(cfg, task, RobertaModel)`` read from ``roberta_dir/model.pt`` and ``dict.txt``."""
    checkpoint = os.path.join(roberta_dir, "model.pt")
    state = read_checkpoint(checkpoint, roberta_dir, "a fairseq RoBERTa directory with model.pt and dict.txt")
    name = model_name(state["cfg"].model)
    from fairseq.models import ARCH_MODEL_REGISTRY

    if ARCH_MODEL_REGISTRY.get(name) is not RobertaModel:
        raise ConversionError(
            f"{checkpoint} holds a {name!r} model, not a RoBERTa one (arch roberta/roberta_base/roberta_large); "
            "only fairseq RoBERTa checkpoints can be converted"
        )
    task, model = build_from_checkpoint(state, roberta_dir, checkpoint)
    return state["cfg"], task, model


def longformer_state_dict(roberta_state: dict, num_layers: int, options: ConversionOptions) -> dict:
    """RoBERTa weights (current fairseq names) -> Longformer weights: positions extended, Qg/Kg/Vg copied."""
    state = {k: v.clone() for k, v in roberta_state.items()}
    state[POSITIONS_KEY] = extend_positions(roberta_state[POSITIONS_KEY], options)
    for layer in range(num_layers):
        prefix = f"encoder.sentence_encoder.layers.{layer}.self_attn."
        for local, global_ in zip(LOCAL_PROJECTIONS, GLOBAL_PROJECTIONS):
            for kind in ("weight", "bias"):
                state[f"{prefix}{global_}.{kind}"] = roberta_state[f"{prefix}{local}.{kind}"].clone()
    return state


def extend_positions(weight: torch.Tensor, options: ConversionOptions) -> torch.Tensor:
    """``[P+2, C] -> [M+2, C]``: rows 0-1 kept, rows ``2..`` tiled from RoBERTa's P rows (or random)."""
    source_rows = weight.shape[0] - PADDING_OFFSET_ROWS
    target = options.max_positions
    new = weight.new_empty(target + PADDING_OFFSET_ROWS, weight.shape[1])
    new[: weight.shape[0]] = weight
    learned = weight[PADDING_OFFSET_ROWS:]
    if options.position_init == "copy":
        for start in range(source_rows, target, source_rows):
            n = min(source_rows, target - start)
            new[PADDING_OFFSET_ROWS + start: PADDING_OFFSET_ROWS + start + n] = learned[:n]
    else:
        generator = torch.Generator().manual_seed(options.seed)
        # BERT's initialisation (fairseq's init_bert_params): N(0, 0.02)
        rest = new[weight.shape[0]:]
        rest.copy_(torch.randn(rest.shape, generator=generator, dtype=torch.float32).mul_(0.02).to(rest.dtype))
    return new


def longformer_cfg(cfg, source_positions: int, options: ConversionOptions):
    """The source config with the model switched to ``longformer_roberta`` and the lengths raised."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg), flags={"allow_objects": True})
    model_cfg = cfg.model
    if not isinstance(model_cfg, Namespace):
        model_cfg = Namespace(**OmegaConf.to_container(model_cfg, resolve=True))
    arch = ARCH_MAP.get(getattr(model_cfg, "arch", None) or model_name(cfg.model), "longformer_roberta_base")
    updates = dict(
        _name=arch, arch=arch,
        max_positions=options.max_positions, max_source_positions=options.max_positions,
        tokens_per_sample=options.max_positions,
        attention_window=options.attention_window, attention_backend="auto",
        roberta_max_positions=source_positions, freeze_roberta=False,
    )
    for key, value in updates.items():
        setattr(model_cfg, key, value)
    with open_dict(cfg):
        cfg.model = model_cfg
        cfg.task.tokens_per_sample = options.max_positions
    return cfg


def build_longformer(roberta_dir: str, options: ConversionOptions):
    """Convert in memory: returns ``(cfg, longformer_model, roberta_model)``; nothing is written."""
    _check_options(options)
    cfg, _, roberta = load_roberta(roberta_dir)
    source_positions = roberta.encoder.sentence_encoder.embed_positions.weight.shape[0] - PADDING_OFFSET_ROWS
    if options.max_positions < source_positions:
        raise ConversionError(
            f"--max-positions {options.max_positions} is smaller than the source's {source_positions}; "
            "positions can only be extended"
        )
    num_layers = len(roberta.encoder.sentence_encoder.layers)
    try:
        parse_attention_windows(options.attention_window, num_layers)
    except ValueError as err:
        raise ConversionError(str(err)) from None

    new_cfg = longformer_cfg(cfg, source_positions, options)
    new_state = longformer_state_dict(roberta.state_dict(), num_layers, options)
    longformer = tasks.setup_task(new_cfg.task).build_model(new_cfg.model)
    longformer.load_state_dict(new_state, strict=True, model_cfg=new_cfg.model)  # proves the names line up
    return new_cfg, longformer, roberta


def convert(input_dir: str, output_dir: str, options: ConversionOptions, overwrite: bool = False):
    """Convert and write ``output_dir`` (``model.pt`` + ``dict.txt`` + BPE files); returns the model."""
    if os.path.abspath(input_dir) == os.path.abspath(output_dir):
        raise ConversionError("--output must differ from --input (the source directory is never modified)")
    if os.path.exists(os.path.join(output_dir, "model.pt")) and not overwrite:
        raise ConversionError(f"{output_dir}/model.pt exists; pass --overwrite or choose another --output")
    cfg, longformer, roberta = build_longformer(input_dir, options)

    os.makedirs(output_dir, exist_ok=True)
    for name in COPIED_FILES:
        source = os.path.join(input_dir, name)
        if os.path.isfile(source):
            with atomic_file(os.path.join(output_dir, name)) as tmp:
                shutil.copyfile(source, tmp)
    with atomic_file(os.path.join(output_dir, "model.pt")) as tmp:
        torch.save(fairseq_checkpoint(cfg, longformer.state_dict()), tmp)
    logger.info("wrote %s: %d layers, positions %d -> %d (%s), attention window %s", output_dir,
                len(roberta.encoder.sentence_encoder.layers), cfg.model.roberta_max_positions,
                options.max_positions, options.position_init, options.attention_window)
    return longformer


def fairseq_checkpoint(cfg, model_state: dict) -> dict:
    """A fairseq checkpoint with no optimizer state, at update 0 (load with the --reset-* flags)."""
    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model_state,
        "optimizer_history": [{
            "criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": None}, "num_updates": 0,
        }],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2, "shuffle": True}},
        "last_optimizer_state": None,
    }


def model_name(model_cfg) -> str | None:
    if isinstance(model_cfg, Namespace):
        return getattr(model_cfg, "_name", None) or getattr(model_cfg, "arch", None)
    return model_cfg.get("_name") or model_cfg.get("arch")


def _check_options(options: ConversionOptions) -> None:
    if options.max_positions < 1:
        raise ConversionError(f"--max-positions must be >= 1, got {options.max_positions}")
    if options.position_init not in ("copy", "random"):
        raise ConversionError(f"--position-init must be 'copy' or 'random', got {options.position_init!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-convert-roberta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="fairseq RoBERTa directory (model.pt, dict.txt)")
    parser.add_argument("--output", required=True, help="directory to write the Longformer model to")
    parser.add_argument("--max-positions", type=int, default=4096, help="new maximum sequence length (default 4096)")
    parser.add_argument("--attention-window", default="512",
                        help="sliding window per layer, even (default 512); one value or a comma list per layer")
    parser.add_argument("--position-init", choices=("copy", "random"), default="copy",
                        help="new position rows: copies of RoBERTa's (paper) or random (Table 6 ablation)")
    parser.add_argument("--seed", type=int, default=1, help="seed for --position-init random")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT/model.pt")
    return parser


def run_tool(prog: str, action) -> None:
    """Run a conversion tool's ``action()`` with fairseq's log format; a ConversionError exits with its message."""
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    try:
        action()
    except ConversionError as err:
        raise SystemExit(f"{prog}: error: {err}") from None


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    options = ConversionOptions(args.max_positions, str(args.attention_window), args.position_init, args.seed)
    run_tool("longformer-convert-roberta", lambda: convert(args.input, args.output, options, overwrite=args.overwrite))


if __name__ == "__main__":
    main(sys.argv[1:])
