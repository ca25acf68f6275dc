"""``longformer_bart``: LED, the Longformer-Encoder-Decoder (Longformer paper (Beltagy et al., 2020), §7).

fairseq's BART with every encoder self-attention replaced by Longformer attention (a sliding window
per layer plus global attention per token); the decoder is fairseq's own, so it keeps full masked
self-attention over what it decoded and full cross-attention over every encoder state, and incremental
decoding, beam search, ``fairseq-generate``/``fairseq-interactive`` and the hub work unchanged. Every
parameter keeps BART's name (a BART state dict with extended encoder positions loads strictly, see
``convert_bart.py``); each encoder layer adds the global projections ``q_global``/``k_global``/``v_global``.

Global attention reaches the encoder without a custom task: by default it is computed from
``src_tokens`` (``--source-global-attention cls``: the first source token, ``<s>`` in data from
``longformer-prep-summarization``), so ``--task translation`` works as is. A ``global_attention_mask``
passed to ``forward`` overrides the default.
"""

from __future__ import annotations

from argparse import Namespace

import torch
from omegaconf import OmegaConf

from fairseq.data import LanguagePairDataset
from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart.hub_interface import BARTHubInterface
from fairseq.models.bart.model import BARTModel, bart_base_architecture, bart_large_architecture
from fairseq.utils import safe_getattr

from ..tasks.global_attention import GLOBAL_ATTENTION_MODES, global_attention_mask
from .longformer_roberta import (
    LoadsLocalDirectory,
    LongformerTransformerEncoder,
    add_encoder_attention_args,
    encoder_attention_defaults,
)


def source_global_attention_mask(src_tokens: torch.Tensor, mode: str, eos: int, pad: int) -> torch.Tensor:
    """The task rule (``global_attention_mask``) applied to each row's tokens, wherever its padding is.

    fairseq's ``translation`` task left-pads sources by default, so "the first token" of a row is not at
    index 0 there. Rows are rotated left by their count of leading pads, the one rule is applied to the
    left-aligned rows, and the mask is rotated back.
    """
    check_global_attention_mode(mode)
    padding = src_tokens.eq(pad)
    leading = padding.long().cumprod(dim=-1).sum(dim=-1, keepdim=True)  # [B, 1] leading pads per row
    length = src_tokens.shape[-1]
    positions = torch.arange(length, device=src_tokens.device).unsqueeze(0)
    left_aligned = src_tokens.gather(-1, (positions + leading) % length)
    mask = global_attention_mask(left_aligned, mode, eos, pad)
    return mask.gather(-1, (positions - leading) % length) & ~padding


def check_global_attention_mode(mode: str) -> str:
    if mode not in GLOBAL_ATTENTION_MODES:
        raise ValueError(f"--source-global-attention {mode!r}: choose one of {', '.join(GLOBAL_ATTENTION_MODES)}")
    return mode


class LongformerBartEncoder(LongformerTransformerEncoder):
    """BART's encoder (embedding scale, ``layernorm_embedding``, post-norm layers) with Longformer layers."""

    def __init__(self, cfg, dictionary, embed_tokens):
        super().__init__(cfg, dictionary, embed_tokens)
        self.global_attention_mode = check_global_attention_mode(cfg.source_global_attention)

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens=False, token_embeddings=None,
                global_attention_mask=None):
        if global_attention_mask is None:
            global_attention_mask = source_global_attention_mask(
                src_tokens, self.global_attention_mode, self.dictionary.eos(), self.padding_idx
            )
        return super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings,
                               global_attention_mask=global_attention_mask)


@register_model("longformer_bart")
class LongformerBartModel(LoadsLocalDirectory, BARTModel):
    hub_loader = "load_longformer_bart"

    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)  # has --checkpoint-activations / --offload-activations
        add_encoder_attention_args(parser)
        parser.add_argument("--source-global-attention", choices=GLOBAL_ATTENTION_MODES, metavar="MODE",
                            help="source tokens with global attention when the batch gives no mask: cls (the "
                                 "first source token, default), first-segment (up to the first </s>) or none")

    @classmethod
    def build_model(cls, args, task):
        if OmegaConf.is_config(args):
            # fairseq-hydra-train hands legacy models a DictConfig; TransformerConfig.from_namespace keeps
            # extra arguments (attention_window, ...) only from a Namespace
            args = Namespace(**OmegaConf.to_container(args, resolve=True))
        if safe_getattr(args, "task", None) is None:
            # BART's state-dict upgrade reads args.task; fairseq-train's flat namespace has it, hydra's does not
            args.task = safe_getattr(getattr(task, "cfg", None), "_name", None)
        base_architecture(args)
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens):
        # cfg is fairseq's TransformerConfig; it keeps the extra (Longformer) arguments as attributes
        return LongformerBartEncoder(cfg, src_dict, embed_tokens)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, features_only: bool = False,
                classification_head_name=None, token_embeddings=None, return_all_hiddens: bool = True,
                alignment_layer=None, alignment_heads=None, global_attention_mask=None):
        """BART's forward, with ``global_attention_mask`` (bool ``[B, T_src]``) handed to the encoder."""
        if classification_head_name is not None:
            features_only = True
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, token_embeddings=token_embeddings,
                                   return_all_hiddens=return_all_hiddens,
                                   global_attention_mask=global_attention_mask)
        x, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                                alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                                src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)
        if classification_head_name is not None:
            # as BART: the decoder state at each row's last </s> of the source
            last_eos = x[src_tokens.eq(self.eos), :].view(x.size(0), -1, x.size(-1))[:, -1, :]
            x = self.classification_heads[classification_head_name](last_eos)
        return x, extra


class LongformerBartHubInterface(BARTHubInterface):
    """BART's hub interface (``sample``, ``generate``, ``encode``/``decode``) for an LED directory."""

    def encode(self, sentence: str, *addl_sentences, no_separator: bool = True) -> torch.LongTensor:
        """``<s> sentence </s>`` as BART's ``encode``, truncated to the *source* length.

        BART's own truncates to the smaller of its source and target lengths (1,024 both in BART), which
        would cut LED's 16K-token sources to its 1,024 target positions.
        """
        tokens = self.bpe.encode(sentence).split(" ")[: self.max_positions[0] - 2]
        text = "<s> " + " ".join(tokens) + " </s>"
        for extra in addl_sentences:
            text += ("" if no_separator else " </s>") + " " + self.bpe.encode(extra) + " </s>"
        return self.task.source_dictionary.encode_line(text, append_eos=False).long()

    def _build_batches(self, tokens, skip_invalid_size_inputs: bool):
        """fairseq's batching over a ``LanguagePairDataset`` of the sources, whatever the task.

        A converted directory carries BART's ``denoising`` task, whose inference dataset needs
        ``np.compat`` (gone in numpy 2); the translation task's dataset has the same batch layout.
        """
        lengths = torch.LongTensor([t.numel() for t in tokens])
        dataset = LanguagePairDataset(tokens, lengths, self.task.source_dictionary,
                                      tgt_dict=self.task.target_dictionary)
        return self.task.get_batch_iterator(
            dataset=dataset, max_tokens=self.cfg.dataset.max_tokens, max_sentences=self.cfg.dataset.batch_size,
            max_positions=self.max_positions, ignore_invalid_inputs=skip_invalid_size_inputs,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)


def _longformer_defaults(args):
    encoder_attention_defaults(args, "1024")  # paper §7: window 1,024
    args.source_global_attention = safe_getattr(args, "source_global_attention", "cls")
    args.max_source_positions = safe_getattr(args, "max_source_positions", 16384)


@register_model_architecture("longformer_bart", "longformer_bart")
def base_architecture(args):
    _longformer_defaults(args)
    bart_base_architecture(args)


@register_model_architecture("longformer_bart", "longformer_bart_base")
def longformer_bart_base_architecture(args):
    base_architecture(args)


@register_model_architecture("longformer_bart", "longformer_bart_large")
def longformer_bart_large_architecture(args):
    _longformer_defaults(args)
    bart_large_architecture(args)
