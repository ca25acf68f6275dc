"""``LongformerRobertaModel.from_pretrained(DIR)`` / ``LongformerBartModel.from_pretrained(DIR)``: fairseq's
RoBERTa / BART hub interfaces for a local Longformer or LED directory.

fairseq's own loader would fetch the GPT-2 BPE files from the internet; here nothing is downloaded:
``bpe="gpt2"`` takes ``encoder.json`` and ``vocab.bpe`` from the directory, and ``bpe=None`` (the
default) gives a token-level interface (``extract_features`` on tensors of dictionary ids).

A model finetuned with ``longformer_sentence_prediction`` predicts with the global attention it was
trained with: ``predict(head, tokens)`` reads the task's ``global_attention`` from the checkpoint and
builds the mask with the same rule (``tasks/global_attention.py``). Load it with the training data
folder as ``data_name_or_path`` (its ``input0/dict.txt`` and ``label/dict.txt``).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from fairseq import hub_utils
from fairseq.models.roberta.hub_interface import RobertaHubInterface

from .tasks.global_attention import global_attention_mask
from .tasks.longformer_sentence_prediction import truncate_keeping_ends

logger = logging.getLogger(__name__)

GPT2_BPE_FILES = {"gpt2_encoder_json": "encoder.json", "gpt2_vocab_bpe": "vocab.bpe"}


class LongformerRobertaHubInterface(RobertaHubInterface):
    """RoBERTa's hub interface plus ``global_attention_mask`` on feature extraction, and ``predict`` with
    the global attention of the task the model was finetuned with."""

    @property
    def global_attention(self) -> str:
        """The finetuning task's global-attention mode (``none`` for a model from another task): for span QA,
        whose ``--global-attention question`` is the ``first-segment`` rule, the rule's name."""
        return getattr(self.task, "global_attention_mode", "none")

    def global_attention_mask(self, tokens: torch.LongTensor, mode: str | None = None) -> torch.Tensor:
        """The mask the finetuning task puts on ``tokens`` (``[T]`` or padded ``[B, T]``)."""
        dictionary = self.task.source_dictionary
        return global_attention_mask(tokens, mode or self.global_attention, dictionary.eos(), dictionary.pad())

    def predict(self, head: str, tokens: torch.LongTensor, return_logits: bool = False,
                global_attention: str | None = None) -> torch.Tensor:
        """Log-probabilities (or logits) of classification head ``head``, with the task's global attention
        (``global_attention`` overrides the mode: ``cls``, ``first-segment``, ``none``). One input ``[T]``
        longer than the model's positions is truncated as the task truncates it (keeping ``<s>``/``</s>``)."""
        limit = self.model.max_positions()
        if tokens.dim() == 1 and tokens.size(0) > limit:
            logger.warning("predict: truncating %d tokens to %d, keeping <s> and the closing </s> (as the task "
                           "does)", tokens.size(0), limit)
            tokens = truncate_keeping_ends(tokens, limit)
        mask = self.global_attention_mask(tokens, global_attention)
        features = self.extract_features(tokens.to(device=self.device), global_attention_mask=mask)
        logits = self.model.classification_heads[head](features)
        return logits if return_logits else F.log_softmax(logits, dim=-1)

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
    # a pretraining dictionary, or a sentence_prediction data folder (input0/dict.txt)
    dictionaries = [os.path.join(data_dir, "dict.txt"), os.path.join(data_dir, "input0", "dict.txt")]
    needed.append(next((path for path in dictionaries if os.path.isfile(path)), dictionaries[0]))
    for path in needed:
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
