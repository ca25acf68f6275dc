"""Length statistics of a prepared split: the one stats line every finetuning prep tool prints."""
from __future__ import annotations

import math
from typing import Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile (the smallest value with at least p% of values at or below it)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_stats(lengths: Sequence[int], limit: int | None = None) -> dict:
    """Count, mean, nearest-rank percentiles, max, and how many exceed ``limit`` (the model's positions)."""
    values = sorted(lengths)
    stats = {"count": len(values), "mean": round(sum(values) / len(values), 1) if values else 0.0,
             **{f"p{p}": percentile(values, p) for p in PERCENTILES}, "max": values[-1] if values else 0}
    if limit is not None:
        stats["limit"] = limit
        stats["over_limit"] = sum(1 for v in values if v > limit)
    return stats


def stats_line(name: str, stats: dict) -> str:
    """``name: 1,234 docs, tokens mean 812.3, p50 700 / p90 ... / max 9,001, 12 (1.0%) over 4,096``."""
    text = (f"{name}: {stats['count']:,} items, tokens mean {stats['mean']:,}, "
            + " / ".join(f"p{p} {stats[f'p{p}']:,}" for p in PERCENTILES) + f" / max {stats['max']:,}")
    if "limit" in stats:
        share = 100 * stats["over_limit"] / max(1, stats["count"])
        text += f", {stats['over_limit']:,} ({share:.1f}%) over {stats['limit']:,}"
    return text
