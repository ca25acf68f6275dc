"""Synthetic raw sources and a toy GPT-2-style BPE vocabulary, for tests, benchmarks and smoke runs.

Nothing is downloaded: the text is pseudo-words with Zipf frequencies, written in each source's raw form;
the vocabulary is byte-level (GPT-2's 256 byte symbols) plus left-to-right merges that turn the most
frequent words into single tokens, written as ``encoder.json``, ``vocab.bpe`` and a fairseq ``dict.txt``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tokenizers import _load_fairseq_gpt2_module

# Document lengths in words (lognormal medians and spreads), loosely after Table 5's averages.
SOURCE_SHAPES = {"books": (60_000, 0.4), "wikipedia": (250, 1.0), "realnews": (900, 0.7), "stories": (4_000, 0.6)}
_SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "st", "er", "an", "on", "in"]


class WordSource:
    """Pseudo-words drawn with Zipf frequencies, made into sentences and paragraphs."""

    def __init__(self, vocab_size: int = 20_000, seed: int = 0, zipf_s: float = 1.1):
        self.rng = np.random.default_rng(seed)
        words = set()
        while len(words) < vocab_size:
            n = int(self.rng.integers(1, 5))
            words.add("".join(self.rng.choice(_SYLLABLES, n)))
        self.words = np.array(sorted(words, key=lambda w: (len(w), w)))
        weights = 1.0 / np.arange(1, vocab_size + 1) ** zipf_s
        self.cdf = np.cumsum(weights / weights.sum())

    def paragraph(self, n_words: int) -> str:
        picks = np.searchsorted(self.cdf, self.rng.random(max(1, n_words)) * self.cdf[-1], side="right")
        words = self.words[np.minimum(picks, len(self.words) - 1)]
        out, i = [], 0
        while i < len(words):
            k = int(self.rng.integers(5, 25))
            sentence = " ".join(words[i:i + k])
            out.append(sentence[:1].upper() + sentence[1:] + ".")
            i += k
        return " ".join(out)

    def document(self, n_words: int) -> list[str]:
        paragraphs, left = [], max(1, n_words)
        while left > 0:
            k = min(left, int(self.rng.integers(40, 160)))
            paragraphs.append(self.paragraph(k))
            left -= k
        return paragraphs

    def length(self, source: str) -> int:
        median, sigma = SOURCE_SHAPES[source]
        return max(5, int(self.rng.lognormal(np.log(median), sigma)))


def write_synthetic_sources(root: Path, total_bytes: int, seed: int = 0,
                            shares: dict | None = None) -> dict[str, Path]:
    """Write about ``total_bytes`` of raw text in the four sources' raw forms; returns source -> path."""
    shares = shares or {"books": 0.15, "wikipedia": 0.25, "realnews": 0.3, "stories": 0.3}
    words = WordSource(seed=seed)
    root = Path(root)
    paths = {"books": root / "books", "wikipedia": root / "wikipedia", "realnews": root / "realnews.jsonl",
             "stories": root / "stories.txt"}
    paths["books"].mkdir(parents=True, exist_ok=True)
    (paths["wikipedia"] / "AA").mkdir(parents=True, exist_ok=True)
    for source, share in shares.items():
        budget, written, i = int(total_bytes * share), 0, 0
        wiki_file, wiki_index = None, 0
        with open(paths["realnews"], "a", encoding="utf-8") as realnews, \
                open(paths["stories"], "a", encoding="utf-8") as stories:
            while written < budget:
                paragraphs = words.document(words.length(source))
                if source == "books":
                    text = "\n\n".join(paragraphs) + "\n"
                    (paths["books"] / f"book_{i:05d}.txt").write_text(text, encoding="utf-8")
                elif source == "wikipedia":
                    if wiki_file is None or wiki_file.tell() > 1 << 20:  # WikiExtractor's 1 MB files
                        wiki_file = open(paths["wikipedia"] / "AA" / f"wiki_{wiki_index:02d}", "w", encoding="utf-8")
                        wiki_index += 1
                    title = paragraphs[0].split(".")[0][:40]
                    text = f'<doc id="{i}" url="https://en.wikipedia.org/wiki?curid={i}" title="{title}">\n' \
                           f"{title}\n\n" + "\n\n".join(paragraphs) + "\n</doc>\n"
                    wiki_file.write(text)
                elif source == "realnews":
                    text = json.dumps({"title": f"news {i}", "text": "\n\n".join(paragraphs)}) + "\n"
                    realnews.write(text)
                else:
                    text = " ".join(paragraphs) + "\n"
                    stories.write(text)
                written += len(text.encode("utf-8"))
                i += 1
        if wiki_file is not None:
            wiki_file.close()
    return paths


def write_toy_gpt2_bpe(dest: Path, words, omit_ids=()) -> dict[str, Path]:
    """A byte-level GPT-2-style vocabulary: 256 byte symbols, then left-to-right merges building each of
    ``words`` (with and without GPT-2's leading-space marker). ``omit_ids`` are left out of dict.txt."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    byte_encoder = _load_fairseq_gpt2_module().bytes_to_unicode()
    encoder = {byte_encoder[b]: b for b in range(256)}
    merges = []
    for word in words:
        for form in (" " + word, word):
            symbols = [byte_encoder[b] for b in form.encode("utf-8")]
            current = symbols[0]
            for nxt in symbols[1:]:
                merged = current + nxt
                if merged not in encoder:
                    encoder[merged] = len(encoder)
                    merges.append((current, nxt))
                current = merged
    paths = {"encoder_json": dest / "encoder.json", "vocab_bpe": dest / "vocab.bpe", "dict_txt": dest / "dict.txt"}
    paths["encoder_json"].write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    # fairseq's reader drops the first (version) line and the last (empty) line.
    paths["vocab_bpe"].write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    omit = set(omit_ids)
    with open(paths["dict_txt"], "w", encoding="utf-8") as f:
        for token_id in sorted(encoder.values()):
            if token_id not in omit:
                f.write(f"{token_id} {1000 + len(encoder) - token_id}\n")
    return paths
