"""What the converters (``longformer-convert-roberta``, ``longformer-convert-bart``, the HF import/export) share.

Reading the source directory the way fairseq reads it (its task, its model class, ``load_state_dict``
with fairseq's key upgrades, so released and current checkpoint layouts both work); growing learned
positions by copying the source's rows while the padding-offset rows stay; starting the global
projections as copies of the local ones; and writing the result (``model.pt`` plus the dictionary and
tokenizer files) atomically.
"""

from __future__ import annotations

import os
import shutil
from argparse import Namespace

import torch
from omegaconf import OmegaConf, open_dict

import fairseq_longformer  # noqa: F401  registers the plugin, allows fairseq types in torch.load
from data_prep.atomic import atomic_file
from data_prep.flags import run_tool as run_cli_tool
from fairseq import checkpoint_utils, tasks

from .models.longformer_roberta import PADDING_OFFSET_ROWS, parse_attention_windows
from .modules.longformer_self_attention import GLOBAL_PROJECTIONS, LOCAL_PROJECTIONS

COPIED_FILES = ("dict.txt", "encoder.json", "vocab.bpe", "sentencepiece.bpe.model")


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


def load_source_model(directory: str, model_class: type, family: str, archs: str):
    """``(cfg, task, model)`` from ``directory/model.pt`` + ``dict.txt``, refusing other model types.

    ``family`` ("RoBERTa", "BART") and ``archs`` (e.g. "bart_base/bart_large") word the refusals.
    """
    checkpoint = os.path.join(directory, "model.pt")
    state = read_checkpoint(checkpoint, directory, f"a fairseq {family} directory with model.pt and dict.txt")
    name = model_name(state["cfg"].model)
    from fairseq.models import ARCH_MODEL_REGISTRY

    if ARCH_MODEL_REGISTRY.get(name) is not model_class:
        raise ConversionError(
            f"{checkpoint} holds a {name!r} model, not a {family} one (arch {archs}); "
            f"only fairseq {family} checkpoints can be converted"
        )
    task, model = build_from_checkpoint(state, directory, checkpoint)
    return state["cfg"], task, model


def extend_positions(weight: torch.Tensor, max_positions: int, position_init: str = "copy",
                     seed: int = 1) -> torch.Tensor:
    """``[P+2, C] -> [M+2, C]``: rows 0-1 (fairseq's padding offset) kept, rows ``2..`` tiled from the
    source's P rows (a partial last copy when the lengths do not divide), or drawn at random."""
    source_rows = weight.shape[0] - PADDING_OFFSET_ROWS
    new = weight.new_empty(max_positions + PADDING_OFFSET_ROWS, weight.shape[1])
    new[: weight.shape[0]] = weight
    learned = weight[PADDING_OFFSET_ROWS:]
    if position_init == "copy":
        for start in range(source_rows, max_positions, source_rows):
            n = min(source_rows, max_positions - start)
            new[PADDING_OFFSET_ROWS + start: PADDING_OFFSET_ROWS + start + n] = learned[:n]
    else:
        generator = torch.Generator().manual_seed(seed)
        # BERT's initialisation (fairseq's init_bert_params): N(0, 0.02)
        rest = new[weight.shape[0]:]
        rest.copy_(torch.randn(rest.shape, generator=generator, dtype=torch.float32).mul_(0.02).to(rest.dtype))
    return new


def source_positions(weight: torch.Tensor) -> int:
    """Positions a learned position table serves (its rows minus the padding offset)."""
    return weight.shape[0] - PADDING_OFFSET_ROWS


def copy_global_projections(state: dict, attention_prefixes) -> None:
    """``q_global``/``k_global``/``v_global`` of each attention start as copies (own tensors) of q/k/v."""
    for prefix in attention_prefixes:
        for local, global_ in zip(LOCAL_PROJECTIONS, GLOBAL_PROJECTIONS):
            for kind in ("weight", "bias"):
                state[f"{prefix}{global_}.{kind}"] = state[f"{prefix}{local}.{kind}"].clone()


def check_positions(max_positions: int, source: int, flag: str) -> None:
    if max_positions < 1:
        raise ConversionError(f"{flag} must be >= 1, got {max_positions}")
    if max_positions < source:
        raise ConversionError(
            f"{flag} {max_positions} is smaller than the source's {source}; positions can only be extended"
        )


def check_windows(attention_window: str, num_layers: int) -> None:
    try:
        parse_attention_windows(attention_window, num_layers)
    except ValueError as err:
        raise ConversionError(str(err)) from None


def converted_cfg(cfg, arch: str, model_updates: dict, task_updates: dict):
    """A copy of the source config with the model switched to ``arch`` and the given fields set (task
    fields only where the source's task has them)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg), flags={"allow_objects": True})
    model_cfg = cfg.model
    if not isinstance(model_cfg, Namespace):
        model_cfg = Namespace(**OmegaConf.to_container(model_cfg, resolve=True))
    for key, value in {"_name": arch, "arch": arch, **model_updates}.items():
        setattr(model_cfg, key, value)
    with open_dict(cfg):
        cfg.model = model_cfg
        for key, value in task_updates.items():
            if key in cfg.task:
                cfg.task[key] = value
    return cfg


def check_output(input_dir: str, output_dir: str, overwrite: bool) -> None:
    if os.path.abspath(input_dir) == os.path.abspath(output_dir):
        raise ConversionError("--output must differ from --input (the source directory is never modified)")
    if os.path.exists(os.path.join(output_dir, "model.pt")) and not overwrite:
        raise ConversionError(f"{output_dir}/model.pt exists; pass --overwrite or choose another --output")


def write_converted(input_dir: str, output_dir: str, cfg, model_state: dict, criterion_name: str) -> None:
    """``output_dir/model.pt`` (a fairseq checkpoint at update 0) and the source's dictionary/BPE files,
    each written under a temporary name and renamed."""
    os.makedirs(output_dir, exist_ok=True)
    for name in COPIED_FILES:
        source = os.path.join(input_dir, name)
        if os.path.isfile(source):
            with atomic_file(os.path.join(output_dir, name)) as tmp:
                shutil.copyfile(source, tmp)
    with atomic_file(os.path.join(output_dir, "model.pt")) as tmp:
        torch.save(fairseq_checkpoint(cfg, model_state, criterion_name), tmp)


def fairseq_checkpoint(cfg, model_state: dict, criterion_name: str = "MaskedLmLoss") -> dict:
    """A fairseq checkpoint with no optimizer state, at update 0 (load with the --reset-* flags)."""
    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model_state,
        "optimizer_history": [{
            "criterion_name": criterion_name, "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": None}, "num_updates": 0,
        }],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2, "shuffle": True}},
        "last_optimizer_state": None,
    }


def run_tool(prog: str, action) -> None:
    """Run a conversion tool's ``action()`` with fairseq's log format; a ConversionError exits with its message."""
    run_cli_tool(prog, action, ConversionError)


def model_name(model_cfg) -> str | None:
    if isinstance(model_cfg, Namespace):
        return getattr(model_cfg, "_name", None) or getattr(model_cfg, "arch", None)
    return model_cfg.get("_name") or model_cfg.get("arch")
