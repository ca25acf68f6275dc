"""Exact match and F1 as the official SQuAD evaluation scripts define them (written here, not copied).

* normalisation: lower case, drop every ASCII punctuation character (``string.punctuation``), drop the
  articles *a*, *an*, *the* as whole words, collapse white space;
* exact match: the normalised strings are equal;
* F1: over the normalised white-space tokens, with multiset overlap: precision = common / predicted,
  recall = common / gold, F1 = 2PR / (P + R), 0 when nothing is in common;
* a question scores its best gold answer; the totals are means over questions, times 100.

No-answer questions (SQuAD 2.0): the gold answers are the ones whose normalised text is not empty, or
``[""]`` if there are none; when either side normalises to no tokens, F1 is 1 if both do and 0
otherwise (the v2.0 script's rule; the v1.1 script gives 0 there, which only differs for a gold answer
that is all articles/punctuation). A question without a prediction scores 0.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Iterable[str]) -> list[str]:
    """The answers a prediction is scored against: non-empty after normalisation, else ``[""]`` (no answer)."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def evaluate(predictions: Mapping[str, str], answers: Mapping[str, Iterable[str]]) -> dict:
    """``{"exact_match", "f1", "questions"}`` over every question of ``answers`` (id -> gold texts)."""
    em = f1_sum = 0.0
    for qid, texts in answers.items():
        if qid not in predictions:
            continue
        gold = gold_answers(texts)
        em += max(exact_match(predictions[qid], g) for g in gold)
        f1_sum += max(f1(predictions[qid], g) for g in gold)
    n = len(answers)
    return {"exact_match": 100 * em / n if n else 0.0, "f1": 100 * f1_sum / n if n else 0.0, "questions": n}
