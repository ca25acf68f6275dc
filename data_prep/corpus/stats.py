"""Corpus statistics: Table 5's columns per source, the length distribution, and the share past 512 / 4,096.

Lengths go into a fixed log-spaced histogram (``BINS_PER_OCTAVE`` bins per doubling) so memory stays flat
however many documents there are; counts past the two thresholds are exact. The whole object is plain
JSON, kept in the resumable journal and merged as shards are committed.
"""
from __future__ import annotations

import math
from pathlib import Path

from .documents import PROBLEM_KINDS, SOURCE_ORDER
from .selection import SPLITS

THRESHOLDS = (512, 4096)  # RoBERTa's length, and Longformer's pretraining length
BINS_PER_OCTAVE = 4

# Table 5 of the paper, for side-by-side comparison in the Markdown table.
PAPER_TABLE5 = {
    "books": ("0.5B", "95.9K"),
    "wikipedia": ("2.1B", "506"),
    "realnews": ("1.8B", "1.7K"),
    "stories": ("2.1B", "7.8K"),
}

# Pipeline counters per source (what was read, and why documents were left out).
COUNTERS = ("read", "sampled_out", "too_short", "capped", "selected", "unk_tokens") + PROBLEM_KINDS


def length_bin(n_tokens: int) -> int:
    return 0 if n_tokens < 1 else int(math.floor(math.log2(n_tokens) * BINS_PER_OCTAVE)) + 1


def bin_lower_edge(b: int) -> float:
    return 0.0 if b == 0 else 2 ** ((b - 1) / BINS_PER_OCTAVE)


def empty_lengths() -> dict:
    # lines: output lines incl. the document separators (fairseq adds one </s> to each)
    return {"docs": 0, "tokens": 0, "lines": 0, "min": None, "max": None, "hist": {},
            **{f"docs_over_{t}": 0 for t in THRESHOLDS}, **{f"tokens_in_docs_over_{t}": 0 for t in THRESHOLDS}}


def add_length(lengths: dict, n_tokens: int, n_lines: int = 0) -> None:
    lengths["docs"] += 1
    lengths["tokens"] += n_tokens
    lengths["lines"] += n_lines
    lengths["min"] = n_tokens if lengths["min"] is None else min(lengths["min"], n_tokens)
    lengths["max"] = n_tokens if lengths["max"] is None else max(lengths["max"], n_tokens)
    b = str(length_bin(n_tokens))  # str keys: the dict round-trips through JSON unchanged
    lengths["hist"][b] = lengths["hist"].get(b, 0) + 1
    for t in THRESHOLDS:
        if n_tokens > t:
            lengths[f"docs_over_{t}"] += 1
            lengths[f"tokens_in_docs_over_{t}"] += n_tokens


def merge_lengths(into: dict, other: dict) -> None:
    for key, value in other.items():
        if key == "hist":
            for b, c in value.items():
                into["hist"][b] = into["hist"].get(b, 0) + c
        elif key in ("min", "max"):
            if value is not None:
                pick = min if key == "min" else max
                into[key] = value if into[key] is None else pick(into[key], value)
        else:
            into[key] += value


def new_stats(sources) -> dict:
    return {
        source: {"counts": {c: 0 for c in COUNTERS}, "splits": {s: empty_lengths() for s in SPLITS}}
        for source in sources
    }


def total_lengths(source_stats: dict) -> dict:
    total = empty_lengths()
    for split in SPLITS:
        merge_lengths(total, source_stats["splits"][split])
    return total


def approx_median(lengths: dict) -> float | None:
    """Median from the histogram: the lower edge of the bin holding the middle document (within 19%)."""
    if not lengths["docs"]:
        return None
    seen, middle = 0, (lengths["docs"] + 1) / 2
    for b in sorted(lengths["hist"], key=int):
        seen += lengths["hist"][b]
        if seen >= middle:
            return bin_lower_edge(int(b))
    return None


def summarize(stats: dict) -> dict:
    """The per-source Table 5 view (plus the all-sources row) that goes into stats.json and stats.md."""
    rows = {}
    everything = empty_lengths()
    for source in [s for s in SOURCE_ORDER if s in stats]:
        lengths = total_lengths(stats[source])
        merge_lengths(everything, lengths)
        rows[source] = _row(lengths) | {"split_docs": {s: stats[source]["splits"][s]["docs"] for s in SPLITS}}
    rows["all"] = _row(everything)
    return rows


def _row(lengths: dict) -> dict:
    docs, tokens = lengths["docs"], lengths["tokens"]
    row = {"docs": docs, "tokens": tokens, "avg_doc_len": tokens / docs if docs else None,
           "median_doc_len_approx": approx_median(lengths), "min_doc_len": lengths["min"],
           "max_doc_len": lengths["max"]}
    for t in THRESHOLDS:
        row[f"share_docs_over_{t}"] = lengths[f"docs_over_{t}"] / docs if docs else None
        row[f"share_tokens_in_docs_over_{t}"] = lengths[f"tokens_in_docs_over_{t}"] / tokens if tokens else None
    return row


def human(n: float | None) -> str:
    """1_800_000_000 -> '1.8B', 95_900 -> '95.9K', 506 -> '506' (Table 5's style)."""
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown_table(stats: dict) -> str:
    """Table 5 columns (with the paper's figures beside ours), then what the pipeline left out and why."""
    summary = summarize(stats)
    lines = [
        "| Source | Docs | Tokens | Avg doc len | Median (approx) | Docs > 512 | Docs > 4,096 | Tokens in docs > 4,096 "
        "| Paper tokens | Paper avg doc len |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for source, row in summary.items():
        paper = PAPER_TABLE5.get(source, ("", ""))
        lines.append(
            f"| {source} | {row['docs']:,} | {human(row['tokens'])} | {human(row['avg_doc_len'])} "
            f"| {human(row['median_doc_len_approx'])} | {_pct(row['share_docs_over_512'])} "
            f"| {_pct(row['share_docs_over_4096'])} | {_pct(row['share_tokens_in_docs_over_4096'])} "
            f"| {paper[0]} | {paper[1]} |"
        )
    lines += ["", "| Source | Read | Unknown files | Malformed | Too large | Sampled out | Too short | Capped "
                  "| Selected | Train / valid / test docs | Tokens not in dict |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for source in [s for s in SOURCE_ORDER if s in stats]:
        c = stats[source]["counts"]
        split_docs = " / ".join(f"{stats[source]['splits'][s]['docs']:,}" for s in SPLITS)
        lines.append(
            f"| {source} | {c['read']:,} | {c['unknown_file']:,} | {c['malformed']:,} | {c['too_large']:,} "
            f"| {c['sampled_out']:,} | {c['too_short']:,} | {c['capped']:,} | {c['selected']:,} | {split_docs} "
            f"| {c['unk_tokens']:,} |"
        )
    return "\n".join(lines) + "\n"


def plot_lengths(stats: dict, dest: Path) -> None:
    """PNG: document-length distribution per source on a log axis, with the 512 and 4,096 marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for source in [s for s in SOURCE_ORDER if s in stats]:
        lengths = total_lengths(stats[source])
        if not lengths["docs"]:
            continue
        bins = sorted(int(b) for b in lengths["hist"])
        edges = [bin_lower_edge(b) or 1.0 for b in range(bins[0], bins[-1] + 2)]
        counts = [lengths["hist"].get(str(b), 0) / lengths["docs"] for b in range(bins[0], bins[-1] + 1)]
        ax.stairs(counts, edges, label=f"{source} ({lengths['docs']:,} docs)")
    for t in THRESHOLDS:
        ax.axvline(t, color="grey", linestyle="--", linewidth=1)
        ax.text(t, ax.get_ylim()[1] * 0.95, f" {t:,}", color="grey", va="top")
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("share of the source's documents")
    ax.set_title("Document lengths per source")
    ax.legend()
    fig.tight_layout()
    with open(dest, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
