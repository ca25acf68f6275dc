"""``longformer-prep-classification``: text -> ids -> text round trips (model BPE and whitespace), the label
mapping fairseq's ``sentence_prediction`` reads, workers, statistics, and bad input refused clearly."""

import json
import os

import pytest
import torch
from bpe_fixtures import (
    corpus_texts,
    gpt2_encoder,
    train_gpt2_bpe,
    write_bpe_dictionary,
)
from fairseq.data import Dictionary, data_utils
from fairseq.tasks.sentence_prediction import SentencePredictionTask

from data_prep.prep_classification import main as prep
from data_prep.text_tokenizer import TokenizerSpec


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _report(out):
    with open(os.path.join(out, "prep.json")) as f:
        return json.load(f)


def _items(out, key, split, dictionary):
    dataset = data_utils.load_indexed_dataset(os.path.join(out, key, split), dictionary)
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("bpe"))
    train_gpt2_bpe(directory)
    write_bpe_dictionary(directory)
    return directory


@pytest.fixture(scope="module")
def texts():
    return [t[:400] for t in corpus_texts()[:12]]


def _labelled(texts, labels):
    return [{"text": t, "label": label} for t, label in zip(texts, labels)]


def test_model_bpe_round_trip_and_the_models_dictionary_kept(tmp_path, bpe_dir, texts):
    train = _write(tmp_path / "train.jsonl", _labelled(texts[:8], ["pos", "neg"] * 4))
    valid = _write(tmp_path / "valid.jsonl", _labelled(texts[8:], ["neg", "pos"] * 2))
    out = str(tmp_path / "out")
    prep(["--train", train, "--valid", valid, "--output", out, "--model-dir", bpe_dir, "--max-positions", "64"])
    report = _report(out)
    with open(os.path.join(bpe_dir, "dict.txt"), "rb") as a, open(os.path.join(out, "input0", "dict.txt"), "rb") as b:
        assert a.read() == b.read()
    dictionary = Dictionary.load(os.path.join(out, "input0", "dict.txt"))
    tokenizer = TokenizerSpec.from_model_dir(bpe_dir).load()
    encoder = gpt2_encoder(bpe_dir)
    for split, originals in (("train", texts[:8]), ("valid", texts[8:])):
        items = _items(out, "input0", split, dictionary)
        assert len(items) == len(originals)
        for item, text in zip(items, originals):
            assert item[-1] == dictionary.eos() and (item == dictionary.eos()).sum() == 1
            # the ids fairseq itself gives (its GPT-2 BPE + the model dictionary), and back to the text
            reference = dictionary.encode_line(" ".join(map(str, encoder.encode(text))), append_eos=True).long()
            assert torch.equal(item, reference)
            assert tokenizer.decode(item[:-1].tolist()) == text
    stats = report["splits"]["train"]
    lengths = sorted(len(i) + 1 for i in _items(out, "input0", "train", dictionary))  # + <s>
    assert stats["max"] == lengths[-1] and stats["over_limit"] == sum(n > 64 for n in lengths) > 0


def test_whitespace_dictionary_from_train_and_pairs(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"text": "a b c a", "q": "why a", "label": 1},
                                              {"text": "c c d", "q": "why not", "label": 0}])
    valid = _write(tmp_path / "valid.jsonl", [{"text": "d a zzz", "q": "why", "label": 0}])
    out = str(tmp_path / "out")
    prep(["--train", train, "--valid", valid, "--output", out, "--tokenizer", "whitespace", "--pair-field", "q"])
    dictionary = Dictionary.load(os.path.join(out, "input0", "dict.txt"))
    assert "zzz" not in dictionary.indices and "why" in dictionary.indices  # from the training split, both fields
    assert open(os.path.join(out, "input1", "dict.txt")).read() == open(os.path.join(out, "input0", "dict.txt")).read()
    assert [dictionary.string(i) for i in _items(out, "input0", "train", dictionary)] == ["a b c a", "c c d"]
    assert [dictionary.string(i) for i in _items(out, "input1", "valid", dictionary)] == ["why"]
    assert dictionary.string(_items(out, "input0", "valid", dictionary)[0]) == "d a <unk>"


def test_labels_map_consistently_and_read_back_through_fairseq(tmp_path, capsys):
    """Integer labels sort numerically; the valid split's order does not matter; fairseq's task reads them."""
    train = _write(tmp_path / "train.jsonl", [{"text": f"w{i}", "label": label} for i, label in enumerate([10, 2, "1", 2, 10])])
    valid = _write(tmp_path / "valid.jsonl", [{"text": "w1", "label": 2}, {"text": "w2", "label": 1}])
    test = _write(tmp_path / "test.jsonl", [{"text": "w3"}, {"text": "w4"}])  # unlabelled test split
    out = str(tmp_path / "out")
    prep(["--train", train, "--valid", valid, "--test", test, "--output", out, "--tokenizer", "whitespace"])
    report = _report(out)
    assert report["classes"] == ["1", "2", "10"] and report["num_classes"] == 3
    assert report["splits"]["train"]["labels"] == {"1": 1, "2": 2, "10": 2}
    assert not os.path.exists(os.path.join(out, "label", "test.bin"))
    assert "no labels" in capsys.readouterr().err
    labels = SentencePredictionTask.load_dictionary(os.path.join(out, "label", "dict.txt"))
    for split, expected in (("train", [2, 1, 0, 1, 2]), ("valid", [1, 0])):
        items = _items(out, "label", split, labels)
        assert all(item[-1] == labels.eos() for item in items)
        # what sentence_prediction does: strip </s>, subtract nspecial
        assert [int(item[0]) - labels.nspecial for item in items] == expected


def test_workers_give_identical_output_and_stats_are_printed(tmp_path, bpe_dir, texts, capsys):
    train = _write(tmp_path / "train.jsonl", _labelled(texts * 3, ["a", "b", "c"] * 12))
    valid = _write(tmp_path / "valid.jsonl", _labelled(texts[:3], ["a", "b", "c"]))
    outs = []
    for workers in (1, 2):
        outs.append(str(tmp_path / f"out{workers}"))
        prep(["--train", train, "--valid", valid, "--output", outs[-1], "--model-dir", bpe_dir,
              "--workers", str(workers), "--max-positions", "100"])
    for key in ("input0", "label"):
        for name in ("train.bin", "train.idx", "valid.bin", "dict.txt"):
            with open(os.path.join(outs[0], key, name), "rb") as a, open(os.path.join(outs[1], key, name), "rb") as b:
                assert a.read() == b.read(), (key, name)
    err = capsys.readouterr().err
    assert "train: 36 items, tokens mean" in err and "over 100" in err
    assert "3 classes (a, b, c)" in err and "--num-classes 3" in err


@pytest.mark.parametrize("rows, flags, message", [
    ([{"label": "a"}], [], r"train.jsonl:1: no field 'text' \(fields: 'label'\); name the field with --text-field"),
    ([{"text": "x y"}], [], r"train.jsonl:1: no field 'label'.*--label-field"),
    ([{"text": "x", "label": "a"}, {"text": "   ", "label": "b"}], [], r"train.jsonl:2: field 'text' is empty"),
    ([{"text": "x", "label": True}], [], r"train.jsonl:1: label True must be a string or an integer"),
    ([{"text": "x", "label": "<s>"}], [], r"special symbols"),
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "a"}], [], r"a single class \['a'\]"),
    (['{"text": "x", "label": "a"}', '{"text": "y", '], [], r"train.jsonl:2: not valid JSON"),
    ([{"text": "x", "label": "a"}, {"body": "y", "label": "b"}], ["--text-field", "body"],
     r"train.jsonl:1: no field 'body'"),
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}], ["--pair-field", "q"],
     r"train.jsonl:1: no field 'q'.*--pair-field"),
])
def test_bad_training_input_is_refused_and_nothing_is_written(tmp_path, rows, flags, message):
    train = _write(tmp_path / "train.jsonl", rows)
    valid = _write(tmp_path / "valid.jsonl", [{"text": "x", "label": "a"}])
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        prep(["--train", train, "--valid", valid, "--output", str(out), "--tokenizer", "whitespace", *flags])
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging left


@pytest.mark.parametrize("valid_rows, test_rows, message", [
    ([{"text": "x", "label": "a"}, {"text": "y", "label": "c"}], None,
     r"valid.jsonl:2: label 'c' does not occur in the training split \(classes: a, b\)"),
    ([{"text": "x", "label": "a"}], [{"text": "x", "label": "z"}], r"test.jsonl:1: label 'z' does not occur"),
    ([{"text": "x", "label": "a"}], [{"text": "x"}, {"text": "y", "label": "a"}],
     r"test.jsonl:2: has a 'label' field but the first record .* has none"),
    ([], None, r"--valid .*valid.jsonl holds no records"),
])
def test_bad_held_out_labels_are_refused_after_work_started(tmp_path, bpe_dir, valid_rows, test_rows, message):
    train = _write(tmp_path / "train.jsonl", [{"text": "x y", "label": "a"}, {"text": "z", "label": "b"}])
    valid = _write(tmp_path / "valid.jsonl", valid_rows)
    extra = ["--test", _write(tmp_path / "test.jsonl", test_rows)] if test_rows else []
    out = tmp_path / "out"
    for workers in ("1", "2"):  # an error raised while feeding the worker pool surfaces too
        with pytest.raises(SystemExit, match=message):
            prep(["--train", train, "--valid", valid, "--output", str(out), "--model-dir", bpe_dir,
                  "--workers", workers, *extra])
        assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_existing_output_needs_overwrite(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    argv = ["--train", train, "--valid", train, "--output", str(out), "--tokenizer", "whitespace"]
    with pytest.raises(SystemExit, match="--overwrite"):
        prep(argv)
    assert (out / "keep").read_text() == "mine"
    prep(argv + ["--overwrite"])
    assert not (out / "keep").exists() and (out / "label" / "dict.txt").is_file()


def test_model_dir_without_tokenizer_files_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "dict.txt").write_text("5 1\n")
    train = _write(tmp_path / "train.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    with pytest.raises(SystemExit, match="neither GPT-2 BPE files"):
        prep(["--train", train, "--valid", train, "--output", str(tmp_path / "o"), "--model-dir", str(tmp_path / "model")])
    with pytest.raises(SystemExit):  # one of --model-dir / --tokenizer is required
        prep(["--train", train, "--valid", train, "--output", str(tmp_path / "o")])
