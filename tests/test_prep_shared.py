"""The pieces every finetuning prep tool shares: model tokenizers with spans, JSON lines, workers,
fairseq binaries, length statistics."""

import io
import json
import os
from argparse import Namespace

import pytest

import bpe_fixtures as bf
from data_prep.binarized import IndexedWriter, write_dictionary
from data_prep.jsonl import InputError, read_jsonl, text_field
from data_prep.lengths import length_stats, percentile, stats_line
from data_prep.parallel import ordered_map
from data_prep.text_tokenizer import TokenizerSpec, WhitespaceTokenizer, build_whitespace_dictionary
from fairseq.data import Dictionary, data_utils

TEXTS = [
    "Déjà vu: x  =  3.14;\n\tit's   naïve ☃ — 1234567 tabs\tand  spaces ",
    "The for statement iterates over the items of any sequence, in order.",
    "  leading and trailing  ",
    "日本語のテキスト and ẞ ligatures ﬁ",
]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("bpe"))
    bf.train_gpt2_bpe(directory)
    bf.write_bpe_dictionary(directory, leave_out=20)  # some byte pieces become <unk>
    return directory


def test_gpt2_ids_equal_fairseqs_bpe_plus_dictionary(bpe_dir):
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE

    bpe = GPT2BPE(Namespace(gpt2_encoder_json=os.path.join(bpe_dir, "encoder.json"),
                            gpt2_vocab_bpe=os.path.join(bpe_dir, "vocab.bpe")))
    dictionary = Dictionary.load(os.path.join(bpe_dir, "dict.txt"))
    tokenizer = TokenizerSpec.from_model_dir(bpe_dir).load()
    unks = 0
    for text in TEXTS:
        expected = dictionary.encode_line(bpe.encode(text), append_eos=False, add_if_not_exist=False).tolist()
        ids, spans = tokenizer.encode(text)
        assert ids == expected
        assert len(spans) == len(ids)
        unks += expected.count(dictionary.unk())
    assert unks > 0  # the case fairseq maps to <unk> was exercised


def test_gpt2_spans_cover_the_text_in_order_without_edge_spaces(bpe_dir):
    tokenizer = TokenizerSpec.from_model_dir(bpe_dir).load()
    for text in TEXTS:
        _, spans = tokenizer.encode(text)
        assert all(a <= b for a, b in spans)
        assert all(s1[0] <= s2[0] for s1, s2 in zip(spans, spans[1:]))
        for start, end in spans:
            piece = text[start:end]
            assert piece.strip() == piece or not piece.strip()
        # every non-space character lies in some token's span
        covered = {i for a, b in spans for i in range(a, b)}
        assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    text = TEXTS[1]  # ASCII: spans do not overlap, so they spell the text out exactly
    _, spans = tokenizer.encode(text)
    assert "".join(text[a:b] for a, b in spans) == "".join(text.split())


def test_gpt2_decode_round_trips_text_without_unknown_pieces(tmp_path):
    bf.train_gpt2_bpe(str(tmp_path))
    bf.write_bpe_dictionary(str(tmp_path))
    tokenizer = TokenizerSpec.from_model_dir(tmp_path).load()
    for text in TEXTS[1:3]:
        assert tokenizer.decode(tokenizer.encode(text)[0]) == text


def test_sentencepiece_ids_equal_fairseqs_and_spans_are_characters(tmp_path):
    import sentencepiece as spm
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(bf.corpus_texts()[:30]), model_writer=model,
                                   vocab_size=300, minloglevel=2)
    (tmp_path / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sentencepiece.bpe.model"))
    with open(tmp_path / "dict.txt", "w") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                f.write(f"{sp.id_to_piece(i)} 1\n")
    bpe = SentencepieceBPE(Namespace(sentencepiece_model=str(tmp_path / "sentencepiece.bpe.model"),
                                     sentencepiece_enable_sampling=False, sentencepiece_alpha=None))
    dictionary = Dictionary.load(str(tmp_path / "dict.txt"))
    tokenizer = TokenizerSpec.from_model_dir(tmp_path).load()
    text = "Déjà vu ☃  x, the  for-loop"
    ids, spans = tokenizer.encode(text)
    assert ids == dictionary.encode_line(bpe.encode(text), append_eos=False, add_if_not_exist=False).tolist()
    assert [text[a:b] for a, b in spans][1:5] == ["D", "é", "j", "à"]


def test_whitespace_tokens_and_dictionary():
    dictionary = build_whitespace_dictionary(["a b b", "c b"])
    assert [dictionary[i] for i in range(dictionary.nspecial, len(dictionary))] == ["b", "a", "c"]
    ids, spans = WhitespaceTokenizer(dictionary).encode("  b\tzz a ")
    assert ids == [dictionary.index("b"), dictionary.unk(), dictionary.index("a")]
    assert spans == [(2, 3), (4, 6), (7, 8)]


def test_model_dir_without_tokenizer_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no dict.txt"):
        TokenizerSpec.from_model_dir(tmp_path)
    (tmp_path / "dict.txt").write_text("5 1\n")
    with pytest.raises(ValueError, match="neither GPT-2 BPE files"):
        TokenizerSpec.from_model_dir(tmp_path)


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a", "label": "x"}) + "\n\n" + "{oops\n")
    records = read_jsonl(path)
    where, record = next(records)
    assert where.endswith("train.jsonl:1") and record["label"] == "x"
    with pytest.raises(InputError, match=r"train.jsonl:3: not valid JSON"):
        next(records)
    path.write_text("[1, 2]\n")
    with pytest.raises(InputError, match=r":1: expected a JSON object, got list"):
        list(read_jsonl(path))
    with pytest.raises(InputError, match=r"f:7: no field 'text' \(fields: 'body'\); name the field with --text-field"):
        text_field({"body": "x"}, "text", "f:7", "--text-field")
    with pytest.raises(InputError, match="is empty"):
        text_field({"text": "  "}, "text", "f:7", "--text-field")
    with pytest.raises(InputError, match="must be a string, got int"):
        text_field({"text": 3}, "text", "f:7", "--text-field")
    with pytest.raises(InputError, match="does not exist"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


_OFFSET = None


def _set_offset(value):
    global _OFFSET
    _OFFSET = value


def _add_offset(x):
    return (x + _OFFSET, os.getpid())


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_keeps_order_and_runs_the_initializer_in_each_worker(workers):
    results = list(ordered_map(_add_offset, iter(range(50)), workers=workers, initializer=_set_offset,
                               initargs=(100,), progress=False, chunksize=3))
    assert [r for r, _ in results] == list(range(100, 150))
    pids = {pid for _, pid in results}
    assert pids == {os.getpid()} if workers == 1 else os.getpid() not in pids
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        list(ordered_map(_add_offset, [1], workers=0))


def test_indexed_writer_output_is_read_back_by_fairseq(tmp_path):
    dictionary = build_whitespace_dictionary(["a b c"])
    write_dictionary(dictionary, tmp_path / "input0" / "dict.txt")
    assert Dictionary.load(str(tmp_path / "input0" / "dict.txt")).symbols == dictionary.symbols
    items = [[0, 4, 5, 2], [0, 6, 2], [0, 2]]
    with IndexedWriter(tmp_path / "input0" / "train", len(dictionary)) as writer:
        for ids in items:
            writer.add(ids)
    dataset = data_utils.load_indexed_dataset(str(tmp_path / "input0" / "train"), dictionary, "mmap")
    assert [dataset[i].tolist() for i in range(len(dataset))] == items


def test_length_stats_by_hand():
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 51) == 3 and percentile([], 50) == 0
    stats = length_stats([10, 1, 7, 3, 100], limit=8)
    assert stats == {"count": 5, "mean": 24.2, "p50": 7, "p90": 100, "p95": 100, "p99": 100, "max": 100,
                     "limit": 8, "over_limit": 2}
    assert stats_line("train", stats) == (
        "train: 5 items, tokens mean 24.2, p50 7 / p90 100 / p95 100 / p99 100 / max 100, 2 (40.0%) over 8")
