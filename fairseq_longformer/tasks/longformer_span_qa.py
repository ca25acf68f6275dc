"""``longformer_span_qa``: extractive question answering over long documents (Longformer paper §6).

Reads what ``longformer-prep-qa`` writes: rows ``<s> question </s></s> document </s>`` with their gold
start/end positions. Each batch carries ``net_input.global_attention_mask``: with ``--global-attention
question`` (the default, the paper's setting for TriviaQA) ``<s>`` and every question token attend to the
whole row and the whole row attends to them, by the one rule of ``global_attention.py`` (its
``first-segment`` mode: every token before the first ``</s>``, so the count of ``</s>`` does not matter);
``none`` leaves the sliding window only. The model gets a span head (``modules/span_head.py``); the
criterion ``span_qa`` trains it.
"""
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import (
    Dictionary,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..modules.span_head import SPAN_HEAD
from .global_attention import GlobalAttentionMaskDataset

logger = logging.getLogger(__name__)

DATA_FORMAT = "longformer_span_qa/1"
GLOBAL_MODES = {"question": "first-segment", "none": "none"}  # --global-attention -> global_attention.py mode


@dataclass
class LongformerSpanQaConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder written by longformer-prep-qa"})
    global_attention: ChoiceEnum(list(GLOBAL_MODES)) = field(
        default="question", metadata={"help": "'question': <s> and every question token are global; 'none': "
                                              "sliding window only"})
    seed: int = II("common.seed")


def read_meta(data: str) -> dict:
    path = os.path.join(data, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; the data folder of --task longformer_span_qa is what "
                                "longformer-prep-qa --output writes")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != DATA_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {DATA_FORMAT!r}; re-run longformer-prep-qa")
    return meta


@register_task("longformer_span_qa", dataclass=LongformerSpanQaConfig)
class LongformerSpanQaTask(FairseqTask):
    def __init__(self, cfg: LongformerSpanQaConfig, dictionary: Dictionary, meta: dict):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.meta = meta

    @classmethod
    def setup_task(cls, cfg: LongformerSpanQaConfig, **kwargs):
        meta = read_meta(cfg.data)
        dictionary = Dictionary.load(os.path.join(cfg.data, "dict.txt"))
        dictionary.add_symbol("<mask>")  # as masked_lm / sentence_prediction: the pretrained embedding has it
        logger.info("dictionary: %d types; rows of at most %d tokens", len(dictionary), meta["max_positions"])
        return cls(cfg, dictionary, meta)

    def load_dataset(self, split, combine=False, epoch=1, **kwargs):
        prefix = os.path.join(self.cfg.data, split)
        parts = {}
        for name in ("tokens", "starts", "ends"):
            parts[name] = data_utils.load_indexed_dataset(f"{prefix}.{name}", self.dictionary, combine=combine)
            if parts[name] is None:
                raise FileNotFoundError(f"{prefix}.{name}.bin/.idx not found; prepare split {split!r} with "
                                        "longformer-prep-qa")
        tokens = parts["tokens"]
        if not len(tokens) == len(parts["starts"]) == len(parts["ends"]):
            raise ValueError(f"{prefix}.*: tokens, starts and ends have different row counts; re-run longformer-prep-qa")
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        net_input = {"src_tokens": RightPadDataset(tokens, pad_idx=pad)}
        mode = self.global_attention_mode
        if mode != "none":
            net_input["global_attention_mask"] = RightPadDataset(
                GlobalAttentionMaskDataset(tokens, mode, eos, pad), pad_idx=0)
        dataset = NestedDictionaryDataset({
            "id": IdDataset(),
            "net_input": net_input,
            "starts": RightPadDataset(parts["starts"], pad_idx=-1),
            "ends": RightPadDataset(parts["ends"], pad_idx=-1),
            "nsentences": NumSamplesDataset(),
            "ntokens": NumelDataset(tokens, reduce=True),
        }, sizes=[tokens.sizes])
        with data_utils.numpy_seed(self.cfg.seed):
            shuffle = np.random.permutation(len(tokens))
        self.datasets[split] = SortDataset(dataset, sort_order=[shuffle, tokens.sizes])  # by length, ties shuffled
        logger.info("%s: %d rows", split, len(tokens))
        return self.datasets[split]

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "register_span_head"):
            raise ValueError(f"--task longformer_span_qa needs --arch longformer_roberta (a model with span heads), "
                             f"got {type(model).__name__}")
        if model.max_positions() < self.max_positions():
            raise ValueError(f"the data has rows of up to {self.max_positions()} tokens but the model takes "
                             f"{model.max_positions()}; re-run longformer-prep-qa with --max-positions "
                             f"{model.max_positions()}")
        model.register_span_head(SPAN_HEAD)
        return model

    def max_positions(self):
        return self.meta["max_positions"]

    @property
    def global_attention_mode(self) -> str:
        """``--global-attention`` as a ``global_attention.py`` mode (what the hub interface applies)."""
        return GLOBAL_MODES[self.cfg.global_attention]

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
