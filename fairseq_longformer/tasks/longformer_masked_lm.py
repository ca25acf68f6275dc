"""``longformer_masked_lm``: fairseq's ``masked_lm`` plus per-token global attention in ``net_input``.

Tokens whose *original* (pre-masking) symbol is in ``--global-attention-symbols`` (e.g. ``<s>``,
the classification token) get global attention: the batch carries ``global_attention_mask``
(bool ``[B, T]``), which ``longformer_roberta`` passes to every layer. Rows of a batch may have
different numbers of global tokens. With no symbols given the task is exactly ``masked_lm`` (the
paper's continued pretraining uses no global tokens).
"""

from dataclasses import dataclass, field

import torch

from fairseq.data import BaseWrapperDataset, RightPadDataset
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask


@dataclass
class LongformerMaskedLMConfig(MaskedLMConfig):
    global_attention_symbols: str = field(
        default="",
        metadata={"help": "comma-separated dictionary symbols that get global attention, e.g. '<s>'"},
    )


class GlobalTokenMaskDataset(BaseWrapperDataset):
    """Bool mask of the tokens whose original symbol is global; the original is the target where the
    token was chosen for masking (target != pad) and the input elsewhere."""

    def __init__(self, masked_source, targets, global_ids, pad: int):
        super().__init__(masked_source)
        self.targets = targets
        self.global_ids = torch.tensor(sorted(global_ids), dtype=torch.long)
        self.pad = pad

    def __getitem__(self, index):
        source, target = self.dataset[index], self.targets[index]
        original = torch.where(target.ne(self.pad), target, source)
        return torch.isin(original, self.global_ids)

    def collater(self, samples):
        raise NotImplementedError("wrap in RightPadDataset")


@register_task("longformer_masked_lm", dataclass=LongformerMaskedLMConfig)
class LongformerMaskedLMTask(MaskedLMTask):
    def __init__(self, cfg: LongformerMaskedLMConfig, dictionary=None):
        super().__init__(cfg, dictionary)
        self.global_ids = self._symbol_ids(cfg.global_attention_symbols)

    def _symbol_ids(self, symbols: str) -> set:
        ids = set()
        for symbol in filter(None, (s.strip() for s in symbols.split(","))):
            index = self.source_dictionary.index(symbol)
            if index == self.source_dictionary.unk() and symbol != self.source_dictionary.unk_word:
                raise ValueError(
                    f"--global-attention-symbols: {symbol!r} is not in the dictionary; use symbols from dict.txt "
                    "or the specials <s>, </s>, <mask>"
                )
            ids.add(index)
        return ids

    def _regular_dataset(self, src_dataset, target_dataset):
        dataset = super()._regular_dataset(src_dataset, target_dataset)
        if self.global_ids:
            # target_dataset is a RightPadDataset; indexing it returns the unpadded item
            mask = GlobalTokenMaskDataset(src_dataset, target_dataset, self.global_ids, self.source_dictionary.pad())
            dataset.defn["net_input.global_attention_mask"] = RightPadDataset(mask, pad_idx=0)
        return dataset
