"""Decoder-only character LM with causal windowed attention (Longformer paper §4, Table 12).

``--arch longformer_lm_small`` (12 layers) and ``longformer_lm_large`` (30 layers), 8 heads, 512
hidden, pre-LayerNorm, GeLU, Transformer-XL relative sinusoidal positions, per-layer window sizes
(small at the bottom, large at the top) and dilation on 2 heads of the upper layers. No absolute
position table and no ``buffered_future_mask``: causality lives in the attention op.
"""

# No `from __future__ import annotations` here: fairseq reads the dataclass field types at run time.
import copy
import functools
import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqDecoder, FairseqLanguageModel, register_model, register_model_architecture
from fairseq.utils import safe_getattr

from ..modules.causal_window_decoder_layer import CausalWindowDecoderLayer
from ..modules.per_layer import per_layer


# Table 12, small model, phase 1: windows 32 -> 512 bottom to top (averaging ~230, as the paper's phase-1
# ablation, Table 4; the staged configs double them), gaps 0/1/2/3 (dilation 1-4) on the top six layers.
SMALL_WINDOWS = [32, 32, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
SMALL_DILATIONS = [1] * 6 + [2, 2, 3, 3, 4, 4]


@dataclass
class LongformerLMConfig(FairseqDataclass):
    decoder_embed_dim: int = field(default=512, metadata={"help": "hidden size"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "feed-forward inner size"})
    decoder_layers: int = field(default=12, metadata={"help": "number of layers"})
    decoder_attention_heads: int = field(default=8, metadata={"help": "attention heads per layer"})
    attention_window: List[int] = field(
        default_factory=lambda: list(SMALL_WINDOWS),
        metadata={"help": "causal window per layer, bottom first (e.g. 32,64,128); one value = every layer"},
    )
    attention_dilation: List[int] = field(
        default_factory=lambda: list(SMALL_DILATIONS),
        metadata={"help": "dilation of the dilated heads per layer, bottom first (1 = none; the paper's "
                  "gap g is dilation g+1); one value = every layer"},
    )
    dilated_heads: int = field(default=2, metadata={"help": "how many heads per layer use the layer's dilation"})
    rel_pos_dim: int = field(
        default=0,
        metadata={"help": "sinusoid size of the relative position term per head; 0 = head size "
                  "(Transformer-XL uses the model size, 512: exact but about twice the attention cost)"},
    )
    dropout: float = field(default=0.2, metadata={"help": "dropout on embeddings and residual branches"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention probabilities"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the GeLU"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={"help": "tie input and output embeddings"})
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings by sqrt(dim)"})
    attention_backend: str = field(
        default="auto", metadata={"help": "longformer_attention backend: auto, torch, triton or dense"}
    )
    checkpoint_activations: bool = field(
        default=False,
        metadata={"help": "recompute each layer in the backward pass instead of storing its activations "
                  "(gradient checkpointing, as the paper used for long sequences): less memory, ~1/3 more compute"},
    )
    max_target_positions: int = field(
        default=1_000_000,
        metadata={"help": "longest sequence accepted; relative positions have no table, so this is only a guard"},
    )


@register_model("longformer_lm", dataclass=LongformerLMConfig)
class LongformerLanguageModel(FairseqLanguageModel):
    @classmethod
    def build_model(cls, cfg, task):
        return cls(LongformerLMDecoder(cfg, task.target_dictionary))


class LongformerLMDecoder(FairseqDecoder):
    def __init__(self, cfg, dictionary):
        super().__init__(dictionary)
        C, L, H = cfg.decoder_embed_dim, cfg.decoder_layers, cfg.decoder_attention_heads
        if C % H:
            raise ValueError(f"--decoder-embed-dim {C} must be divisible by --decoder-attention-heads {H}")
        if not 0 <= cfg.dilated_heads <= H:
            raise ValueError(f"--dilated-heads {cfg.dilated_heads} must lie in [0, {H}] (the number of heads)")
        windows = per_layer(cfg.attention_window, L, "--attention-window", minimum=1)
        dilations = per_layer(cfg.attention_dilation, L, "--attention-dilation", minimum=1)
        if cfg.rel_pos_dim < 0 or cfg.rel_pos_dim % 2:
            raise ValueError(f"--rel-pos-dim must be 0 (= head size) or a positive even number, got {cfg.rel_pos_dim}")
        self.windows, self.dilations = windows, dilations
        self.max_target_positions = cfg.max_target_positions
        self.padding_idx = dictionary.pad()

        self.embed_tokens = nn.Embedding(len(dictionary), C, padding_idx=self.padding_idx)
        nn.init.normal_(self.embed_tokens.weight, std=C ** -0.5)
        nn.init.zeros_(self.embed_tokens.weight[self.padding_idx])
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(C)
        self.dropout = cfg.dropout
        self.checkpoint_activations = cfg.checkpoint_activations
        self.layers = nn.ModuleList(
            CausalWindowDecoderLayer(
                C, cfg.decoder_ffn_embed_dim, H, window, dilation, cfg.dilated_heads,
                cfg.rel_pos_dim or None, cfg.dropout, cfg.attention_dropout, cfg.activation_dropout,
                cfg.attention_backend,
            )
            for window, dilation in zip(windows, dilations)
        )
        self.final_norm = nn.LayerNorm(C)  # pre-LN stacks need a last norm before the output layer
        self.output_projection = nn.Linear(C, len(dictionary), bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, std=C ** -0.5)

    def forward(self, src_tokens, src_lengths=None, features_only: bool = False, **kwargs):
        x = self.extract_features(src_tokens)
        if not features_only:
            x = self.output_layer(x)
        return x, {}

    def extract_features(self, src_tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` token ids -> ``[B, T, C]`` final hidden states."""
        if src_tokens.size(1) > self.max_target_positions:
            raise ValueError(
                f"sequence of {src_tokens.size(1)} tokens exceeds --max-target-positions {self.max_target_positions}"
            )
        padding = src_tokens.eq(self.padding_idx)
        # Right padding (fairseq's LM batches) cannot reach earlier tokens through a causal window,
        # but the mask keeps left-padded batches right as well; skip it when there is none.
        key_padding_mask = padding if padding.any() else None
        x = F.dropout(self.embed_scale * self.embed_tokens(src_tokens), self.dropout, self.training)
        x = x.transpose(0, 1)  # T x B x C
        for layer in self.layers:
            if self.checkpoint_activations and self.training:
                # non-reentrant checkpointing replays dropout with the same RNG state
                x = checkpoint(layer, x, key_padding_mask, use_reentrant=False)
            else:
                x = layer(x, key_padding_mask)
        return self.final_norm(x).transpose(0, 1)

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        return self.output_projection(features)

    def max_positions(self) -> int:
        return self.max_target_positions


# Each --arch's defaults; what the command line or a config sets wins.
ARCH_DEFAULTS = {
    # Table 12 small: 12 layers, phase-1 windows 32 -> 512, gaps 0/1/2/3 on layers 0-5/6-7/8-9/10-11.
    "longformer_lm_small": {
        "decoder_embed_dim": 512, "decoder_ffn_embed_dim": 2048, "decoder_layers": 12, "decoder_attention_heads": 8,
        "attention_window": SMALL_WINDOWS, "attention_dilation": SMALL_DILATIONS, "dilated_heads": 2, "dropout": 0.2,
    },
    # Table 12 large: 30 layers, phase-1 windows 32 -> 512, gaps 0/1/2/3 on layers 0-14/15-19/20-24/25-29.
    "longformer_lm_large": {
        "decoder_embed_dim": 512, "decoder_ffn_embed_dim": 2048, "decoder_layers": 30, "decoder_attention_heads": 8,
        "attention_window": [32] * 5 + [64] * 5 + [128] * 5 + [256] * 7 + [512] * 8,
        "attention_dilation": [1] * 15 + [2] * 5 + [3] * 5 + [4] * 5, "dilated_heads": 2, "dropout": 0.4,
    },
    # A 2-core CPU size for the demo and tests: 3 layers, 128 hidden, 4 heads.
    "longformer_lm_tiny": {
        "decoder_embed_dim": 128, "decoder_ffn_embed_dim": 512, "decoder_layers": 3, "decoder_attention_heads": 4,
        "attention_window": [16, 32, 64], "attention_dilation": [1, 1, 2], "dilated_heads": 2, "dropout": 0.1,
    },
}


def _set_defaults(args, **defaults) -> None:
    """Set each of ``defaults`` on ``args`` that ``args`` does not set already (a copy, so no arch shares a list)."""
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, copy.copy(value)))


for _arch, _defaults in ARCH_DEFAULTS.items():
    register_model_architecture("longformer_lm", _arch)(functools.partial(_set_defaults, **_defaults))
