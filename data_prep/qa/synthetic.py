"""A synthetic long-range QA set in SQuAD format, for the benchmark, the demo and the tests (no downloads).

Each document is ``doc_tokens`` filler words (``w0`` ... ``w{fillers-1}``) with ``candidates`` two-token
entity names (``F<i> L<j>``) written into it at random places at least ``min_distance`` tokens after the
document's start; no two candidates share a first or a last name. The question names one of them,
``where is F<i> L<j> ?``, and the answer is that entity's mention in the document. Finding it means
matching the mention against the question, thousands of tokens away: with sliding-window attention only
(and fewer layers than ``min_distance / window``) no token near a mention can see the question, so a
model can do no better than pick one of the candidates (``1 / candidates``).

``python -m data_prep.qa.synthetic --output DIR`` writes ``DIR/train.json`` and ``DIR/valid.json``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic


@dataclass(frozen=True)
class LongRangeQa:
    doc_tokens: int = 2000
    candidates: int = 6
    min_distance: int = 1000   # tokens between the document's start and the first possible mention
    fillers: int = 500
    names: int = 100           # first names F0.. and last names L0..
    name_tokens: int = 2       # 1: names are single tokens F<i>

    def question(self, rng: np.random.Generator, qid: str) -> dict:
        """One SQuAD paragraph (context + its one question)."""
        if self.candidates > self.names or self.min_distance + 3 * self.candidates > self.doc_tokens:
            raise ValueError("the document is too short (or the name pool too small) for the candidates")
        words = [f"w{i}" for i in rng.integers(0, self.fillers, self.doc_tokens)]
        firsts = rng.choice(self.names, self.candidates, replace=False)
        lasts = rng.choice(self.names, self.candidates, replace=False)
        # mention slots: distinct, non-adjacent positions in the far part of the document
        room = (self.doc_tokens - self.min_distance - 1) // 3
        slots = self.min_distance + 3 * np.sort(rng.choice(room, self.candidates, replace=False))
        names = [f"F{first} L{last}" if self.name_tokens == 2 else f"F{first}" for first, last in zip(firsts, lasts)]
        for name, slot in zip(names, slots):
            words[slot:slot + self.name_tokens] = name.split()
        target = int(rng.integers(self.candidates))
        name = names[target]
        answer_start = sum(len(w) + 1 for w in words[: slots[target]])
        context = " ".join(words)
        assert context[answer_start:answer_start + len(name)] == name
        return {"context": context, "qas": [{"id": qid, "question": f"where is {name} ?",
                                             "answers": [{"text": name, "answer_start": answer_start}]}]}

    def squad(self, n_questions: int, seed: int, prefix: str) -> dict:
        rng = np.random.default_rng(seed)
        paragraphs = [self.question(rng, f"{prefix}{i}") for i in range(n_questions)]
        return {"version": "long-range-qa", "data": [{"title": "synthetic", "paragraphs": paragraphs}]}


def write_long_range_qa(output: Path, task: LongRangeQa, train: int, valid: int, seed: int = 0) -> dict[str, Path]:
    paths = {}
    for offset, (split, n) in enumerate((("train", train), ("valid", valid))):
        paths[split] = Path(output) / f"{split}.json"
        write_text_atomic(paths[split], json.dumps(task.squad(n, seed * 1000 + offset, f"{split}-")))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.qa.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = LongRangeQa()
    p.add_argument("--output", type=Path, required=True, help="folder for train.json and valid.json")
    p.add_argument("--train", type=int, default=6000, help="training questions")
    p.add_argument("--valid", type=int, default=500, help="validation questions")
    p.add_argument("--doc-tokens", type=int, default=d.doc_tokens, help="document length in tokens")
    p.add_argument("--candidates", type=int, default=d.candidates, help="entities per document")
    p.add_argument("--min-distance", type=int, default=d.min_distance, help="tokens before the first mention")
    p.add_argument("--names", type=int, default=d.names, help="first names (and last names) to draw from")
    p.add_argument("--name-tokens", type=int, choices=(1, 2), default=d.name_tokens, help="tokens per entity name")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    task = LongRangeQa(args.doc_tokens, args.candidates, args.min_distance, names=args.names,
                       name_tokens=args.name_tokens)
    for split, path in write_long_range_qa(args.output, task, args.train, args.valid, args.seed).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
