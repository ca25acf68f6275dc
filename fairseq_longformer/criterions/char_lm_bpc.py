"""Cross-entropy that also logs ``bpc``: bits per character for character-level LMs.

fairseq's ``loss`` is already base 2 per token, which for a character vocabulary *is* BPC; this
criterion logs it under the name people look for (``bpc`` in training, ``valid_bpc`` in validation),
always averaged per token even with ``--sentence-avg``. Every ``</s>`` (a line end) counts as one
character, see docs/char_lm.md.
"""

from __future__ import annotations

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig

from ._bpc import BpcLogging


@register_criterion("char_lm_bpc", dataclass=CrossEntropyCriterionConfig)
class CharLMBPCCriterion(BpcLogging, CrossEntropyCriterion):
    bpc_count_key = "ntokens"
