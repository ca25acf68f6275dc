"""``masked_lm_bpc``: fairseq's masked-LM loss that also logs ``bpc``, the paper's Table 6 figure.

Table 6 calls "BPC" the base-2 cross-entropy per masked token (a BPE token for RoBERTa, not a
character). fairseq's ``masked_lm`` already logs that number as ``loss``; this criterion logs it a
second time under the name ``bpc`` so it can be found in logs and used as
``--best-checkpoint-metric bpc``. The loss and gradients are fairseq's, unchanged.
"""

from __future__ import annotations

from fairseq.criterions import register_criterion
from fairseq.criterions.masked_lm import MaskedLmConfig, MaskedLmLoss

from ._bpc import BpcLogging


@register_criterion("masked_lm_bpc", dataclass=MaskedLmConfig)
class MaskedLmBpcLoss(BpcLogging, MaskedLmLoss):
    bpc_count_key = "sample_size"
