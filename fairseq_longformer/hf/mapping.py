"""The one map between fairseq ``longformer_roberta`` and HF ``LongformerForMaskedLM``: weight names, config fields.

Both are RoBERTa with Longformer self-attention, weight for weight (no transposes): fairseq's
``encoder.sentence_encoder.*`` is HF's ``longformer.*`` and the LM heads match. Two differences:

* HF adds a token-type row to every token's embedding; fairseq has none. Export writes it as zeros; import
  folds it into every position row (not into the word embeddings, which are tied to the output layer).
* The LM head's output weight is the word-embedding matrix in both (tied); fairseq stores it as
  ``encoder.lm_head.weight``, HF leaves ``lm_head.decoder.*`` out of its files and re-ties on load.
"""

from __future__ import annotations

import torch

FAIRSEQ_ENCODER = "encoder.sentence_encoder."
HF_ENCODER = "longformer."

EMBEDDINGS = {  # fairseq (after FAIRSEQ_ENCODER) -> HF (after HF_ENCODER)
    "embed_tokens.weight": "embeddings.word_embeddings.weight",
    "embed_positions.weight": "embeddings.position_embeddings.weight",
    "layernorm_embedding.weight": "embeddings.LayerNorm.weight",
    "layernorm_embedding.bias": "embeddings.LayerNorm.bias",
}
LAYER = {  # modules of layer i: fairseq "layers.i." -> HF "encoder.layer.i."; each has .weight and .bias
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.q_global": "attention.self.query_global",
    "self_attn.k_global": "attention.self.key_global",
    "self_attn.v_global": "attention.self.value_global",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}
LM_HEAD = {  # full names
    "encoder.lm_head.dense.weight": "lm_head.dense.weight",
    "encoder.lm_head.dense.bias": "lm_head.dense.bias",
    "encoder.lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "encoder.lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "encoder.lm_head.bias": "lm_head.bias",
}
WORD_EMBEDDINGS = HF_ENCODER + EMBEDDINGS["embed_tokens.weight"]
POSITIONS = HF_ENCODER + EMBEDDINGS["embed_positions.weight"]
TOKEN_TYPES = HF_ENCODER + "embeddings.token_type_embeddings.weight"
FAIRSEQ_TIED_OUTPUT = "encoder.lm_head.weight"  # = embed_tokens.weight
HF_TIED_OUTPUT = {"lm_head.decoder.weight": WORD_EMBEDDINGS, "lm_head.decoder.bias": "lm_head.bias"}


def encoder_names(num_layers: int) -> list[tuple[str, str]]:
    """``(fairseq name, HF name)`` of every encoder weight (embeddings and layers)."""
    pairs = [(FAIRSEQ_ENCODER + f, HF_ENCODER + h) for f, h in EMBEDDINGS.items()]
    for i in range(num_layers):
        for f, h in LAYER.items():
            for kind in ("weight", "bias"):
                pairs.append((f"{FAIRSEQ_ENCODER}layers.{i}.{f}.{kind}", f"{HF_ENCODER}encoder.layer.{i}.{h}.{kind}"))
    return pairs


def to_hf_state(fairseq_state: dict, num_layers: int) -> dict:
    """fairseq weights -> ``LongformerForMaskedLM``'s (tied keys included, token-type row zero)."""
    state = {h: fairseq_state[f] for f, h in encoder_names(num_layers) + list(LM_HEAD.items())}
    state[TOKEN_TYPES] = torch.zeros_like(state[POSITIONS][:1])
    state.update({tied: state[source] for tied, source in HF_TIED_OUTPUT.items()})
    return state


def to_fairseq_state(hf_state: dict, num_layers: int) -> dict:
    """HF weights (``longformer.`` prefix, token-type row already folded) -> fairseq's, LM head included."""
    state = {f: hf_state[h] for f, h in encoder_names(num_layers) + list(LM_HEAD.items())}
    state[FAIRSEQ_TIED_OUTPUT] = state[FAIRSEQ_ENCODER + "embed_tokens.weight"]
    return state


def fold_token_type(hf_state: dict) -> bool:
    """Add token type 0's row (which HF adds to every token) to every position row; True if it was non-zero."""
    row = hf_state[TOKEN_TYPES][0]
    if not bool(row.any()):
        return False
    hf_state[POSITIONS] = hf_state[POSITIONS] + row
    return True


# HF config field <-> fairseq model argument, for the fields that are the same number in both.
CONFIG_FIELDS = {
    "num_hidden_layers": "encoder_layers",
    "hidden_size": "encoder_embed_dim",
    "intermediate_size": "encoder_ffn_embed_dim",
    "num_attention_heads": "encoder_attention_heads",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}
# RoBERTa's values of the fields LongformerConfig defaults to BERT's; fairseq's dictionary fixes the ids.
ROBERTA_FIELDS = dict(type_vocab_size=1, bos_token_id=0, pad_token_id=1, eos_token_id=2, sep_token_id=2,
                      initializer_range=0.02, hidden_act="gelu", tie_word_embeddings=True)
LAYER_NORM_EPS = 1e-5  # fairseq's LayerNorm
POSITION_OFFSET = 2  # fairseq and HF both number real positions from padding_idx + 1 = 2
DICTIONARY_SIZE = "fairseq_dictionary_size"  # config field: set when vocab.json has ids past fairseq's (vocab.py)
