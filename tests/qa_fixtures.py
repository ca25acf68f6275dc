"""Tiny SQuAD-format files for the QA tests, and readers of what longformer-prep-qa writes."""

from __future__ import annotations

import json
import os

from fairseq.data import data_utils

# Non-ASCII letters, a no-break space, tabs, runs of spaces and a blank line, and answers that occur twice.
CONTEXT = ("Zürich\u00a0 is  a city.\tThe café «Le Tour» sells crème brûlée ;\n\nnaïve   tourists love 東京 "
           "too. Later, Zürich hosts the café again and naïve   tourists return.")


def occurrences(context: str, text: str) -> list[int]:
    starts, i = [], context.find(text)
    while i >= 0:
        starts.append(i)
        i = context.find(text, i + 1)
    return starts


def qa(qid: str, question: str, answer: str, context: str = CONTEXT, every: bool = True) -> dict:
    """A question whose answers are every occurrence of ``answer`` in ``context`` (TriviaQA style) or the first."""
    starts = occurrences(context, answer)
    assert starts, answer
    return {"id": qid, "question": question,
            "answers": [{"text": answer, "answer_start": s} for s in (starts if every else starts[:1])]}


def squad(paragraphs: list[dict], version: str = "1.1") -> dict:
    return {"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}


def write_json(path, obj) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    return str(path)


def round_trip_squad() -> dict:
    return squad([{"context": CONTEXT, "qas": [
        qa("zurich", "Which city?", "Zürich"),
        qa("dessert", "What does the café sell?", "crème brûlée"),
        qa("tokyo", "What do naïve tourists love?", "東京"),
        qa("name", "What is the café called?", "«Le Tour»"),
        qa("who", "Who returns?", "naïve   tourists"),
    ]}])


def read_split(data: str, split: str) -> tuple[list, list, list, list[dict]]:
    """Rows, gold starts, gold ends (lists of ints) and the examples records of a prepared split."""
    columns = []
    for name in ("tokens", "starts", "ends"):
        dataset = data_utils.load_indexed_dataset(os.path.join(data, f"{split}.{name}"), None)
        columns.append([dataset[i].tolist() for i in range(len(dataset))])
    with open(os.path.join(data, f"{split}.examples.jsonl"), encoding="utf-8") as f:
        examples = [json.loads(line) for line in f]
    return (*columns, examples)


def span_text(example: dict, first_token: int, last_token: int) -> str:
    offsets = example["offsets"]
    return example["context"][offsets[2 * first_token]:offsets[2 * last_token + 1]]
