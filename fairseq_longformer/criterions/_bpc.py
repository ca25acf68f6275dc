"""Shared by the BPC criterions: fairseq's summed natural-log loss -> ``bpc`` (base-2 loss per unit)."""

from __future__ import annotations

import math

from fairseq.logging import metrics


def log_bpc(logging_outputs, count_key: str) -> None:
    """Log ``bpc`` = summed loss / summed ``count_key`` (tokens, characters) in bits."""
    loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
    count = sum(log.get(count_key, 0) for log in logging_outputs)
    if count > 0:
        metrics.log_scalar("bpc", loss_sum / count / math.log(2), count, round=4)
