"""``longformer-import-hf``: a Hugging Face Longformer directory -> a ``longformer_roberta`` directory.

Reads ``config.json``, the weights (``model.safetensors``, ``pytorch_model.bin`` or their sharded forms; keys
under ``longformer.``, ``roberta.`` or no prefix; ``LongformerForMaskedLM`` or a bare ``LongformerModel``; the
pooler is dropped) and the byte-level BPE tokenizer files, and writes ``model.pt`` (fairseq's checkpoint
format, update 0, no optimizer state) with ``dict.txt``, ``encoder.json`` and ``vocab.bpe``. The result loads
with ``LongformerRobertaModel.from_pretrained(DIR, bpe="gpt2")`` and continues training with
``fairseq-train --restore-file DIR/model.pt --reset-optimizer ...``. Needs no ``transformers``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from data_prep.atomic import check_output_dir, staged_dir
from data_prep.flags import add_input_output_flags

from ..conversion import ConversionError, fairseq_checkpoint, run_tool
from . import mapping
from .vocab import HfVocab, VocabularyError, write_dictionary

logger = logging.getLogger("fairseq_longformer.hf.from_hf")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PREFIXES = ("longformer.", "roberta.")  # allenai's original package saved under roberta.
ARCHS = {(12, 768, 3072, 12): "longformer_roberta_base", (24, 1024, 4096, 16): "longformer_roberta_large"}


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{path} not found: --input must be a Hugging Face model directory")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") != "longformer":
        raise ConversionError(f"{path} has model_type {config.get('model_type')!r}; only Longformer checkpoints "
                              "(model_type 'longformer') carry the global projections this model needs")
    checks = {
        "hidden_act": (config.get("hidden_act", "gelu"), "gelu", "fairseq's RoBERTa LM head and layers here use gelu"),
        "layer_norm_eps": (config.get("layer_norm_eps", 1e-12), mapping.LAYER_NORM_EPS,
                           "fairseq's LayerNorm uses 1e-5 (RoBERTa's value)"),
        "pad_token_id": (config.get("pad_token_id"), 1,
                         "fairseq's dictionary puts <pad> at 1 and numbers positions from it"),
    }
    for key, (value, wanted, why) in checks.items():
        if value != wanted:
            raise ConversionError(f"{path}: {key} is {value!r}, not {wanted!r}: {why}")
    return config


def read_weights(hf_dir: str) -> dict:
    """Every tensor of the checkpoint, keyed as ``LongformerForMaskedLM`` names them (``longformer.`` prefix)."""
    raw = None
    for name in WEIGHT_FILES:
        single, index = os.path.join(hf_dir, name), os.path.join(hf_dir, name + ".index.json")
        if os.path.isfile(single):
            raw = _load_file(single)
        elif os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            raw = {k: v for shard in shards for k, v in _load_file(os.path.join(hf_dir, shard)).items()}
        if raw is not None:
            break
    if raw is None:
        raise ConversionError(f"no weights in {hf_dir}: expected {' or '.join(WEIGHT_FILES)} (or a sharded index)")
    state, ignored = {}, []
    for key, value in raw.items():
        base = next((key[len(p):] for p in PREFIXES if key.startswith(p)), key)
        if base.startswith(("embeddings.", "encoder.")):
            state[mapping.HF_ENCODER + base] = value
        elif key.startswith("lm_head."):
            state[key] = value
        else:
            ignored.append(key)  # pooler, task heads
    if ignored:
        logger.info("ignoring %d tensors outside the encoder and LM head (e.g. %s)", len(ignored), ignored[:3])
    return state


def _load_file(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def check_weights(state: dict, config: dict, num_layers: int) -> None:
    """Shapes present, finite, the LM head tied; zeroes non-finite position rows no real token uses."""
    needed = [h for _, h in mapping.encoder_names(num_layers)] + [mapping.TOKEN_TYPES]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ConversionError(f"{len(missing)} Longformer weights are missing (e.g. {missing[:3]}); is this a "
                              "LongformerModel / LongformerForMaskedLM checkpoint?")
    positions = state[mapping.POSITIONS]
    unused = positions[: config["pad_token_id"] + 1]  # row 0 and the padding row: no real token reads them
    if not bool(torch.isfinite(unused).all()):
        logger.warning("position rows 0-%d (never used by a real token) are not finite; set to 0",
                       config["pad_token_id"])
        state[mapping.POSITIONS] = torch.cat([torch.nan_to_num(unused, 0.0, 0.0, 0.0),
                                              positions[config["pad_token_id"] + 1:]])
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConversionError(f"non-finite values (inf/nan) in {bad[:5]}; the checkpoint is damaged")
    for tied, source in mapping.HF_TIED_OUTPUT.items():
        if tied in state and source in state and not torch.equal(state[tied], state[source]):
            raise ConversionError(f"{tied} differs from {source}: the LM head is untied, but fairseq's RoBERTa "
                                  "ties the output weights to the word embeddings")


def fairseq_args(data_dir: str, config: dict, windows: list[int]):
    """The training arguments of a ``longformer_roberta`` with the checkpoint's sizes, as fairseq parses them."""
    sizes = tuple(config[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"))
    positions = config["max_position_embeddings"] - mapping.POSITION_OFFSET
    argv = [data_dir, "--task", "masked_lm", "--criterion", "masked_lm",
            "--arch", ARCHS.get(sizes, "longformer_roberta"),
            "--max-positions", str(positions), "--tokens-per-sample", str(positions),
            "--roberta-max-positions", str(positions), "--attention-window", ",".join(map(str, windows)),
            "--activation-fn", "gelu", "--activation-dropout", "0", "--optimizer", "adam", "--cpu"]
    for hf, fs in mapping.CONFIG_FIELDS.items():
        argv += ["--" + fs.replace("_", "-"), str(config[hf])]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


def layer_windows(config: dict) -> list[int]:
    layers, window = config["num_hidden_layers"], config.get("attention_window", 512)
    windows = window if isinstance(window, list) else [window] * layers
    if len(windows) != layers or any(not isinstance(w, int) or w < 0 or w % 2 for w in windows):
        raise ConversionError(f"attention_window {window} is not one even window per layer ({layers} layers)")
    return windows


def import_hf(input_dir: str, output_dir: str, overwrite: bool = False):
    """Convert and write ``output_dir``; returns the fairseq model (loaded strictly from what was written)."""
    try:
        check_output_dir(output_dir, overwrite)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    config = read_config(input_dir)
    layers, windows = config["num_hidden_layers"], layer_windows(config)
    state = read_weights(input_dir)
    check_weights(state, config, layers)
    n = config.get(mapping.DICTIONARY_SIZE, config["vocab_size"])
    try:
        bpe, symbols = HfVocab.read(input_dir).to_fairseq(n)
    except VocabularyError as err:
        raise ConversionError(f"{input_dir}: {err}") from None
    state = _without_unk_aliases(state, n)
    if mapping.fold_token_type(state):
        logger.info("folded the non-zero token-type row into every position row")
    if "lm_head.bias" not in state:
        logger.warning("no LM head in the checkpoint (a bare LongformerModel): the fairseq LM head starts "
                       "untrained; the encoder is exact")

    with staged_dir(output_dir, overwrite) as staging:
        write_dictionary(str(staging), symbols)
        bpe.write(str(staging))
        args = fairseq_args(str(staging), config, windows)
        task = tasks.setup_task(args)
        model = task.build_model(args)
        if len(task.source_dictionary) != n:
            raise ConversionError(f"internal error: dictionary of {len(task.source_dictionary)} entries, model {n}")
        fairseq_state = model.state_dict()
        fairseq_state.update(_fairseq_weights(state, layers, fairseq_state))
        model.load_state_dict(fairseq_state, strict=True, model_cfg=args)
        args.data = os.path.abspath(output_dir)
        torch.save(fairseq_checkpoint(convert_namespace_to_omegaconf(args), model.state_dict()),
                   os.path.join(staging, "model.pt"))
    logger.info("wrote %s: %d layers, windows %s, %d positions, dictionary %d", output_dir, layers, windows,
                config["max_position_embeddings"] - mapping.POSITION_OFFSET, n)
    return model


def _without_unk_aliases(state: dict, n: int) -> dict:
    """Drop the rows ``longformer-export-hf`` adds past fairseq's dictionary (copies of ``<unk>``'s, checked)."""
    vocab_rows = state[mapping.WORD_EMBEDDINGS].shape[0]
    if vocab_rows == n:
        return state
    rows = {k: state[k] for k in (mapping.WORD_EMBEDDINGS, "lm_head.bias") if k in state}
    if vocab_rows < n or any(not bool((w[n:] == w[3]).all()) for w in rows.values()):
        raise ConversionError(f"the embeddings have {vocab_rows} rows but {mapping.DICTIONARY_SIZE} says {n}, and "
                              f"rows {n}.. are not copies of <unk>'s row 3: the vocabulary does not fit fairseq's")
    return {**state, **{k: w[:n] for k, w in rows.items()}}


def _fairseq_weights(state: dict, layers: int, fresh: dict) -> dict:
    """HF weights under fairseq's names; the LM head from ``fresh`` (the new model's init) when there is none."""
    head = {h: fresh[f] for f, h in mapping.LM_HEAD.items() if h not in state}
    return mapping.to_fairseq_state({**state, **head}, layers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-import-hf", description=__doc__.split("\n\n")[0])
    add_input_output_flags(parser, "HF Longformer directory (config.json, weights, tokenizer)",
                           "directory to write model.pt, dict.txt and the BPE files")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    run_tool("longformer-import-hf", lambda: import_hf(args.input, args.output, overwrite=args.overwrite))


if __name__ == "__main__":
    main(sys.argv[1:])
