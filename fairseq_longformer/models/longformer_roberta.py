"""``longformer_roberta``: fairseq RoBERTa whose self-attention is Longformer attention (paper §5).

Everything but the attention keeps fairseq RoBERTa's modules and parameter names, so a RoBERTa
state dict (positions extended, see ``convert_roberta.py``) loads strictly. Each layer adds the
global projections ``q_global``/``k_global``/``v_global``. Global attention is chosen per token with
``global_attention_mask`` (bool ``[B, T]``) in ``forward``/``extract_features``; the
``longformer_masked_lm`` task can put it in ``net_input``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import RobertaEncoder, RobertaModel
from fairseq.models.roberta.model import base_architecture as roberta_base_architecture
from fairseq.models.transformer import TransformerConfig
from fairseq.models.transformer.transformer_encoder import TransformerEncoderBase
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import make_positions, safe_getattr

from ..modules.longformer_self_attention import GlobalTokens, LongformerSelfAttention
from ..modules.per_layer import per_layer
from ..modules.span_head import SpanHead, upgrade_span_heads

logger = logging.getLogger(__name__)

PADDING_OFFSET_ROWS = 2  # fairseq RoBERTa positions start at padding_idx + 1 = 2


def add_encoder_attention_args(parser) -> None:
    """The Longformer encoder-attention options of ``longformer_roberta`` and ``longformer_bart``."""
    parser.add_argument("--attention-window", type=str, metavar="W",
                        help="sliding-window size (total, even): one value or a comma list, one per layer")
    parser.add_argument("--attention-backend", type=str, metavar="NAME",
                        help="triton_kernels backend: auto (default), torch, triton or dense")


def encoder_attention_defaults(args, window: str) -> None:
    """Defaults for the options above and for activation checkpointing (offloading implies it)."""
    args.attention_window = safe_getattr(args, "attention_window", window)
    args.attention_backend = safe_getattr(args, "attention_backend", "auto")
    args.checkpoint_activations = safe_getattr(args, "checkpoint_activations", False)
    args.offload_activations = safe_getattr(args, "offload_activations", False)
    if args.offload_activations:
        args.checkpoint_activations = True


def parse_attention_windows(value, num_layers: int) -> list[int]:
    """``512`` / ``"512"`` / ``"32,32,64"`` / ``[32, 64]`` -> one even window per layer."""
    return per_layer(value, num_layers, "--attention-window", minimum=0, even=True)


class LongformerEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's post/pre-norm encoder layer with Longformer self-attention and a ``global_mask`` input."""

    def __init__(self, cfg, attention_window: int, backend: str):
        # build_self_attention runs inside the parent constructor and needs these two
        object.__setattr__(self, "_attention_window", attention_window)
        object.__setattr__(self, "_attention_backend", backend)
        super().__init__(cfg)

    def build_self_attention(self, embed_dim, cfg):
        return LongformerSelfAttention(
            embed_dim,
            cfg.encoder.attention_heads,
            self._attention_window,
            dropout=cfg.attention_dropout,
            backend=self._attention_backend,
        )

    def forward(self, x, encoder_padding_mask=None, global_mask=None, global_tokens=None):
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x = self.self_attn(x, key_padding_mask=encoder_padding_mask, global_mask=global_mask,
                           global_tokens=global_tokens)
        x = self.residual_connection(self.dropout_module(x), residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.activation_dropout_module(self.activation_fn(self.fc1(x)))
        x = self.residual_connection(self.dropout_module(self.fc2(x)), residual)
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x


class LongformerTransformerEncoder(TransformerEncoderBase):
    """RoBERTa's ``sentence_encoder`` (embeddings, layers) with Longformer layers."""

    def __init__(self, args, dictionary, embed_tokens):
        windows = parse_attention_windows(args.attention_window, args.encoder_layers)
        object.__setattr__(self, "_pending_windows", list(windows))
        self.args = args
        super().__init__(TransformerConfig.from_namespace(args), dictionary, embed_tokens)
        self.attention_windows = windows

    def build_encoder_layer(self, cfg):
        layer = LongformerEncoderLayer(cfg, self._pending_windows.pop(0), self.args.attention_backend)
        if cfg.checkpoint_activations:
            layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
        # as in fairseq: a checkpointed layer is always wrapped by FSDP
        return fsdp_wrap(layer, min_num_params=0 if cfg.checkpoint_activations else cfg.min_params_to_wrap)

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens=False, token_embeddings=None,
                global_attention_mask=None):
        padding_mask = src_tokens.eq(self.padding_idx)
        has_pads = bool(padding_mask.any())
        global_mask, global_tokens = _global_tokens(global_attention_mask, padding_mask)

        x, embedding = self.forward_embedding(src_tokens, token_embeddings)
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)  # B x T x C -> T x B x C

        states = [x] if return_all_hiddens else []
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=padding_mask if has_pads else None, global_mask=global_mask,
                      global_tokens=global_tokens)
            if return_all_hiddens:
                states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding_mask],
            "encoder_embedding": [embedding],
            "encoder_states": states,
            "fc_results": [],
            "src_tokens": [],
            "src_lengths": [(~padding_mask).sum(dim=1, dtype=torch.int32).reshape(-1, 1)],
        }


def _global_tokens(global_attention_mask, padding_mask):
    """Validate the user's mask -> ``(mask, GlobalTokens)``, both ``None`` when no token is global.

    Done once for all layers: the host syncs of the global path (the layers then skip Qg/Kg/Vg for an
    empty mask and find the global tokens without asking again).
    """
    if global_attention_mask is None:
        return None, None
    if global_attention_mask.shape != padding_mask.shape:
        raise ValueError(
            f"global_attention_mask must have the shape of src_tokens {list(padding_mask.shape)}, "
            f"got {list(global_attention_mask.shape)}"
        )
    mask = global_attention_mask.to(device=padding_mask.device, dtype=torch.bool) & ~padding_mask
    tokens = GlobalTokens.of(mask)
    return (mask, tokens) if tokens.batch.numel() else (None, None)


class LongformerRobertaEncoder(RobertaEncoder):
    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = LongformerTransformerEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder

    def forward(self, src_tokens, features_only=False, return_all_hiddens=False, masked_tokens=None,
                global_attention_mask=None, **unused):
        x, extra = self.extract_features(
            src_tokens, return_all_hiddens=return_all_hiddens, global_attention_mask=global_attention_mask
        )
        if not features_only:
            x = self.output_layer(x, masked_tokens=masked_tokens)
        return x, extra

    def extract_features(self, src_tokens, return_all_hiddens=False, global_attention_mask=None, **kwargs):
        encoder_out = self.sentence_encoder(
            src_tokens,
            return_all_hiddens=return_all_hiddens,
            token_embeddings=kwargs.get("token_embeddings"),
            global_attention_mask=global_attention_mask,
        )
        features = encoder_out["encoder_out"][0].transpose(0, 1)
        return features, {"inner_states": encoder_out["encoder_states"] if return_all_hiddens else None}


class PartlyFrozenPositions(nn.Module):
    """Learned positions whose first ``frozen_rows`` rows are a fixed buffer and the rest a parameter.

    Keeping the source rows out of the optimizer (rather than zeroing their gradient) makes them
    bit-identical even under decoupled weight decay. The state dict still has the single key
    ``weight`` with every row, so checkpoints stay interchangeable with the unfrozen model.
    """

    def __init__(self, source: nn.Embedding, frozen_rows: int):
        super().__init__()
        self.padding_idx = source.padding_idx
        self.max_positions = source.max_positions
        self.embedding_dim = source.embedding_dim
        self.frozen_rows = frozen_rows
        self.register_buffer("frozen_weight", source.weight[:frozen_rows].detach().clone(), persistent=False)
        self.new_weight = nn.Parameter(source.weight[frozen_rows:].detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.frozen_weight, self.new_weight])

    def forward(self, input, incremental_state=None, positions=None):
        if positions is None:
            positions = make_positions(input, self.padding_idx)
        return F.embedding(positions, self.weight, self.padding_idx)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight = self.weight
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k != key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        weight = state_dict[key]
        expected = self.frozen_rows + self.new_weight.shape[0]
        if tuple(weight.shape) != (expected, self.embedding_dim):
            error_msgs.append(f"size mismatch for {key}: checkpoint {list(weight.shape)}, "
                              f"model [{expected}, {self.embedding_dim}]")
            return
        with torch.no_grad():
            self.frozen_weight.copy_(weight[: self.frozen_rows])
            self.new_weight.copy_(weight[self.frozen_rows:])


def freeze_all_but_new_positions(model: nn.Module, source_rows: int) -> None:
    """Paper §5 "frozen RoBERTa weights": only position rows ``>= source_rows`` are trained."""
    sentence_encoder = model.encoder.sentence_encoder
    positions = sentence_encoder.embed_positions
    if positions is None or positions.weight.shape[0] <= source_rows:
        rows = 0 if positions is None else positions.weight.shape[0]
        raise ValueError(
            f"--freeze-roberta trains only the position rows added by conversion, but the model has {rows} "
            f"position rows and the source RoBERTa {source_rows}; set --max-positions above "
            "--roberta-max-positions (or drop --freeze-roberta)"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    sentence_encoder.embed_positions = PartlyFrozenPositions(positions, source_rows)
    logger.info("freeze_roberta: training only %d new position rows",
                sentence_encoder.embed_positions.new_weight.shape[0])


class LoadsLocalDirectory:
    """Mixin before a fairseq model: ``from_pretrained(DIR)`` loads a local converted directory, never downloads."""

    hub_loader: str  # the function of fairseq_longformer/hub.py that loads this model's directory

    @classmethod
    def hub_models(cls):
        return {}  # nothing is downloaded; convert a directory with longformer-convert-roberta / -bart

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".",
                        bpe=None, **kwargs):
        """Load a converted, trained or finetuned directory. See ``fairseq_longformer.hub``."""
        from .. import hub  # at call time: hub imports the models

        load = getattr(hub, cls.hub_loader)
        return load(model_name_or_path, checkpoint_file, data_name_or_path, bpe=bpe, **kwargs)


@register_model("longformer_roberta")
class LongformerRobertaModel(LoadsLocalDirectory, RobertaModel):
    hub_loader = "load_longformer_roberta"

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        self.span_heads = nn.ModuleDict()  # extractive QA (modules/span_head.py), saved like classification_heads

    def register_span_head(self, name: str) -> None:
        if name not in self.span_heads:
            self.span_heads[name] = SpanHead(self.args.encoder_embed_dim)

    def upgrade_state_dict_named(self, state_dict, name):
        super().upgrade_state_dict_named(state_dict, name)
        upgrade_span_heads(self, state_dict, name + "." if name else "",
                           bool(getattr(self.args, "load_checkpoint_heads", False)))

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        add_encoder_attention_args(parser)
        parser.add_argument("--freeze-roberta", action="store_true",
                            help="train only the position embeddings added beyond --roberta-max-positions "
                                 "(paper §5, frozen RoBERTa weights)")
        parser.add_argument("--roberta-max-positions", type=int, metavar="N",
                            help="max positions of the source RoBERTa (set by the converter)")
        parser.add_argument("--checkpoint-activations", action="store_true",
                            help="recompute each layer's activations in the backward pass (saves memory)")
        parser.add_argument("--offload-activations", action="store_true",
                            help="checkpoint activations and offload them to CPU")

    @classmethod
    def build_model(cls, args, task):
        from omegaconf import OmegaConf

        if OmegaConf.is_config(args):
            OmegaConf.set_struct(args, False)
        # max_positions first: RoBERTa's architecture copies it into max_source_positions
        if safe_getattr(args, "max_positions", None) is None:
            args.max_positions = safe_getattr(args, "tokens_per_sample", None) or task.max_positions()
        base_architecture(args)
        encoder = LongformerRobertaEncoder(args, task.source_dictionary)
        if OmegaConf.is_config(args):
            OmegaConf.set_struct(args, True)
        model = cls(args, encoder)
        if args.freeze_roberta:
            freeze_all_but_new_positions(model, args.roberta_max_positions + PADDING_OFFSET_ROWS)
        return model

    def forward(self, src_tokens, features_only=False, return_all_hiddens=False,
                classification_head_name=None, global_attention_mask=None, span_head_name=None, **kwargs):
        """With ``span_head_name``, ``x`` is that head's start/end logits ``[B, T, 2]``."""
        if classification_head_name is not None or span_head_name is not None:
            features_only = True
        x, extra = self.encoder(src_tokens, features_only, return_all_hiddens,
                                global_attention_mask=global_attention_mask, **kwargs)
        if classification_head_name is not None:
            x = self.classification_heads[classification_head_name](x)
        elif span_head_name is not None:
            x = self.span_heads[span_head_name](x)
        return x, extra


@register_model_architecture("longformer_roberta", "longformer_roberta")
def base_architecture(args):
    encoder_attention_defaults(args, "512")
    args.freeze_roberta = safe_getattr(args, "freeze_roberta", False)
    args.roberta_max_positions = safe_getattr(args, "roberta_max_positions", 512)
    roberta_base_architecture(args)


@register_model_architecture("longformer_roberta", "longformer_roberta_base")
def longformer_roberta_base_architecture(args):
    base_architecture(args)


@register_model_architecture("longformer_roberta", "longformer_roberta_large")
def longformer_roberta_large_architecture(args):
    args.encoder_layers = safe_getattr(args, "encoder_layers", 24)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 1024)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 4096)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 16)
    base_architecture(args)
