"""``longformer_sentence_prediction``: fairseq's ``sentence_prediction`` on whole long documents.

The Longformer paper (Beltagy et al., 2020), §6 and Appendix B, classifies from the first token ``<s>``
with global attention on it, on documents far longer than 512 tokens. fairseq's task as is gets three
things wrong for that: it passes no global-attention mask, defaults to 512 positions, and its
``--shorten-method truncate`` drops the closing ``</s>`` (``random_crop`` can drop ``<s>``) while
``none`` silently skips long training samples and fails on long validation ones. This task keeps
everything else of ``sentence_prediction`` (data layout ``input0/ input1/ label/``, heads, the
``sentence_prediction`` criterion and its ``accuracy``) and changes exactly that:

* ``net_input.global_attention_mask`` from ``--global-attention`` (``cls``, ``first-segment``, ``none``;
  the one rule in ``global_attention.py``), which ``longformer_roberta`` passes to every layer;
* ``--max-positions`` defaults to 4,096 (the paper's pretrained length, §5);
* inputs longer than that keep their first ``max_positions - 1`` tokens and the closing ``</s>``
  (so ``<s>`` stays too), and each split logs how many samples were truncated;
* ``--init-token`` / ``--separator-token`` default to ``<s>`` / ``</s>`` (RoBERTa's input format
  ``<s> a </s>`` and ``<s> a </s></s> b </s>``, what the hub's ``encode`` gives);
* ``fairseq-validate`` works (fairseq's own task fails there resolving ``criterion.*`` settings).
"""

import copy
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.data import (
    BaseWrapperDataset,
    NestedDictionaryDataset,
    RightPadDataset,
    SortDataset,
)
from fairseq.data.shorten_dataset import TruncateDataset
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import (
    SentencePredictionConfig,
    SentencePredictionTask,
)
from omegaconf import II

from .global_attention import GLOBAL_ATTENTION_MODES, GlobalAttentionMaskDataset

logger = logging.getLogger(__name__)

MASK_KEY = "net_input.global_attention_mask"
SOURCE_KEY = "net_input.src_tokens"


@dataclass
class LongformerSentencePredictionConfig(SentencePredictionConfig):
    global_attention: ChoiceEnum(list(GLOBAL_ATTENTION_MODES)) = field(
        default="cls",
        metadata={"help": "tokens with global attention: cls = <s> only (classification), first-segment = <s> and "
                          "the first input up to its </s> (question/document pairs), none = sliding window only"},
    )
    # fairseq's defaults are None (no <s>, no separator) and 512 positions
    init_token: Optional[int] = field(default=0, metadata={"help": "token put before each input; 0 = <s>"})
    separator_token: Optional[int] = field(
        default=2, metadata={"help": "token put before the second input of a pair; 2 = </s>"}
    )
    # fairseq's II("criterion.*") fails under fairseq-validate, whose parser has no criterion (fairseq 0.12.3,
    # plain sentence_prediction too); the same values, with fairseq's defaults where there is no criterion
    regression_target: bool = II("oc.select:criterion.regression_target,false")
    classification_head_name: str = II(
        "oc.select:criterion.classification_head_name,sentence_classification_head")
    max_positions: int = field(
        default=4096,
        metadata={"help": "longest input in tokens (the model's positions); longer inputs are truncated to it, "
                          "keeping <s> and the closing </s>"},
    )


def truncate_keeping_ends(tokens: torch.Tensor, limit: int) -> torch.Tensor:
    """One input ``[T]`` cut to ``limit`` tokens: its first ``limit - 1`` and its last (the closing ``</s>``)."""
    if limit < 2:
        raise ValueError(f"--max-positions must be >= 2 (<s> and </s>), got {limit}")
    if tokens.size(0) <= limit:
        return tokens
    return torch.cat([tokens[: limit - 1], tokens[-1:]])


class KeepEndsTruncateDataset(TruncateDataset):
    """Every item through :func:`truncate_keeping_ends`; ``sizes`` are the truncated lengths."""

    def __init__(self, dataset, truncation_length: int):
        truncate_keeping_ends(torch.zeros(0), truncation_length)  # validates the limit
        super().__init__(dataset, truncation_length)

    def __getitem__(self, index):
        return truncate_keeping_ends(self.dataset[index], self.truncation_length)


def _swap_source(dataset, old, new):
    """``dataset`` with ``old`` replaced by ``new`` anywhere down its chain of wrappers (a shallow copy of
    each wrapper on the way; datasets that do not read ``old`` are returned as they are)."""
    if dataset is old:
        return new
    if isinstance(dataset, BaseWrapperDataset):
        inner = _swap_source(dataset.dataset, old, new)
        if inner is not dataset.dataset:
            dataset = copy.copy(dataset)
            dataset.dataset = inner
    return dataset


@register_task("longformer_sentence_prediction", dataclass=LongformerSentencePredictionConfig)
class LongformerSentencePredictionTask(SentencePredictionTask):
    @classmethod
    def setup_task(cls, cfg, **kwargs):
        if cfg.d2v2_multi:
            raise ValueError("--d2v2-multi is a data2vec input format; longformer_sentence_prediction feeds "
                             "src_tokens to longformer_roberta, drop the option")
        if cfg.shorten_method != "none":
            logger.warning("--shorten-method %s: fairseq's shortening drops the closing </s> (random_crop can also "
                           "drop <s>); leave it at 'none' and this task truncates keeping both", cfg.shorten_method)
        return super().setup_task(cfg, **kwargs)

    def load_dataset(self, split, combine=False, **kwargs):
        """fairseq's datasets, then every reader of ``src_tokens`` rebuilt over the truncated tokens, plus the
        global-attention mask."""
        dataset = super().load_dataset(split, combine=combine, **kwargs)
        nested = dataset.dataset if isinstance(dataset, SortDataset) else dataset
        tokens = nested.defn[SOURCE_KEY].dataset  # RightPadDataset(src_tokens)
        truncated = KeepEndsTruncateDataset(tokens, self.max_positions())
        self._log_truncation(split, tokens.sizes)

        defn = {key: _swap_source(value, tokens, truncated) for key, value in nested.defn.items()}
        if self.global_attention_mode != "none":
            dictionary = self.source_dictionary
            mask = GlobalAttentionMaskDataset(truncated, self.global_attention_mode, dictionary.eos(),
                                              dictionary.pad())
            defn[MASK_KEY] = RightPadDataset(mask, pad_idx=0)
        rebuilt = NestedDictionaryDataset(defn, sizes=[truncated.sizes])
        if isinstance(dataset, SortDataset):
            rebuilt = SortDataset(rebuilt, sort_order=dataset.sort_order)
        self.datasets[split] = rebuilt
        return rebuilt

    @property
    def global_attention_mode(self) -> str:
        """``--global-attention`` (a ``global_attention.py`` mode; what the hub interface applies)."""
        return str(self.cfg.global_attention)

    def _log_truncation(self, split: str, sizes) -> None:
        limit = self.max_positions()
        over = sizes > limit
        if over.any():
            logger.warning(
                "%s: truncated %d of %d samples (%.1f%%) longer than --max-positions %d to %d tokens, keeping <s> "
                "and the closing </s> (longest %d)", split, over.sum(), len(sizes), 100 * over.mean(), limit, limit,
                sizes.max())
        else:
            logger.info("%s: no sample is longer than --max-positions %d (longest %d)", split, limit,
                        sizes.max() if len(sizes) else 0)
