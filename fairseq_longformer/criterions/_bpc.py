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


class BpcLogging:
    """Mixin before a fairseq criterion: its own metrics, then ``bpc`` per summed ``bpc_count_key``."""

    bpc_count_key: str  # the logging-output key to divide by: "ntokens", "sample_size"

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        log_bpc(logging_outputs, cls.bpc_count_key)
