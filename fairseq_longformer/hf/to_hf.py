"""``longformer-export-hf``: a ``longformer_roberta`` directory -> a Hugging Face ``transformers`` directory.

The input is what ``longformer-convert-roberta`` writes, or a training save dir (``--checkpoint-file
checkpoint_best.pt``, fp16 checkpoints too) with the ``dict.txt``, ``encoder.json`` and ``vocab.bpe`` the model
was trained with. The output loads with ``AutoModelForMaskedLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` (no network): ``config.json`` with every field written out,
``model.safetensors`` (float32) and the tokenizer files. What HF's Longformer cannot compute is refused
before anything is written; the output folder appears whole or not at all.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from data_prep.atomic import (
    check_output_dir,
    staged_dir,
    write_json_atomic,
    write_text_atomic,
)
from data_prep.flags import add_input_output_flags

from ..conversion import (
    ConversionError,
    build_from_checkpoint,
    model_name,
    read_checkpoint,
    run_tool,
)
from ..models.longformer_roberta import LongformerRobertaModel
from ..modules.per_layer import per_layer
from . import mapping
from .vocab import Gpt2Bpe, VocabularyError, hf_vocab, merges_text

logger = logging.getLogger("fairseq_longformer.hf.to_hf")


def check_exportable(model_cfg) -> list[int]:
    """Refuse what HF's ``LongformerModel`` cannot compute; returns the per-layer windows."""
    name = model_name(model_cfg)
    from fairseq.models import ARCH_MODEL_REGISTRY

    if ARCH_MODEL_REGISTRY.get(name) is not LongformerRobertaModel:
        raise ConversionError(
            f"the checkpoint holds a {name!r} model; only longformer_roberta models can be exported. HF's "
            "Longformer is a bidirectional RoBERTa encoder: it has no causal attention, no dilation and no "
            "relative positions (the character-level longformer_lm uses all three)"
        )
    def get(key, default=None):
        return getattr(model_cfg, key, default)

    layers = get("encoder_layers")
    dilation = per_layer(get("attention_dilation", 1), layers, "--attention-dilation", minimum=1)
    if any(d != 1 for d in dilation):
        raise ConversionError(f"dilation {dilation}: HF's Longformer has no dilated attention")
    if get("encoder_normalize_before", False):
        raise ConversionError(
            "the model is pre-LayerNorm (--encoder-normalize-before); HF's Longformer layers are post-LayerNorm "
            "like RoBERTa's and would compute a different function with these weights"
        )
    if get("activation_fn", "gelu") != "gelu":
        raise ConversionError(
            f"activation {get('activation_fn')!r}: HF's Longformer LM head always applies gelu, so only "
            "models trained with --activation-fn gelu are exported"
        )
    if get("untie_weights_roberta", False):
        raise ConversionError("--untie-weights-roberta: HF ties the LM head's output weights to the word embeddings")
    if not get("layernorm_embedding", True) or not get("no_scale_embedding", True) or \
            get("no_token_positional_embeddings", False) or not get("encoder_learned_pos", True):
        raise ConversionError(
            "HF's Longformer embeddings are RoBERTa's: learned positions, LayerNorm on the embeddings and no "
            "sqrt(dim) scaling; this model differs (layernorm_embedding / no_scale_embedding / encoder_learned_pos)"
        )
    try:
        windows = per_layer(get("attention_window", 512), layers, "--attention-window", minimum=0)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    _check_windows(windows)
    return windows


def _check_windows(windows: list[int]) -> None:
    for layer, w in enumerate(windows):
        why = None
        if w <= 0:
            why = "HF asserts attention_window > 0 (a window-0 layer, each token seeing itself, has no HF form)"
        elif w % 2:
            why = "HF splits the window evenly, w/2 keys on each side, and asserts it is even"
        elif w == 2:
            why = "HF's sliding-chunk code fails for one key on each side"
        if why:
            raise ConversionError(f"layer {layer} has attention window {w}: {why}")
    largest = max(windows)
    uneven = sorted({w for w in windows if largest % w})
    if uneven:
        raise ConversionError(
            f"per-layer windows {windows}: HF pads every input to a multiple of the largest window ({largest}) "
            f"and asserts each layer's length is a multiple of its own window, which fails for {uneven}"
        )


def load_fairseq_model(input_dir: str, checkpoint_file: str):
    """The checked config, the model loaded strictly from the checkpoint, its task (with the dictionary), windows."""
    path = os.path.join(input_dir, checkpoint_file)
    state = read_checkpoint(path, input_dir, "a directory holding the checkpoint (--checkpoint-file, default "
                                            "model.pt) and the dict.txt it was trained with")
    windows = check_exportable(state["cfg"].model)
    task, model = build_from_checkpoint(state, input_dir, path)
    return state["cfg"], model.float().eval(), task, windows


def hf_config_fields(model_cfg, windows: list[int], vocab_size: int, dictionary_size: int, positions: int) -> dict:
    fields = {hf: getattr(model_cfg, fs) for hf, fs in mapping.CONFIG_FIELDS.items()}
    fields.update(mapping.ROBERTA_FIELDS)
    fields.update(
        architectures=["LongformerForMaskedLM"], vocab_size=vocab_size, attention_window=windows,
        max_position_embeddings=positions, layer_norm_eps=mapping.LAYER_NORM_EPS,
    )
    if vocab_size != dictionary_size:
        fields[mapping.DICTIONARY_SIZE] = dictionary_size
    return fields


def export(input_dir: str, output_dir: str, checkpoint_file: str = "model.pt", overwrite: bool = False) -> None:
    try:
        check_output_dir(output_dir, overwrite)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    cfg, model, task, windows = load_fairseq_model(input_dir, checkpoint_file)
    encoder = model.encoder.sentence_encoder
    _check_layer_norms(model)
    for key in ("activation_dropout", "encoder_layerdrop"):
        if getattr(cfg.model, key, 0):
            logger.warning("%s=%s has no HF counterpart and is dropped (it only acts in training)",
                           key, getattr(cfg.model, key))
    if model.classification_heads:
        logger.warning("classification heads %s are not exported (only the masked-LM model is)",
                       sorted(model.classification_heads))

    dictionary = task.source_dictionary
    try:
        bpe = Gpt2Bpe.read(input_dir)
        vocab, n = hf_vocab([dictionary[i] for i in range(len(dictionary))], bpe)
    except VocabularyError as err:
        raise ConversionError(str(err)) from None
    state = _with_unk_aliases(model.state_dict(), len(vocab) - n)
    positions = encoder.embed_positions.weight.shape[0]
    fields = hf_config_fields(cfg.model, windows, len(vocab), n, positions)
    hf_model, tokenizer = _build_hf(fields, mapping.to_hf_state(state, len(encoder.layers)), vocab, bpe.merges,
                                    positions - mapping.POSITION_OFFSET)
    with staged_dir(output_dir, overwrite) as staging:
        hf_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # the classic files too, for tools that read them rather than tokenizer.json
        write_json_atomic(os.path.join(staging, "vocab.json"), vocab, indent=None)
        write_text_atomic(os.path.join(staging, "merges.txt"), merges_text(bpe.merges))
    logger.info("wrote %s: %d layers, windows %s, %d positions, vocabulary %d (%d BPE tokens fairseq maps to <unk>)",
                output_dir, len(encoder.layers), windows, positions - mapping.POSITION_OFFSET, len(vocab),
                len(vocab) - n)


def _check_layer_norms(model) -> None:
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    if eps != {mapping.LAYER_NORM_EPS}:
        raise ConversionError(f"LayerNorm eps {sorted(eps)}: HF's config has one layer_norm_eps for all of them")


def _with_unk_aliases(state: dict, aliases: int) -> dict:
    """Rows for the BPE tokens fairseq maps to ``<unk>``: copies of ``<unk>``'s embedding and output bias."""
    if not aliases:
        return state
    state = dict(state)
    for key in (mapping.FAIRSEQ_ENCODER + "embed_tokens.weight", "encoder.lm_head.bias"):
        weight = state[key]
        state[key] = torch.cat([weight, weight[3:4].expand(aliases, *weight.shape[1:])])
    state[mapping.FAIRSEQ_TIED_OUTPUT] = state[mapping.FAIRSEQ_ENCODER + "embed_tokens.weight"]
    return state


def _build_hf(fields: dict, state: dict, vocab: dict, merges: list, max_length: int):
    """The HF model with our weights (loaded strictly) and the tokenizer, in memory."""
    from transformers import LongformerConfig, LongformerForMaskedLM, RobertaTokenizer

    model = LongformerForMaskedLM(LongformerConfig(**fields))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConversionError(f"internal error: HF names do not line up (missing {missing}, unexpected {unexpected})")
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    return model, tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-export-hf", description=__doc__.split("\n\n")[0])
    add_input_output_flags(parser, "longformer_roberta directory: checkpoint, dict.txt, encoder.json, vocab.bpe",
                           "HF directory to write (must not exist or be empty)")
    parser.add_argument("--checkpoint-file", default="model.pt",
                        help="checkpoint inside --input (default model.pt; e.g. checkpoint_best.pt)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    run_tool("longformer-export-hf", lambda: export(args.input, args.output, args.checkpoint_file, args.overwrite))


if __name__ == "__main__":
    main(sys.argv[1:])
