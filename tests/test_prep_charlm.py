"""longformer-prep-charlm round-trips small enwik8/text8-shaped zips and text folders through fairseq binaries."""

import json
import random
import zipfile

import pytest

from data_prep.charlm import main as prep_main


def read_split(out_dir, split):
    """Decode a binarised split back to its token strings, ``</s>`` as a newline."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(out_dir / "dict.txt"))
    data = data_utils.load_indexed_dataset(str(out_dir / split), dictionary, "mmap")
    symbols = []
    for i in range(len(data)):
        ids = data[i].tolist()
        assert ids[-1] == dictionary.eos()
        symbols.extend(dictionary[t] for t in ids[:-1])
        symbols.append("\n")
    return symbols


def with_final_newline(symbols):
    return symbols if symbols[-1] == "\n" else symbols + ["\n"]


def make_zip(path, member, data: bytes):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, data)


def test_enwik8_round_trip(tmp_path):
    rng = random.Random(0)
    data = bytes(rng.choice(b"<page>abc \xc3\xa9\n\n\t0123") for _ in range(30_000))
    make_zip(tmp_path / "enwik8.zip", "enwik8", data)
    out = tmp_path / "enwik8"
    prep_main(["--dataset", "enwik8", "--input", str(tmp_path / "enwik8.zip"), "--output", str(out),
               "--valid-size", "3000", "--test-size", "2000"])
    cuts = {"train": data[:25_000], "valid": data[25_000:28_000], "test": data[28_000:]}
    for split, part in cuts.items():
        expected = with_final_newline(["\n" if b == 10 else str(b) for b in part])
        assert read_split(out, split) == expected, split
    stats = json.loads((out / "prep.json").read_text())
    assert stats["tokens"]["train"] == len(with_final_newline(list(cuts["train"])))
    assert 0 < stats["train_unigram_entropy_bits"] < 8


def test_text8_round_trip_with_line_breaks_at_spaces(tmp_path):
    rng = random.Random(1)
    words = ["anarchism", "originated", "as", "a", "term", "of", "abuse", "the", "zebra"]
    text = (" " + " ".join(rng.choice(words) for _ in range(10_000)))[:40_000]
    assert len(text) == 40_000
    make_zip(tmp_path / "text8.zip", "text8", text.encode())
    out = tmp_path / "text8"
    prep_main(["--dataset", "text8", "--input", str(tmp_path / "text8.zip"), "--output", str(out),
               "--valid-size", "4000", "--test-size", "4000", "--line-chars", "500"])
    decoded = "".join(
        " " if s in ("_", "\n") else s
        for split in ("train", "valid", "test")
        for s in read_split(out, split)
    )
    # Line ends replace spaces one for one, except where a split ends mid-line (one added </s> each).
    assert decoded.replace(" ", "") == text.replace(" ", "")
    train = read_split(out, "train")
    assert len(train) in (32_000, 32_001)
    assert "_" in train and train.count("\n") >= 32_000 // 600
    assert all(s == "_" or s == "\n" or s.isalpha() for s in train)


def test_text_folder_keeps_documents_apart(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    texts = [f"Document {i} of 0123456789: naïve café_{i}\nsecond line\twith tab\n" * 40 for i in range(6)]
    for i, t in enumerate(texts):
        (docs / f"{i:02d}.txt").write_text(t, encoding="utf-8")
    out = tmp_path / "text"
    prep_main(["--dataset", "text", "--input", str(docs), "--output", str(out),
               "--valid-size", "0.1", "--test-size", "0.1"])
    decoded = "".join(
        "\n" if s == "\n" else chr(int(s))
        for split in ("train", "valid", "test")
        for s in read_split(out, split)
    )
    assert decoded == "".join(t + "\n" for t in texts)  # one empty line after each document
    stats = json.loads((out / "prep.json").read_text())
    total = sum(stats["tokens"].values())
    assert abs(stats["tokens"]["test"] - 0.1 * total) < 100  # cut at the next line end


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("not_zip", "not a zip archive"),
    ("wrong_member", "no member named 'enwik8'"),
    ("too_small", "too few"),
])
def test_refuses_bad_input(tmp_path, case, message):
    path = tmp_path / "enwik8.zip"
    if case == "not_zip":
        path.write_text("hello")
    elif case == "wrong_member":
        make_zip(path, "text8", b"abc")
    elif case == "too_small":
        make_zip(path, "enwik8", b"abc\n")
    with pytest.raises(SystemExit, match=message):
        prep_main(["--dataset", "enwik8", "--input", str(path), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_refuses_empty_text_and_existing_output(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(SystemExit, match="holds no text"):
        prep_main(["--dataset", "text", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    (tmp_path / "doc.txt").write_text("some text\n" * 100)
    with pytest.raises(SystemExit, match="--overwrite"):
        prep_main(["--dataset", "text", "--input", str(tmp_path / "doc.txt"), "--output", str(tmp_path / "o")])
