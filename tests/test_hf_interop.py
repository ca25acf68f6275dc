"""Hugging Face interop: ``longformer-export-hf`` / ``longformer-import-hf`` checked against ``transformers`` itself.

Tiny random models over a tiny byte-level BPE (``bpe_fixtures``), no downloads. The global projections are
given their own random values so that a name swap between local and global weights cannot go unseen.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import bpe_fixtures as bf
import pytest
import roberta_fixtures as rf
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, LongformerModel

from fairseq_longformer import LongformerRobertaModel
from fairseq_longformer.convert_roberta import ConversionError
from fairseq_longformer.hf import from_hf, mapping, to_hf
from fairseq_longformer.hf.vocab import UNK

WINDOWS = "16,8"  # per-layer; the test inputs' lengths are multiples of neither
TEXTS = [
    "The for statement iterates over the items of any sequence.",
    "Déjà vu: naïve café, Straße, 東京, ☃ and 🎉!",
    "x  =  3.14;\n\tit's   they're we've I'm you'll he'd",
    "   leading and trailing   spaces   ",
    "digits 1234567890 and 3.14159, 1e-5",
    "’curly quotes’ ¡¢£ «guillemets» — dash",
    "attribute ::= identifier | literal",
    "",
]


def _randomize_global_projections(model_dir: str, seed: int = 7) -> None:
    path = os.path.join(model_dir, "model.pt")
    checkpoint = torch.load(path, weights_only=False)
    generator = torch.Generator().manual_seed(seed)
    for key, value in checkpoint["model"].items():
        if "_global." in key:
            value.copy_(torch.randn(value.shape, generator=generator) * 0.2)
    torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """fairseq dirs whose dictionary lacks BPE tokens ("partial", as counted from a corpus) or has all
    ("complete", as RoBERTa's), and their HF exports."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, kwargs in {"partial": dict(leave_out=5), "complete": dict(every_token=True)}.items():
        fs = bf.make_bpe_longformer_dir(str(root / name), max_positions=128, attention_window=WINDOWS, **kwargs)
        _randomize_global_projections(fs)
        to_hf.export(fs, str(root / f"{name}_hf"))
        out[name] = (fs, str(root / f"{name}_hf"))
    return out


def _batch(hub):
    """Right and left padding, per-row global tokens, lengths that are not multiples of the windows."""
    ids = hub.encode(" ".join(TEXTS[:3]))
    T = 45
    tokens = torch.ones(3, T, dtype=torch.long)
    tokens[0] = ids[:T]
    tokens[1, :30] = ids[5:35]
    tokens[2, T - 21:] = ids[10:31]  # left padding
    glob = torch.zeros(3, T, dtype=torch.bool)
    glob[0, [0, 10, 11]] = True
    glob[1, 0] = True  # row 2: none
    return tokens, glob


def _hf_logits(model, tokens, glob):
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=tokens.ne(1).long(),
                     global_attention_mask=glob.long()).logits


def _ours(model_dir, checkpoint_file="model.pt"):
    return LongformerRobertaModel.from_pretrained(model_dir, checkpoint_file, bpe="gpt2").eval()


@pytest.mark.parametrize("name", ["partial", "complete"])
def test_exported_model_gives_our_logits(dirs, name):
    fs, hf = dirs[name]
    ours = _ours(fs)
    theirs = AutoModelForMaskedLM.from_pretrained(hf).eval()
    n = len(ours.task.source_dictionary)
    tokens, glob = _batch(ours)
    real = tokens.ne(1)
    with torch.no_grad():
        expected = ours.model(tokens, global_attention_mask=glob)[0]
    got = _hf_logits(theirs, tokens, glob)
    assert (got[..., :n] - expected)[real].abs().max().item() <= 1e-5
    # BPE tokens fairseq maps to <unk> get their own HF ids whose rows are <unk>'s: the same logit
    assert (got.shape[-1] == n) == (name == "complete")
    assert torch.equal(got[..., n:], got[..., UNK:UNK + 1].expand_as(got[..., n:]))
    # and the global tokens matter (so the global projections were compared too)
    assert (got - _hf_logits(theirs, tokens, torch.zeros_like(glob)))[real].abs().max() > 1e-3


def test_exported_config_spells_out_roberta(dirs):
    with open(os.path.join(dirs["partial"][1], "config.json")) as f:
        config = json.load(f)
    assert config["attention_window"] == [16, 8] and config["max_position_embeddings"] == 130
    assert (config["type_vocab_size"], config["layer_norm_eps"], config["pad_token_id"]) == (1, 1e-5, 1)
    assert config["vocab_size"] > config["fairseq_dictionary_size"]  # the partial dictionary's extra ids
    tokenizer = AutoTokenizer.from_pretrained(dirs["partial"][1])
    assert tokenizer.model_max_length == 128 and tokenizer.mask_token_id == config["fairseq_dictionary_size"] - 1
    safetensors = load_file(os.path.join(dirs["partial"][1], "model.safetensors"))
    assert not safetensors[mapping.TOKEN_TYPES].any() and "lm_head.decoder.weight" not in safetensors


def test_tokenizer_gives_fairseq_ids(dirs, tmp_path):
    # complete dictionary: the very same ids, before and after HF's own save/load
    fs, hf = dirs["complete"]
    ours, theirs = _ours(fs), AutoTokenizer.from_pretrained(hf)
    theirs.save_pretrained(tmp_path / "resaved")
    resaved = AutoTokenizer.from_pretrained(tmp_path / "resaved")
    for text in TEXTS:
        assert theirs(text)["input_ids"] == ours.encode(text).tolist() == resaved(text)["input_ids"], text
    # partial dictionary: where fairseq gives <unk>, HF gives the piece's own id, whose row is <unk>'s
    fs, hf = dirs["partial"]
    ours, theirs = _ours(fs), AutoTokenizer.from_pretrained(hf)
    n, unk_seen = len(ours.task.source_dictionary), 0
    for text in TEXTS:
        expected, got = ours.encode(text).tolist(), theirs(text)["input_ids"]
        assert [UNK if i >= n else i for i in got] == expected, text
        assert all(i >= n for i, j in zip(got, expected) if j == UNK)
        unk_seen += expected.count(UNK)
    assert unk_seen >= 3  # the texts do reach pieces the dictionary lacks


def _hf_source(dirs, tmp_path, kind):
    """An HF checkpoint made by transformers from an exported one: a non-zero token-type row and, per kind,
    sharded safetensors, or a bare LongformerModel in pytorch_model.bin under allenai's old roberta. prefix
    (which HF itself no longer reads). Returns the directory and the HF model (the reference)."""
    hf = dirs["complete"][1]
    model = AutoModelForMaskedLM.from_pretrained(hf)
    with torch.no_grad():
        model.longformer.embeddings.token_type_embeddings.weight.normal_(0, 0.5,
                                                                         generator=torch.Generator().manual_seed(3))
    source = tmp_path / kind
    if kind == "sharded":
        model.save_pretrained(source, max_shard_size="100KB")
    else:
        model = model.longformer
        model.save_pretrained(source)
        os.remove(source / "model.safetensors")
        torch.save({"roberta." + k: v for k, v in model.state_dict().items()}, source / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(hf, name), source / name)
    return str(source), model.eval()


@pytest.mark.parametrize("kind", ["sharded", "bare"])
def test_imported_model_gives_hf_outputs(dirs, tmp_path, kind):
    source, reference = _hf_source(dirs, tmp_path, kind)
    from_hf.import_hf(source, str(tmp_path / "fs"))
    ours = _ours(str(tmp_path / "fs"))
    tokens, glob = _batch(ours)
    real = tokens.ne(1)
    with torch.no_grad():
        if kind == "sharded":
            assert len([f for f in os.listdir(source) if f.endswith(".safetensors")]) > 1
            expected = _hf_logits(reference, tokens, glob)
            got = ours.model(tokens, global_attention_mask=glob)[0]
        else:
            assert isinstance(reference, LongformerModel)
            expected = reference(input_ids=tokens, attention_mask=real.long(),
                                 global_attention_mask=glob.long()).last_hidden_state
            got = ours.extract_features(tokens, global_attention_mask=glob)
    assert (got - expected)[real].abs().max().item() <= 1e-5
    for text in TEXTS:
        assert ours.encode(text).tolist() == AutoTokenizer.from_pretrained(source)(text)["input_ids"]


def test_round_trips_are_bit_identical(dirs, tmp_path):
    fs, hf = dirs["partial"]  # with extra <unk> ids: they are dropped again on the way back
    from_hf.import_hf(hf, str(tmp_path / "back"))
    before, after = (torch.load(os.path.join(d, "model.pt"), weights_only=False)["model"] for d in (fs, tmp_path / "back"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with open(os.path.join(fs, "dict.txt")) as before, open(tmp_path / "back" / "dict.txt") as after:
        assert len(before.readlines()) == len(after.readlines())

    to_hf.export(str(tmp_path / "back"), str(tmp_path / "again"))  # import then export: HF -> ours -> HF
    before, after = (load_file(os.path.join(d, "model.safetensors")) for d in (hf, tmp_path / "again"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fp16_training_checkpoint_exports_in_float32(dirs, tmp_path):
    fs = str(tmp_path / "save_dir")
    shutil.copytree(dirs["complete"][0], fs)
    checkpoint = torch.load(os.path.join(fs, "model.pt"), weights_only=False)
    checkpoint["model"] = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint["model"].items()}
    checkpoint["cfg"]["common"]["fp16"] = True
    torch.save(checkpoint, os.path.join(fs, "checkpoint_best.pt"))
    os.remove(os.path.join(fs, "model.pt"))
    to_hf.main(["--input", fs, "--output", str(tmp_path / "hf"), "--checkpoint-file", "checkpoint_best.pt"])
    theirs = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert theirs.dtype == torch.float32
    ours = _ours(fs, "checkpoint_best.pt")
    tokens, glob = _batch(ours)
    with torch.no_grad():
        expected = ours.model(tokens, global_attention_mask=glob)[0]
    assert (_hf_logits(theirs, tokens, glob) - expected)[tokens.ne(1)].abs().max().item() <= 1e-5


def _edited_copy(source, dest, **model_cfg):
    shutil.copytree(source, dest)
    path = os.path.join(dest, "model.pt")
    checkpoint = torch.load(path, weights_only=False)
    for key, value in model_cfg.items():
        setattr(checkpoint["cfg"]["model"], key, value)
    torch.save(checkpoint, path)
    return str(dest)


@pytest.mark.parametrize("cfg, message", [
    (dict(encoder_normalize_before=True), "pre-LayerNorm"),
    (dict(activation_fn="relu"), "activation 'relu'"),
    (dict(attention_window="0"), "window 0: HF asserts attention_window > 0"),
    (dict(attention_window="2"), "window 2: HF's sliding-chunk code fails"),
    (dict(attention_window="15"), "window 15: HF splits the window evenly"),
    (dict(attention_window="16,12"), "multiple of the largest window"),
    (dict(attention_dilation="1,2"), "no dilated attention"),
    (dict(_name="longformer_lm", arch="longformer_lm"), "no causal attention, no dilation"),
])
def test_export_refuses_what_hf_cannot_compute(dirs, tmp_path, cfg, message):
    source = _edited_copy(dirs["complete"][0], tmp_path / "src", **cfg)
    out = str(tmp_path / "hf")
    rf.assert_fails_leaving_nothing(functools.partial(to_hf.export, source, out), ConversionError, message, out)


def _edited_hf(source, dest, config=None, vocab=None, weights=None):
    shutil.copytree(source, dest)
    if config:
        path = os.path.join(dest, "config.json")
        with open(path) as f:
            data = json.load(f)
        with open(path, "w") as f:
            json.dump({**data, **config}, f)
    if vocab:
        path = os.path.join(dest, "tokenizer.json")
        with open(path) as f:
            data = json.load(f)
        data["model"]["vocab"].update(vocab)
        with open(path, "w") as f:
            json.dump(data, f)
    if weights:
        path = os.path.join(dest, "model.safetensors")
        save_file({**load_file(path), **weights(load_file(path))}, path)
    return str(dest)


def _nan_at(key, rows=slice(None)):
    def edit(state):
        value = state[key].clone()
        value[rows] = float("nan")
        return {key: value}
    return edit


@pytest.mark.parametrize("edit, message", [
    (dict(config={"model_type": "roberta"}), "only Longformer checkpoints"),
    (dict(config={"layer_norm_eps": 1e-12}), "layer_norm_eps is 1e-12"),
    (dict(weights=_nan_at("longformer.encoder.layer.1.attention.self.key_global.weight", 0)), "non-finite"),
    (dict(vocab={"<mask>": 5}), "not '<mask>'"),
    (dict(vocab={"<pad>": 0}), "not '<pad>'"),
])
def test_import_refuses_what_fairseq_cannot_hold(dirs, tmp_path, edit, message):
    source = _edited_hf(dirs["complete"][1], tmp_path / "src", **edit)
    out = str(tmp_path / "fs")
    rf.assert_fails_leaving_nothing(functools.partial(from_hf.import_hf, source, out), ConversionError, message, out)
    with pytest.raises(SystemExit, match="longformer-import-hf: error: "):
        from_hf.main(["--input", source, "--output", out])


def test_import_zeroes_unused_position_rows_that_are_not_finite(dirs, tmp_path):
    # allenai's conversion left rows 0-1 (padding offset) uninitialized; no real token reads them
    source = _edited_hf(dirs["complete"][1], tmp_path / "src", weights=_nan_at(mapping.POSITIONS, slice(0, 2)))
    from_hf.import_hf(source, str(tmp_path / "fs"))
    ours = _ours(str(tmp_path / "fs"))
    tokens, glob = _batch(ours)
    with torch.no_grad():
        assert torch.isfinite(ours.model(tokens, global_attention_mask=glob)[0]).all()


@pytest.mark.parametrize("tool", ["export", "import"])
def test_interrupted_run_leaves_nothing(dirs, tmp_path, monkeypatch, tool):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = str(tmp_path / "out")
    if tool == "export":
        from transformers import RobertaTokenizer
        monkeypatch.setattr(RobertaTokenizer, "save_pretrained", interrupt)  # after the weights were written
        run = functools.partial(to_hf.export, dirs["complete"][0], out)
    else:
        monkeypatch.setattr(from_hf, "fairseq_checkpoint", interrupt)  # after dict.txt and the BPE files
        run = functools.partial(from_hf.import_hf, dirs["complete"][1], out)
    rf.assert_fails_leaving_nothing(run, KeyboardInterrupt, None, out)


def test_existing_output_needs_overwrite(dirs, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="--overwrite"):
        to_hf.export(dirs["complete"][0], str(out))
    assert (out / "keep.txt").exists()


@pytest.mark.slow
def test_imported_model_continues_training_with_fairseq_train(dirs, tmp_path, caplog):
    from fairseq.data import Dictionary
    from test_roberta_train import USER_DIR, _fairseq_train_in_process

    fs = str(tmp_path / "fs")
    from_hf.import_hf(dirs["complete"][1], fs)
    data = str(tmp_path / "data")
    os.makedirs(data)
    shutil.copy(os.path.join(fs, "dict.txt"), data)
    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    for split, lines in (("train", 60), ("valid", 40)):
        rf.write_split(data, split, dictionary, lines, seed=len(split))
    log = _fairseq_train_in_process(
        caplog, data, "--user-dir", USER_DIR, "--task", "masked_lm", "--criterion", "masked_lm_bpc",
        "--arch", "longformer_roberta", "--encoder-layers", "2", "--encoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4", "--max-positions", "128",
        "--tokens-per-sample", "128", "--attention-window", WINDOWS, "--restore-file", os.path.join(fs, "model.pt"),
        "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
        "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "512", "--max-update", "2", "--cpu",
        "--save-dir", str(tmp_path / "ckpt"), "--no-epoch-checkpoints", "--log-format", "simple",
        "--num-workers", "0",
    )
    assert f"Loaded checkpoint {os.path.join(fs, 'model.pt')} (epoch 1 @ 0 updates)" in log
    trained = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    assert trained["optimizer_history"][-1]["num_updates"] == 2
