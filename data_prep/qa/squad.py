"""SQuAD-format JSON, streamed article by article, checked into typed records.

The format (SQuAD v1.1 / v2.0; TriviaQA converted to it): ``{"data": [{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?, "aliases"?}]}]}]}``.
An answer may be listed several times (several occurrences in the context, several annotators, several
aliases of one TriviaQA answer). ``aliases`` (TriviaQA conversions) are extra gold texts for the
evaluation with no position in the context.

The file is never loaded whole: the ``data`` array is decoded one article at a time, so converted
TriviaQA files of several GB stream in bounded memory. A record that breaks the format is reported with
its id and skipped; a file that is not SQuAD JSON at all is refused.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..jsonl import InputError

READ_CHARS = 1 << 20


@dataclass
class Question:
    id: str
    question: str
    occurrences: list[tuple[int, int]]  # answer character spans in the context, first-listed first
    gold: list[str]                     # answer texts (and aliases) for exact match / F1, distinct
    is_impossible: bool = False


@dataclass
class Paragraph:
    where: str
    context: str
    questions: list[Question]
    skipped: list[str] = field(default_factory=list)  # "id X: reason" for every malformed question


class _JsonStream:
    """Incremental decoding of one JSON document from a text file, value by value."""

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path
        self.buf, self.pos, self.consumed, self.eof = "", 0, 0, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.handle.read(max(READ_CHARS, len(self.buf)))  # doubling: a huge value costs O(n log n)
        self.consumed += self.pos
        self.buf, self.pos = self.buf[self.pos:] + data, 0
        self.eof = not data
        return bool(data)

    def peek(self) -> str:
        """The next non-white-space character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos].isspace():
                self.pos += 1
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos:self.pos + 1]

    def expect(self, chars: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            self.fail(f"expected one of {' '.join(repr(c) for c in chars)}, found {char or 'the end of the file'!r}")
        self.pos += 1
        return char

    def value(self):
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._more():
                    continue
                self.fail(err.msg)
            if end == len(self.buf) and self._more():  # a number may go on in the next read
                continue
            self.pos = end
            return value

    def fail(self, message: str):
        raise InputError(f"{self.path}: not SQuAD JSON near character {self.consumed + self.pos:,}: {message}; "
                         'the file must hold {"data": [{"paragraphs": [{"context": ..., "qas": [...]}]}]}')


def iter_articles(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(index, article)`` for every element of the top-level ``data`` array, streamed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; give a SQuAD-format JSON file")
    with open(path, encoding="utf-8") as handle:
        stream = _JsonStream(handle, path)
        stream.expect("{")
        while stream.peek() != "}":
            key = stream.value()
            stream.expect(":")
            if key != "data":
                stream.value()  # "version" and the like
                if stream.expect(",}") == "}":
                    break
                continue
            stream.expect("[")
            index = 0
            while stream.peek() != "]":
                article = stream.value()
                yield index, article
                index += 1
                if stream.expect(",]") == "]":
                    return
            return
    raise InputError(f'{path}: no "data" array; the file must hold {{"data": [...]}} as SQuAD does')


def iter_paragraphs(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``("FILE article I paragraph J", paragraph)``; articles without a ``paragraphs`` list are refused."""
    for i, article in iter_articles(path):
        where = f"{path} article {i}"
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"{where}: expected an object with a 'paragraphs' list (SQuAD format)")
        for j, paragraph in enumerate(paragraphs):
            yield f"{where} paragraph {j}", paragraph


def parse_paragraph(where: str, raw) -> Paragraph:
    """Typed records of one paragraph; malformed questions are listed in ``skipped`` with their id."""
    if not isinstance(raw, dict) or not isinstance(raw.get("context"), str) or not raw["context"].strip():
        return Paragraph(where, "", [], [f"{where}: no non-empty 'context' string; its questions are skipped"])
    if not isinstance(raw.get("qas"), list):
        return Paragraph(where, raw["context"], [], [f"{where}: no 'qas' list"])
    paragraph = Paragraph(where, raw["context"], [])
    for k, qa in enumerate(raw["qas"]):
        try:
            paragraph.questions.append(_question(qa, raw["context"]))
        except InputError as err:
            qid = qa.get("id", f"#{k}") if isinstance(qa, dict) else f"#{k}"
            paragraph.skipped.append(f"{where} question id {qid}: {err}")
    return paragraph


def _question(qa, context: str) -> Question:
    if not isinstance(qa, dict):
        raise InputError(f"expected an object, got {type(qa).__name__}")
    qid = qa.get("id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) == "":
        raise InputError("no 'id' (a string or integer)")
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError("no non-empty 'question' string")
    is_impossible = qa.get("is_impossible", False)
    if not isinstance(is_impossible, bool):
        raise InputError("'is_impossible' must be true or false")
    answers = qa.get("answers", [])
    if not isinstance(answers, list):
        raise InputError("'answers' must be a list of {'text', 'answer_start'}")
    aliases = qa.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InputError("'aliases' must be a list of strings")

    occurrences, gold = [], []
    if not is_impossible:
        for answer in answers:
            span = _answer_span(answer, context)
            if span not in occurrences:
                occurrences.append(span)
            gold.append(answer["text"])
        if not occurrences:
            raise InputError("no answers; give at least one, or mark a SQuAD 2.0 no-answer question "
                             "with \"is_impossible\": true")
    gold = list(dict.fromkeys(gold + aliases))
    return Question(str(qid), question, occurrences, gold, is_impossible)


def _answer_span(answer, context: str) -> tuple[int, int]:
    """``(start, end)`` of an answer in the context, white space trimmed, checked against the text."""
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        raise InputError("every answer must be an object with a 'text' string and an 'answer_start' integer")
    text, start = answer["text"], answer.get("answer_start")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise InputError(f"answer {text!r} has no 'answer_start' >= 0 (got {start!r})")
    stripped = text.strip()
    if not stripped:
        raise InputError("an answer text is empty")
    start += len(text) - len(text.lstrip())
    end = start + len(stripped)
    if context[start:end] != stripped:
        raise InputError(f"answer {stripped!r} is not at answer_start {answer['answer_start']} of the context "
                         f"(found {context[start:end]!r}); fix the offset")
    return start, end
