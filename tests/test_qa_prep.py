"""longformer-prep-qa: offsets round trip, chunking, the streamed SQuAD reader, and bad input."""

import json

import pytest

import bpe_fixtures as bf
import qa_fixtures as qf
from data_prep.qa import squad as squad_reader
from data_prep.qa.chunking import build_chunks, chunk_starts
from data_prep.qa.cli import main as prep_main
from data_prep.text_tokenizer import TokenizerSpec

BOS, PAD, EOS, UNK = 0, 1, 2, 3


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe")
    bf.train_gpt2_bpe(str(directory))
    bf.write_bpe_dictionary(str(directory))
    return directory


def _prep(tmp_path, train, valid=None, *flags):
    out = tmp_path / "out"
    argv = ["--train", str(train), "--valid", str(valid or train), "--output", str(out), "--no-progress", *flags]
    assert prep_main(argv) == 0
    return str(out)


def _independent_token_span(offsets, start, end):
    """Tokens overlapping [start, end), by scanning every token (no bisection)."""
    hits = [i for i in range(len(offsets) // 2) if offsets[2 * i] < end and offsets[2 * i + 1] > start]
    return hits[0], hits[-1]


@pytest.mark.parametrize("tokenizer", ["gpt2", "whitespace"])
def test_offsets_round_trip_and_chunks_hold_every_occurrence(tmp_path, bpe_dir, tokenizer):
    train = qf.write_json(tmp_path / "train.json", qf.round_trip_squad())
    mode = ["--model-dir", str(bpe_dir)] if tokenizer == "gpt2" else ["--tokenizer", "whitespace"]
    # 24 positions: short chunks, so that every document is split many times, with overlaps
    data = _prep(tmp_path, train, None, *mode, "--max-positions", "24", "--doc-stride", "5",
                 "--max-question-tokens", "6")
    tokenizer_ = (TokenizerSpec.from_model_dir(bpe_dir) if tokenizer == "gpt2"
                  else TokenizerSpec("whitespace", tmp_path / "out" / "dict.txt")).load()
    rows, starts, ends, examples = qf.read_split(data, "valid")
    source = {q["id"]: q for q in qf.round_trip_squad()["data"][0]["paragraphs"][0]["qas"]}
    assert [e["id"] for e in examples] == list(source)

    doc_ids, doc_spans = tokenizer_.encode(qf.CONTEXT)
    for example in examples:
        qa = source[example["id"]]
        assert example["offsets"] == [i for span in doc_spans for i in span]
        question = tokenizer_.encode(qa["question"])[0][:6]
        assert example["doc_offset"] == len(question) + 3
        gold = {_independent_token_span(example["offsets"], a["answer_start"], a["answer_start"] + len(a["text"]))
                for a in qa["answers"]}
        assert len(gold) == len(qa["answers"])
        covered = []
        for row, first, n in example["chunks"]:
            assert rows[row] == [BOS, *question, EOS, EOS, *doc_ids[first:first + n], EOS]
            inside = sorted((example["doc_offset"] + s - first, example["doc_offset"] + e - first)
                            for s, e in gold if first <= s and e < first + n)
            assert sorted(zip(starts[row], ends[row])) == (inside or [(0, 0)])
            for s, e in zip(starts[row], ends[row]):
                if (s, e) != (0, 0):  # the gold text comes back exactly from the token span
                    first_token, last_token = first + s - example["doc_offset"], first + e - example["doc_offset"]
                    assert qf.span_text(example, first_token, last_token) == qa["answers"][0]["text"]
            covered += range(first, first + n)
        assert set(covered) == set(range(len(doc_ids)))  # the chunks cover the whole document
        assert len(example["chunks"]) > 1
    assert len(source["zurich"]["answers"]) == len(source["who"]["answers"]) == 2  # two occurrences each
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["splits"]["valid"]["off_token_boundary"] == 0 and meta["splits"]["valid"]["skipped"] == 0


def test_answers_inside_a_token_are_counted_and_cover_the_token(tmp_path):
    paragraph = {"context": "tourists love it", "qas": [
        {"id": "mid", "question": "what ?", "answers": [{"text": "our", "answer_start": 1}]}]}
    data = _prep(tmp_path, qf.write_json(tmp_path / "t.json", qf.squad([paragraph])), None, "--tokenizer", "whitespace")
    rows, starts, ends, examples = qf.read_split(data, "train")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["splits"]["train"]["off_token_boundary"] == 1
    assert qf.span_text(examples[0], starts[0][0] - examples[0]["doc_offset"],
                        ends[0][0] - examples[0]["doc_offset"]) == "tourists"


def test_build_chunks_puts_each_occurrence_in_every_chunk_that_holds_it():
    document = list(range(100, 140))  # 40 document tokens
    occurrences = [(3, 4), (9, 9), (17, 20), (38, 39)]
    chunks = build_chunks([50, 51], document, occurrences, max_positions=16, stride=4, bos=BOS, eos=EOS)
    budget = 16 - 2 - 4
    assert [c.first_token for c in chunks] == chunk_starts(40, budget, 4) == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    for chunk in chunks:
        assert len(chunk.tokens) <= 16 and chunk.tokens[:5] == [BOS, 50, 51, EOS, EOS]
        inside = [(s - chunk.first_token + 5, e - chunk.first_token + 5) for s, e in occurrences
                  if chunk.first_token <= s and e < chunk.first_token + chunk.num_tokens]
        assert list(zip(chunk.starts, chunk.ends)) == (inside or [(0, 0)])
        for s, e in inside:  # the positions point at the occurrence's tokens
            assert chunk.tokens[s:e + 1] == document[s - 5 + chunk.first_token:e - 5 + chunk.first_token + 1]
    assert chunks[-1].first_token + chunks[-1].num_tokens == 40


def test_chunk_starts_reach_the_end_and_max_chunks_cuts():
    assert chunk_starts(5, 10, 3) == [0]
    assert chunk_starts(25, 10, 10) == [0, 10, 20]
    assert chunk_starts(25, 10, 10, max_chunks=1) == [0]
    with pytest.raises(ValueError, match="doc stride"):
        chunk_starts(25, 10, 11)


def test_streamed_reader_equals_json_load(tmp_path, monkeypatch):
    obj = {"version": 2.0, "data": qf.round_trip_squad()["data"] * 3, "after": [1, {"x": "]}"}]}
    path = qf.write_json(tmp_path / "s.json", obj)
    monkeypatch.setattr(squad_reader, "READ_CHARS", 5)  # refill the buffer constantly, splitting every value
    assert [a for _, a in squad_reader.iter_articles(path)] == obj["data"]


def test_whitespace_text_with_special_symbols_keeps_one_question_segment(tmp_path):
    paragraph = {"context": "a </s> b <s> c answer d", "qas": [
        {"id": "q", "question": "x </s> y ?", "answers": [{"text": "answer", "answer_start": 15}]}]}
    data = _prep(tmp_path, qf.write_json(tmp_path / "t.json", qf.squad([paragraph])), None, "--tokenizer", "whitespace")
    rows, starts, _, examples = qf.read_split(data, "train")
    row = rows[0]
    assert row.count(EOS) == 3 and row.index(EOS) == examples[0]["doc_offset"] - 2
    assert row[2] == UNK and row[row.index(EOS) + 3] == UNK  # '</s>' / '<s>' in the text became <unk>
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["splits"]["train"]["special_tokens_replaced"] == 3
    assert row[starts[0][0]] != UNK


def test_malformed_questions_are_reported_with_their_id_and_skipped(tmp_path, capsys, caplog):
    paragraph = {"context": qf.CONTEXT, "qas": [
        qf.qa("good", "Which city?", "Zürich"),
        {"id": "bad-offset", "question": "q?", "answers": [{"text": "Zürich", "answer_start": 3}]},
        {"id": "no-answer", "question": "q?", "answers": []},
        {"id": "no-question", "answers": [{"text": "city", "answer_start": 17}]},
        qf.qa("good", "Which city again?", "city"),  # repeats an id
        {"id": "impossible", "question": "Who?", "answers": [], "is_impossible": True},
    ]}
    train = qf.write_json(tmp_path / "t.json", qf.squad([paragraph], "v2.0"))
    data = _prep(tmp_path, train, None, "--tokenizer", "whitespace")
    skipped = (tmp_path / "out" / "train.skipped.txt").read_text()
    assert "question id bad-offset: answer 'Zürich' is not at answer_start 3" in skipped
    assert "question id no-answer: no answers" in skipped and "is_impossible" in skipped
    assert "question id no-question: no non-empty 'question'" in skipped
    assert "question id good repeats an earlier id" in skipped
    assert "bad-offset" in caplog.text
    rows, starts, ends, examples = qf.read_split(data, "train")
    assert [e["id"] for e in examples] == ["good", "impossible"]
    assert examples[1]["is_impossible"] and examples[1]["answers"] == []
    assert all(starts[row] == [0] and ends[row] == [0] for row, _, _ in examples[1]["chunks"])


@pytest.mark.parametrize("content, message", [
    ("not json", "not SQuAD JSON near character 0"),
    ('{"version": "1.1"}', 'no "data" array'),
    ('{"data": [{"title": "no paragraphs"}]}', "expected an object with a 'paragraphs' list"),
    ('{"data": [{"paragraphs": [{"context": "a b", "qas": [{"id": "x", "question": "q", "answers": []}]}]}]}',
     "no usable question"),
])
def test_bad_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        prep_main(["--train", str(path), "--valid", str(path), "--output", str(tmp_path / "out"),
                   "--tokenizer", "whitespace", "--no-progress"])
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("flags, message", [
    (["--max-positions", "8", "--max-question-tokens", "4"], "leaves no room for a document"),
    (["--max-positions", "32", "--max-question-tokens", "4", "--doc-stride", "25"], "--doc-stride 25 must be between 1 and 24"),
    (["--max-chunks", "0"], "--max-chunks must be >= 1"),
])
def test_bad_options_are_refused(tmp_path, flags, message):
    train = qf.write_json(tmp_path / "t.json", qf.round_trip_squad())
    with pytest.raises(SystemExit, match=message):
        prep_main(["--train", train, "--valid", train, "--output", str(tmp_path / "out"), "--tokenizer",
                   "whitespace", *flags])


def test_model_dir_without_tokenizer_files_and_existing_output_are_refused(tmp_path):
    train = qf.write_json(tmp_path / "t.json", qf.round_trip_squad())
    with pytest.raises(SystemExit, match="has no dict.txt"):
        prep_main(["--train", train, "--valid", train, "--output", str(tmp_path / "out"), "--model-dir", str(tmp_path)])
    _prep(tmp_path, train, None, "--tokenizer", "whitespace")
    with pytest.raises(SystemExit, match="pass --overwrite"):
        _prep(tmp_path, train, None, "--tokenizer", "whitespace")
    _prep(tmp_path, train, None, "--tokenizer", "whitespace", "--overwrite")


def test_two_workers_write_the_same_files(tmp_path):
    train = qf.write_json(tmp_path / "t.json", qf.squad(qf.round_trip_squad()["data"][0]["paragraphs"] * 1 + [
        {"context": f"filler {i} and the answer {i}", "qas": [
            {"id": f"n{i}", "question": "which ?", "answers": [{"text": "answer", "answer_start": 16 + len(str(i))}]}]}
        for i in range(30)]))
    one = qf.read_split(_prep(tmp_path / "a", train, None, "--tokenizer", "whitespace"), "train")
    two = qf.read_split(_prep(tmp_path / "b", train, None, "--tokenizer", "whitespace", "--workers", "2"), "train")
    assert one == two
