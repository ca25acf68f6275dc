"""Tiny raw inputs in every source form (with deliberate defects), and helpers to read the output back.

Every good document starts with a unique marker word (``mark<source><n>``), so a test can follow each
document through selection, splitting and binarization without trusting the pipeline's own bookkeeping.
"""
from __future__ import annotations

import bz2
import gzip
import json
import random
from pathlib import Path

WORDS = ("the of and to in a is was for on that with as by he it at from his an were are which this be "
         "also or had first one their its new after but who not they have her she two been other when there "
         "all during into school time may years more most only over city some world would where later up "
         "such used many can state about national out known university united then made").split()


def text_words(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    out = []
    for i in range(0, n, 12):
        sentence = " ".join(words[i:i + 12])
        out.append(sentence[:1].upper() + sentence[1:] + ".")
    return " ".join(out)


def document(rng: random.Random, marker: str, n_words: int, n_paragraphs: int = 3) -> list[str]:
    per = max(1, n_words // n_paragraphs)
    paragraphs = [text_words(rng, per) for _ in range(n_paragraphs)]
    paragraphs[0] = f"{marker} {paragraphs[0]}"
    return paragraphs


def write_raw_sources(root: Path, seed: int = 0) -> tuple[dict, dict, dict]:
    """Write all four sources (with defects); returns (paths, expected good documents, expected problems).

    expected[source] is the list of good documents, in reading order, as lists of paragraphs.
    problems[source] is a list of (file name, line, kind) that must be reported.
    """
    rng = random.Random(seed)
    root = Path(root)
    expected = {s: [] for s in ("books", "wikipedia", "realnews", "stories")}
    problems = {s: [] for s in expected}

    # Books: folder of .txt (one gzipped), an empty book, a PDF, a book with a bad UTF-8 line.
    books = root / "books"
    books.mkdir(parents=True)
    lengths = [5000, 800, 300]  # the first is longer than 4,096 tokens
    for i, n in enumerate(lengths):
        paragraphs = document(rng, f"markbooks{i}", n, n_paragraphs=6)
        body = "\n\n".join(paragraphs) + "\n"
        if i == 2:
            with gzip.open(books / f"book{i}.txt.gz", "wt", encoding="utf-8") as f:
                f.write(body)
        else:
            (books / f"book{i}.txt").write_text(body, encoding="utf-8")
        expected["books"].append(paragraphs)
    (books / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    (books / "notes.pdf").write_bytes(b"%PDF-1.4 not text")
    (books / "zbroken.txt").write_bytes(b"A good first line.\nA bad \xff\xfe line.\n")
    problems["books"] += [("notes.pdf", 0, "unknown_file"), ("zbroken.txt", 2, "malformed")]

    # Wikipedia: WikiExtractor <doc> form (stray text, truncated last doc), JSON-lines form (bad lines,
    # compressed with bz2), and a file of unknown form.
    wiki = root / "wiki" / "AA"
    wiki.mkdir(parents=True)
    lines = []
    for i in range(4):
        title = f"markwikipedia{i}"
        paragraphs = [title] + document(rng, f"Title{i}", 120, 2)
        lines += [f'<doc id="{i}" url="https://en.wikipedia.org/wiki?curid={i}" title="{title}">', title, ""]
        lines += [p for para in paragraphs[1:] for p in (para, "")]
        lines += ["</doc>"]
        expected["wikipedia"].append(paragraphs)
        if i == 1:
            lines += ["stray text between documents"]
            problems["wikipedia"].append(("wiki_00", len(lines), "malformed"))
    lines += ['<doc id="99" url="u" title="cut">', "cut", "", "this document never ends"]
    problems["wikipedia"].append(("wiki_00", len(lines) - 3, "malformed"))
    (wiki / "wiki_00").write_text("\n".join(lines) + "\n", encoding="utf-8")
    json_lines = []
    for i in range(4, 6):
        paragraphs = document(rng, f"markwikipedia{i}", 150, 2)
        json_lines.append(json.dumps({"id": str(i), "url": "u", "title": f"T{i}", "text": "\n".join(paragraphs)}))
        expected["wikipedia"].append([f"T{i}"] + paragraphs)
    json_lines.insert(1, '{"id": "7", "text": broken')
    json_lines.append(json.dumps({"id": "8", "title": "no text"}))
    problems["wikipedia"] += [("wiki_01.bz2", 2, "malformed"), ("wiki_01.bz2", 4, "malformed")]
    with bz2.open(wiki / "wiki_01.bz2", "wt", encoding="utf-8") as f:
        f.write("\n".join(json_lines) + "\n")
    (wiki / "wiki_02").write_text("plain text, neither form\n", encoding="utf-8")
    problems["wikipedia"].append(("wiki_02", 0, "unknown_file"))

    # Realnews: 30 documents, alternately short and longer than 1,200 tokens, plus two bad lines.
    records = []
    for i in range(30):
        n = 1500 if i % 2 == 0 else 400
        paragraphs = document(rng, f"markrealnews{i}", n, 4)
        records.append(json.dumps({"title": f"news {i}", "text": "\n\n".join(paragraphs), "domain": "x.com"}))
        expected["realnews"].append(paragraphs)
    records.insert(5, "not json at all")
    records.insert(9, json.dumps({"title": "text is a list", "text": ["a"]}))
    problems["realnews"] += [("realnews.jsonl", 6, "malformed"), ("realnews.jsonl", 10, "malformed")]
    (root / "realnews.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")

    # Stories: one story per line.
    stories = []
    for i in range(12):
        paragraphs = document(rng, f"markstories{i}", 200 + 40 * i, 1)
        stories.append(paragraphs[0])
        expected["stories"].append(paragraphs)
    (root / "stories.txt").write_text("\n".join(stories) + "\n\n", encoding="utf-8")

    paths = {"books": books, "wikipedia": root / "wiki", "realnews": root / "realnews.jsonl",
             "stories": root / "stories.txt"}
    return paths, expected, problems


def write_story_folder(root: Path, n: int, seed: int = 1) -> list[list[str]]:
    """Stories in their folder form (one .txt per story)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    expected = []
    for i in range(n):
        paragraphs = document(rng, f"markstoryfile{i}", 60, 2)
        (root / f"story{i:02d}.txt").write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
        expected.append(paragraphs)
    return expected


def marker_of(paragraphs: list[str]) -> str:
    """The marker word of a document (a Wikipedia document's title line is its marker)."""
    return paragraphs[0].split()[0]


def read_binarized_documents(data_bin: Path, split: str, decode) -> list[str]:
    """The documents of a binarized split, decoded to text: items up to each lone </s> separator."""
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    vocab = Dictionary.load(str(data_bin / "dict.txt"))
    dataset = MMapIndexedDataset(str(data_bin / split))
    docs, current = [], []
    for i in range(len(dataset)):
        item = dataset[i].tolist()
        assert item[-1] == vocab.eos(), "every binarized line ends with </s>"
        if len(item) == 1:  # the empty line between documents
            docs.append("\n".join(current))
            current = []
        else:
            current.append(decode([vocab[t] for t in item[:-1]]))
    assert not current, "the last document is followed by its separator"
    return docs
