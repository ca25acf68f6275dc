"""``LongformerRobertaModel.from_pretrained(DIR)`` / ``LongformerBartModel.from_pretrained(DIR)``: fairseq's
RoBERTa / BART hub interfaces for a local Longformer or LED directory.

fairseq's own loader would fetch the GPT-2 BPE files from the internet; here nothing is downloaded:
``bpe="gpt2"`` takes ``encoder.json`` and ``vocab.bpe`` from the directory, and ``bpe=None`` (the
default) gives a token-level interface (``extract_features`` on tensors of dictionary ids).
"""

from __future__ import annotations

import os

import torch

from fairseq import hub_utils
from fairseq.models.roberta.hub_interface import RobertaHubInterface

GPT2_BPE_FILES = {"gpt2_encoder_json": "encoder.json", "gpt2_vocab_bpe": "vocab.bpe"}


class LongformerRobertaHubInterface(RobertaHubInterface):
    """RoBERTa's hub interface plus ``global_attention_mask`` on feature extraction."""

    def extract_features(self, tokens: torch.LongTensor, return_all_hiddens: bool = False,
                         global_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
            if global_attention_mask is not None and global_attention_mask.dim() == 1:
                global_attention_mask = global_attention_mask.unsqueeze(0)
        if tokens.size(-1) > self.model.max_positions():
            raise ValueError(
                f"tokens exceeds maximum length: {tokens.size(-1)} > {self.model.max_positions()}"
            )
        if global_attention_mask is not None:
            global_attention_mask = global_attention_mask.to(device=self.device, dtype=torch.bool)
        features, extra = self.model(
            tokens.to(device=self.device),
            features_only=True,
            return_all_hiddens=return_all_hiddens,
            global_attention_mask=global_attention_mask,
        )
        if return_all_hiddens:
            return [state.transpose(0, 1) for state in extra["inner_states"]]
        return features


def load_longformer_roberta(model_dir: str, checkpoint_file: str = "model.pt", data_name_or_path: str = ".",
                            bpe: str | None = None, **kwargs) -> LongformerRobertaHubInterface:
    loaded = _load_local(model_dir, checkpoint_file, data_name_or_path, bpe, "longformer-convert-roberta", kwargs)
    return LongformerRobertaHubInterface(loaded["args"], loaded["task"], loaded["models"][0])


def load_longformer_bart(model_dir: str, checkpoint_file: str = "model.pt", data_name_or_path: str = ".",
                         bpe: str | None = None, **kwargs):
    from .models.longformer_bart import LongformerBartHubInterface

    loaded = _load_local(model_dir, checkpoint_file, data_name_or_path, bpe, "longformer-convert-bart", kwargs)
    return LongformerBartHubInterface(loaded["args"], loaded["task"], loaded["models"][0])


def _load_local(model_dir: str, checkpoint_file: str, data_name_or_path: str, bpe: str | None,
                converter: str, kwargs: dict) -> dict:
    """fairseq's ``hub_utils.from_pretrained`` on a local directory, with the BPE files taken from it."""
    if not os.path.isdir(model_dir):
        raise ValueError(f"{model_dir!r} is not a directory; give a local directory holding model.pt and dict.txt "
                         "(this loader never downloads)")
    # fairseq's rule: a data path starting with "." is relative to model_dir
    data_dir = os.path.join(model_dir, data_name_or_path) if data_name_or_path.startswith(".") else data_name_or_path
    needed = [os.path.join(model_dir, name) for name in checkpoint_file.split(os.pathsep)]
    for path in needed + [os.path.join(data_dir, "dict.txt")]:
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing; convert a model directory with {converter} "
                             "(or point data_name_or_path at a directory with the dictionary)")
    if bpe == "gpt2":
        for arg, name in GPT2_BPE_FILES.items():
            path = os.path.join(model_dir, name)
            if not os.path.isfile(path):
                raise ValueError(
                    f"bpe='gpt2' needs {name} in {model_dir} (fairseq would download it); copy GPT-2's "
                    "encoder.json and vocab.bpe there, or load with bpe=None for token-level use"
                )
            kwargs.setdefault(arg, path)
    return hub_utils.from_pretrained(
        model_dir, checkpoint_file, data_name_or_path, archive_map=None, bpe=bpe,
        load_checkpoint_heads=True, **kwargs,
    )
