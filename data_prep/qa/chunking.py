"""Question + document -> model inputs ``<s> question </s></s> document </s>``, with gold token positions.

A document longer than the model allows is cut into chunks of ``budget`` document tokens whose starts
are ``stride`` tokens apart (BERT's ``--doc-stride``: the step between chunk starts, so consecutive
chunks overlap by ``budget - stride`` tokens). Every answer occurrence that lies wholly inside a chunk
is a gold span of that chunk; a chunk with none points at ``<s>`` (position 0), as BERT does for
SQuAD 2.0 and for chunks without the answer.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]
SPECIAL_TOKENS_BEFORE_DOC = 3  # <s> before the question, </s></s> after it
SPECIAL_TOKENS = SPECIAL_TOKENS_BEFORE_DOC + 1  # and </s> at the end


@dataclass
class Chunk:
    tokens: list[int]
    starts: list[int]      # gold start positions in ``tokens`` ([0] = no answer in this chunk)
    ends: list[int]        # the matching end positions (inclusive)
    first_token: int       # index of the chunk's first document token in the whole document
    num_tokens: int        # document tokens in the chunk


def token_spans(spans: Sequence[Span], occurrences: Sequence[Span]) -> list[Span | None]:
    """For each character span ``[start, end)``: the first and last token (inclusive) overlapping it, or
    None if no token does. ``spans`` are the tokens' character spans in order (non-decreasing)."""
    starts, ends = [s for s, _ in spans], [e for _, e in spans]
    out = []
    for start, end in occurrences:
        first = bisect.bisect_right(ends, start)       # first token ending after `start`
        last = bisect.bisect_left(starts, end) - 1     # last token starting before `end`
        out.append((first, last) if first < len(spans) and first <= last else None)
    return out


def chunk_starts(num_tokens: int, budget: int, stride: int, max_chunks: int | None = None) -> list[int]:
    """Start of every chunk: 0, stride, 2*stride, ... until a chunk reaches the document's end."""
    if budget < 1 or not 1 <= stride <= budget:
        raise ValueError(f"need 1 <= doc stride ({stride}) <= document tokens per chunk ({budget})")
    starts = [0]
    while starts[-1] + budget < num_tokens and (max_chunks is None or len(starts) < max_chunks):
        starts.append(starts[-1] + stride)
    return starts


def build_chunks(question: list[int], document: list[int], occurrences: Sequence[Span], max_positions: int,
                 stride: int, bos: int, eos: int, max_chunks: int | None = None) -> list[Chunk]:
    """All chunks of one question; ``occurrences`` are answer spans in document token indices (inclusive)."""
    budget = max_positions - len(question) - SPECIAL_TOKENS
    offset = len(question) + SPECIAL_TOKENS_BEFORE_DOC
    chunks = []
    for first in chunk_starts(len(document), budget, stride, max_chunks):
        piece = document[first:first + budget]
        gold = [(offset + s - first, offset + e - first) for s, e in occurrences
                if first <= s and e < first + len(piece)]
        gold = gold or [(0, 0)]
        chunks.append(Chunk(
            tokens=[bos, *question, eos, eos, *piece, eos],
            starts=[s for s, _ in gold], ends=[e for _, e in gold],
            first_token=first, num_tokens=len(piece),
        ))
    return chunks
