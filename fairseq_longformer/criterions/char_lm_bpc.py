"""Cross-entropy that also logs ``bpc``: bits per character for character-level LMs.

fairseq's ``loss`` is already base 2 per token, which for a character vocabulary *is* BPC; this
criterion logs it under the name people look for (``bpc`` in training, ``valid_bpc`` in validation),
always averaged per token even with ``--sentence-avg``. Every ``</s>`` (a line end) counts as one
character, see docs/char_lm.md.
"""

from __future__ import annotations

import math

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig
from fairseq.logging import metrics


@register_criterion("char_lm_bpc", dataclass=CrossEntropyCriterionConfig)
class CharLMBPCCriterion(CrossEntropyCriterion):
    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        CrossEntropyCriterion.reduce_metrics(logging_outputs)
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        if ntokens > 0:
            metrics.log_scalar("bpc", loss_sum / ntokens / math.log(2), ntokens, round=4)
