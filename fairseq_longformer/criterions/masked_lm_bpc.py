"""``masked_lm_bpc``: fairseq's masked-LM loss that also logs ``bpc``, the paper's Table 6 figure.

Table 6 calls "BPC" the base-2 cross-entropy per masked token (a BPE token for RoBERTa, not a
character). fairseq's ``masked_lm`` already logs that number as ``loss``; this criterion logs it a
second time under the name ``bpc`` so it can be found in logs and used as
``--best-checkpoint-metric bpc``. The loss and gradients are fairseq's, unchanged.
"""

from __future__ import annotations

import math

from fairseq.criterions import register_criterion
from fairseq.criterions.masked_lm import MaskedLmConfig, MaskedLmLoss
from fairseq.logging import metrics


@register_criterion("masked_lm_bpc", dataclass=MaskedLmConfig)
class MaskedLmBpcLoss(MaskedLmLoss):
    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        MaskedLmLoss.reduce_metrics(logging_outputs)
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        if sample_size > 0:
            metrics.log_scalar("bpc", loss_sum / sample_size / math.log(2), sample_size, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
