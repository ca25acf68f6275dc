"""Long-document corpus prep (issue 6): readers, the paper's selection, splits, statistics, reruns, fairseq.

The expected figures are recomputed here independently: token counts with fairseq's GPT-2 encoder run
directly on the fixture documents, documents followed by their marker words through the binaries.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from corpus_fixtures import (WORDS, marker_of, read_binarized_documents, write_raw_sources,
                             write_story_folder)
from data_prep.corpus import journal as journal_module
from data_prep.corpus.cli import main
from data_prep.corpus.readers import READERS
from data_prep.corpus.selection import BlockSampler, SplitAssigner, parse_fraction
from data_prep.corpus.synthetic import write_toy_gpt2_bpe
from data_prep.corpus.tokenizers import _load_fairseq_gpt2_module, id_lines

SOURCES = ("books", "wikipedia", "realnews", "stories")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    paths, expected, problems = write_raw_sources(root)
    bpe = write_toy_gpt2_bpe(root / "bpe", WORDS + [w.capitalize() for w in WORDS] + ["Title"])
    return {"paths": paths, "expected": expected, "problems": problems, "bpe": bpe, "root": root}


def source_args(raw) -> list[str]:
    return [arg for s in SOURCES for arg in (f"--{s}", str(raw["paths"][s]))]


def gpt2_args(raw) -> list[str]:
    bpe = raw["bpe"]
    return ["--gpt2-encoder-json", str(bpe["encoder_json"]), "--gpt2-vocab-bpe", str(bpe["vocab_bpe"]),
            "--dict", str(bpe["dict_txt"])]


def run_cli(raw, out: Path, *extra: str) -> Path:
    main(source_args(raw) + gpt2_args(raw) + ["--output", str(out), "--no-progress", "--shard-docs", "4", *extra])
    return out / "data-bin"


def gpt2_encoder(raw):
    return _load_fairseq_gpt2_module().get_encoder(str(raw["bpe"]["encoder_json"]), str(raw["bpe"]["vocab_bpe"]))


def n_tokens(encoder, paragraphs) -> int:
    return sum(len(encoder.encode(p)) for p in paragraphs)


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    """The reference build: GPT-2 BPE, paper defaults, one worker."""
    out = tmp_path_factory.mktemp("out1")
    data_bin = run_cli(raw, out)
    encoder = gpt2_encoder(raw)
    decode = lambda symbols: encoder.decode([int(s) for s in symbols])  # noqa: E731
    docs = {split: read_binarized_documents(data_bin, split, decode) for split in ("train", "valid", "test")}
    stats = json.loads((data_bin / "stats.json").read_text())
    return {"out": out, "data_bin": data_bin, "docs": docs, "stats": stats, "encoder": encoder}


# ---------------------------------------------------------------- readers


def test_readers_yield_each_form_and_report_problems_with_file_and_line(raw):
    for source in SOURCES:
        items = list(READERS[source](raw["paths"][source], 2**20))
        docs = [i for i in items if hasattr(i, "paragraphs")]
        found = [(Path(p.path).name, p.line, p.kind) for p in items if not hasattr(p, "paragraphs")]
        assert [d.paragraphs for d in docs] == raw["expected"][source], source
        assert sorted(found) == sorted(raw["problems"][source]), source
        assert len({d.key for d in docs}) == len(docs), "keys identify documents"


def test_story_folder_form(tmp_path):
    expected = write_story_folder(tmp_path / "stories", 5)
    docs = list(READERS["stories"](tmp_path / "stories", 2**20))
    assert [d.paragraphs for d in docs] == expected


def test_realnews_folder_form_reads_jsonl_parts_only(tmp_path):
    folder = tmp_path / "realnews"
    folder.mkdir()
    (folder / "part-000.jsonl").write_text(json.dumps({"text": "markA one\n\ntwo"}) + "\n", encoding="utf-8")
    (folder / "part-001.jsonl").write_text(json.dumps({"text": "markB three"}) + "\n", encoding="utf-8")
    (folder / "README").write_text("about the data\n", encoding="utf-8")
    items = list(READERS["realnews"](folder, 2**20))
    assert [i.paragraphs for i in items if hasattr(i, "paragraphs")] == [["markA one", "two"], ["markB three"]]
    assert [(Path(i.path).name, i.kind) for i in items if not hasattr(i, "paragraphs")] == [("README", "unknown_file")]


def test_oversized_document_is_reported_not_loaded(raw):
    items = list(READERS["books"](raw["paths"]["books"], 10_000))
    too_large = [i for i in items if getattr(i, "kind", None) == "too_large"]
    assert [Path(p.path).name for p in too_large] == ["book0.txt"]


# ---------------------------------------------------------------- selection


def test_block_sampler_keeps_exactly_one_in_each_block_of_three_and_is_seeded():
    sampler = BlockSampler(Fraction(1, 3), seed=1, source="realnews")
    kept = [i for i in range(3000) if sampler.keep(i)]
    assert len(kept) == 1000
    assert all(sum(1 for i in kept if i // 3 == b) == 1 for b in range(1000))
    again = BlockSampler(Fraction(1, 3), seed=1, source="realnews")
    assert [i for i in range(3000) if again.keep(i)] == kept
    other = BlockSampler(Fraction(1, 3), seed=2, source="realnews")
    assert [i for i in range(3000) if other.keep(i)] != kept
    # Not a fixed pattern: every position of the block gets chosen.
    assert {i % 3 for i in kept} == {0, 1, 2}
    two_fifths = BlockSampler(parse_fraction("0.4"), seed=1, source="stories")
    assert sum(two_fifths.keep(i) for i in range(1000)) == 400


def test_split_assigner_by_document_key():
    a = SplitAssigner(0.1, 0.1, seed=3)
    keys = [f"file:{i}" for i in range(5000)]
    hashed = [SplitAssigner(0.1, 0.1, seed=3).hashed_split("wikipedia", k) for k in keys]
    splits = [a.assign("wikipedia", k) for k in keys]
    # Only the first train-hashed documents move, to fill the empty held-out splits; then the hash rules.
    moved = [i for i in range(len(keys)) if splits[i] != hashed[i]]
    assert all(hashed[i] == "train" and splits[i] not in splits[:i] for i in moved)
    assert {"valid", "test"} <= set(splits[: max(moved) + 1])
    assert moved == [i for i, h in enumerate(hashed) if h == "train"][: len(moved)] and len(moved) <= 2
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert abs(share["valid"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02
    b = SplitAssigner(0.1, 0.1, seed=3, counts={"valid": 1, "test": 1})
    assert all(b.hashed_split("wikipedia", f"file:{i}") == b.assign("wikipedia", f"file:{i}") for i in range(100))


# ---------------------------------------------------------------- end to end (GPT-2 BPE)


def test_build_selects_as_the_paper_and_counts_tokens(raw, built):
    encoder, stats = built["encoder"], built["stats"]["sources"]
    expected = raw["expected"]
    out_docs = {marker_of(d.split("\n")): d for split in built["docs"].values() for d in split}

    # Books and Wikipedia: every good document, whole, byte for byte after BPE round trip.
    for source in ("books", "wikipedia"):
        for paragraphs in expected[source]:
            assert out_docs[marker_of(paragraphs)] == "\n".join(paragraphs)
    # Realnews: one third sampled in (exactly one per block of three), then only > 1,200 tokens kept.
    realnews_out = [i for i, p in enumerate(expected["realnews"]) if marker_of(p) in out_docs]
    assert all(n_tokens(encoder, expected["realnews"][i]) > 1200 for i in realnews_out)
    blocks = [i // 3 for i in realnews_out]
    assert len(blocks) == len(set(blocks)), "at most one document per block of three"
    counts = stats["realnews"]["counts"]
    assert counts["read"] == 30 and counts["sampled_out"] == 20
    assert counts["selected"] + counts["too_short"] == 10 and counts["selected"] == len(realnews_out)
    # Stories: exactly one third, no length filter.
    stories_out = [i for i, p in enumerate(expected["stories"]) if marker_of(p) in out_docs]
    assert len(stories_out) == 4 and len({i // 3 for i in stories_out}) == 4

    # Token counts and Table 5 columns, against fairseq's encoder run here on the selected documents.
    for source in SOURCES:
        selected = [p for p in expected[source] if marker_of(p) in out_docs]
        lengths = [n_tokens(encoder, p) for p in selected]
        row = built["stats"]["table5"][source]
        assert row["docs"] == len(selected) and row["tokens"] == sum(lengths), source
        assert row["avg_doc_len"] == pytest.approx(sum(lengths) / len(lengths))
        assert row["share_docs_over_512"] == pytest.approx(sum(n > 512 for n in lengths) / len(lengths))
        assert row["share_docs_over_4096"] == pytest.approx(sum(n > 4096 for n in lengths) / len(lengths))
    assert built["stats"]["table5"]["books"]["share_docs_over_4096"] == pytest.approx(1 / 3)
    # Problems: counted per kind, listed with file and line.
    assert stats["books"]["counts"]["malformed"] == 1 and stats["books"]["counts"]["unknown_file"] == 1
    assert stats["wikipedia"]["counts"]["malformed"] == 4 and stats["realnews"]["counts"]["malformed"] == 2
    problems = (built["data_bin"] / "problems.tsv").read_text()
    assert "realnews.jsonl:6\tmalformed" in problems and "zbroken.txt:2\tmalformed" in problems
    assert (built["data_bin"] / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert "| books | 3 |" in (built["data_bin"] / "stats.md").read_text()


def test_split_is_by_document_and_documents_stay_whole(built):
    markers = {split: [marker_of(d.split("\n")) for d in docs] for split, docs in built["docs"].items()}
    every = [m for split in markers.values() for m in split]
    assert len(every) == len(set(every)), "no document in two splits (or twice)"
    assert all(markers[s] for s in ("train", "valid", "test")), "held-out splits are not empty"
    table = built["stats"]["table5"]
    assert sum(table[s]["docs"] for s in SOURCES) == len(every)
    per_split = {s: sum(table[src]["split_docs"][s] for src in SOURCES) for s in markers}
    assert per_split == {s: len(m) for s, m in markers.items()}


def test_complete_doc_blocks_never_mix_documents(built):
    """fairseq's own TokenBlockDataset (complete_doc) on the output: no block spans a separator."""
    from fairseq.data import Dictionary, TokenBlockDataset
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    vocab = Dictionary.load(str(built["data_bin"] / "dict.txt"))
    dataset = MMapIndexedDataset(str(built["data_bin"] / "train"))
    train_docs = sum(built["stats"]["table5"][s]["split_docs"]["train"] for s in SOURCES)
    assert int((dataset.sizes == 1).sum()) == train_docs, "one lone </s> after each document"
    blocks = TokenBlockDataset(dataset, dataset.sizes, 511, vocab.pad(), vocab.eos(), break_mode="complete_doc")
    assert len(blocks) > 0
    for start, _, end in blocks.block_to_dataset_index:
        inner = [int(dataset.sizes[i]) for i in range(start, end + 1)]
        while inner and inner[-1] == 1:
            inner.pop()
        while inner and inner[0] == 1:
            inner.pop(0)
        assert 1 not in inner, "a block holds lines of two documents"


def test_two_workers_give_identical_output_and_rerun_is_a_no_op(raw, built, tmp_path):
    data_bin = run_cli(raw, tmp_path, "--workers", "2")
    for name in ("train.bin", "train.idx", "valid.bin", "test.bin", "dict.txt"):
        assert (data_bin / name).read_bytes() == (built["data_bin"] / name).read_bytes(), name
    stamp = (data_bin / "train.bin").stat().st_mtime_ns
    run_cli(raw, tmp_path, "--workers", "2")
    assert (data_bin / "train.bin").stat().st_mtime_ns == stamp
    assert not (tmp_path / ".work").exists()


def test_resume_after_a_crash_mid_shard_gives_the_same_corpus(raw, built, tmp_path, monkeypatch):
    commits = {"n": 0}
    original_commit = journal_module.Journal.commit

    def crashing_commit(self):
        commits["n"] += 1
        if commits["n"] == 3:  # the shard's documents are written but not committed: a crash mid-shard
            for f in self._files.values():
                f.flush()
            raise KeyboardInterrupt("simulated crash")
        original_commit(self)

    monkeypatch.setattr(journal_module.Journal, "commit", crashing_commit)
    with pytest.raises(KeyboardInterrupt):
        run_cli(raw, tmp_path)
    work = tmp_path / ".work"
    state = json.loads((work / "journal.json").read_text())
    assert (work / "train.ids").stat().st_size > state["committed"]["train"], "uncommitted bytes were written"
    assert not (tmp_path / "data-bin").exists(), "nothing is published before the end"
    monkeypatch.setattr(journal_module.Journal, "commit", original_commit)
    data_bin = run_cli(raw, tmp_path)
    for name in ("train.bin", "train.idx", "valid.bin", "valid.idx", "test.bin", "test.idx"):
        assert (data_bin / name).read_bytes() == (built["data_bin"] / name).read_bytes(), name
    stats = json.loads((data_bin / "stats.json").read_text())
    assert stats["table5"] == built["stats"]["table5"]
    assert stats["sources"]["realnews"]["counts"] == built["stats"]["sources"]["realnews"]["counts"]


def test_changed_options_are_refused_without_overwrite_then_rebuilt(raw, tmp_path):
    run_cli(raw, tmp_path, "--max-docs", "wikipedia=2", "--max-tokens", "books=3000")
    stats = json.loads((tmp_path / "data-bin" / "stats.json").read_text())
    assert stats["sources"]["wikipedia"]["counts"]["selected"] == 2
    # The cap stops the source at the document that reaches it (book0, the first, has > 4,096 tokens).
    assert stats["table5"]["books"]["docs"] == 1 and stats["table5"]["books"]["tokens"] > 4096
    assert stats["sources"]["books"]["counts"]["capped"] == 2
    with pytest.raises(SystemExit, match="--overwrite"):
        run_cli(raw, tmp_path, "--seed", "7")
    run_cli(raw, tmp_path, "--seed", "7", "--overwrite", "--max-docs", "books=0")
    stats = json.loads((tmp_path / "data-bin" / "stats.json").read_text())
    assert stats["table5"]["books"]["docs"] == 0 and stats["table5"]["wikipedia"]["docs"] == 6


def test_on_error_fail_refuses_with_file_and_line(raw, tmp_path):
    with pytest.raises(SystemExit, match=r"notes\.pdf.*not a \.txt file"):
        run_cli(raw, tmp_path, "--on-error", "fail")
    assert not (tmp_path / "data-bin").exists()


@pytest.mark.parametrize("bad, message", [
    (["--fraction", "realnews=4/3"], "between 0 and 1"),
    (["--fraction", "news=1/3"], "SOURCE one of"),
    (["--keep-longer-than", "realnews=lots"], "not a count"),
    (["--valid-fraction", "0.6", "--test-fraction", "0.5"], "sum to less than 1"),
    (["--spm-model", "x.model"], "choose one tokenizer"),
])
def test_bad_options_get_clear_errors(raw, tmp_path, bad, message):
    with pytest.raises(SystemExit, match=message):
        run_cli(raw, tmp_path, *bad)


def test_swapped_gpt2_files_are_refused(raw, tmp_path):
    bpe = raw["bpe"]
    args = source_args(raw) + ["--gpt2-encoder-json", str(bpe["vocab_bpe"]), "--gpt2-vocab-bpe",
                               str(bpe["encoder_json"]), "--dict", str(bpe["dict_txt"]), "--output", str(tmp_path)]
    with pytest.raises(SystemExit, match="encoder.json"):
        main(args)


# ---------------------------------------------------------------- sentencepiece


def test_sentencepiece_trained_then_given_give_the_same_corpus(raw, tmp_path):
    common = source_args(raw) + ["--no-progress", "--fraction", "realnews=1", "--keep-longer-than", "realnews=0"]
    main(common + ["--train-spm", "--spm-vocab-size", "300", "--output", str(tmp_path / "a")])
    trained = tmp_path / "a" / "data-bin"
    assert (trained / "spm.model").exists()
    main(common + ["--spm-model", str(trained / "spm.model"), "--output", str(tmp_path / "b")])
    given = tmp_path / "b" / "data-bin"
    assert (given / "train.bin").read_bytes() == (trained / "train.bin").read_bytes()

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(trained / "spm.model"))
    decode = lambda symbols: sp.decode([int(s) for s in symbols])  # noqa: E731
    docs = [d for s in ("train", "valid", "test") for d in read_binarized_documents(trained, s, decode)]
    stats = json.loads((trained / "stats.json").read_text())
    expected = [p for source in SOURCES for p in raw["expected"][source]]
    assert len(docs) == stats["table5"]["all"]["docs"] == len(expected) - 8  # two thirds of the 12 stories
    texts = {"\n".join(p) for p in expected}
    assert all(d in texts for d in docs), "sentencepiece round trip gives the documents back"
    assert stats["table5"]["all"]["tokens"] == sum(len(ids) for d in docs for ids in sp.encode(d.split("\n")))


# ---------------------------------------------------------------- fairseq trains on it


def test_long_paragraphs_become_near_equal_lines_within_the_limit():
    ids = list(range(1000))
    lines = id_lines(ids, 126)
    assert [int(t) for line in lines for t in line.split()] == ids
    lengths = [len(line.split()) for line in lines]
    assert max(lengths) <= 126 and max(lengths) - min(lengths) <= 1 and len(lines) == 8
    assert id_lines(ids[:126], 126) == [" ".join(map(str, ids[:126]))]


@pytest.mark.slow
def test_fairseq_masked_lm_trains_on_the_output(raw, tmp_path):
    # Lines of at most 126 ids fit the 128-token samples (<s> + line + </s>) that complete_doc builds.
    data_bin = run_cli(raw, tmp_path / "corpus", "--max-line-tokens", "126")
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data_bin), "--task", "masked_lm",
           "--criterion", "masked_lm", "--arch", "roberta_base", "--encoder-layers", "1",
           "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
           "--tokens-per-sample", "128", "--sample-break-mode", "complete_doc", "--batch-size", "4",
           "--optimizer", "adam", "--lr", "1e-3", "--max-update", "3", "--cpu", "--no-save",
           "--log-format", "simple", "--log-interval", "1", "--num-workers", "0", "--seed", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "num_updates=3" in log and "Stopping training due to num_updates: 3" in log, log[-3000:]
    assert "valid on 'valid' subset" in log, log[-3000:]
