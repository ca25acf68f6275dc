"""``longformer_sentence_prediction``: global-attention masks per mode on padded batches of different lengths,
truncation that keeps ``<s>`` and ``</s>`` (and says so), and the mask reaching the model."""

import json
import logging

import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary

import fairseq_longformer  # noqa: F401  registers the task
from data_prep.prep_classification import main as prep

BOS, PAD, EOS = 0, 1, 2


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Whitespace-tokenized pairs of different lengths: first text ``q*`` words, second ``d*`` words."""
    root = tmp_path_factory.mktemp("cls_task")
    lengths = [(2, 5), (4, 30), (1, 12), (3, 3), (6, 40), (2, 9)]
    rows = [{"q": " ".join(f"q{j}" for j in range(a)), "text": " ".join(f"d{j % 7}" for j in range(b)),
             "label": "yes" if i % 2 else "no"} for i, (a, b) in enumerate(lengths)]
    paths = [_write(root / f"{split}.jsonl", rows) for split in ("train", "valid")]
    out = root / "bin"
    prep(["--train", paths[0], "--valid", paths[1], "--output", str(out), "--tokenizer", "whitespace",
          "--text-field", "q", "--pair-field", "text"])
    single = root / "single"
    prep(["--train", paths[0], "--valid", paths[1], "--output", str(single), "--tokenizer", "whitespace"])
    return {"pairs": str(out), "single": str(single), "lengths": lengths, "valid": paths[1]}


def _task(data_dir, *extra, with_args=False):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data_dir, "--task", "longformer_sentence_prediction", "--num-classes", "2", "--arch", "longformer_roberta",
        "--criterion", "sentence_prediction", *extra])
    task = tasks.setup_task(args)
    task.load_dataset("valid")
    return (task, args) if with_args else task


def _batch(task, indices):
    dataset = task.dataset("valid")
    return dataset.collater([dataset[i] for i in indices])


def _unpadded_rows(batch):
    tokens = batch["net_input"]["src_tokens"]
    return [row[row.ne(PAD)] for row in tokens]


def test_defaults_are_longformer_ones(data):
    task = _task(data["single"])
    assert task.cfg.global_attention == "cls" and task.max_positions() == 4096
    tokens = _unpadded_rows(_batch(task, range(6)))
    # <s> text </s>: fairseq's sentence_prediction would start with the first word
    assert all(row[0] == BOS and row[-1] == EOS and (row == EOS).sum() == 1 for row in tokens)


@pytest.mark.parametrize("mode", ["cls", "first-segment", "none"])
def test_mask_per_mode_on_a_padded_batch_of_pairs(data, mode):
    task = _task(data["pairs"], "--global-attention", mode)
    batch = _batch(task, [0, 1, 2, 4])  # lengths 11, 38, 17, 50 (q + d + 4 specials): three rows padded
    tokens = batch["net_input"]["src_tokens"]
    assert tokens.eq(PAD).any(dim=1).sum() == 3
    if mode == "none":  # no key at all: the model takes its plain windowed path
        assert "global_attention_mask" not in batch["net_input"]
        return
    mask = batch["net_input"]["global_attention_mask"]
    assert mask.dtype == torch.bool and mask.shape == tokens.shape
    assert not mask[tokens.eq(PAD)].any()  # padding is never global
    for row, row_mask, (first, _) in zip(tokens, mask, [data["lengths"][i] for i in (0, 1, 2, 4)]):
        expected = torch.zeros_like(row_mask)
        # <s> q_1 .. q_first </s> </s> d .. </s>: cls = <s>; first-segment = <s> and the q words
        expected[: 1 if mode == "cls" else 1 + first] = True
        assert torch.equal(row_mask, expected)
        assert row[first + 1] == EOS and row[first + 2] == EOS  # RoBERTa's pair layout


def test_long_inputs_keep_bos_and_closing_eos_and_the_count_is_logged(data, caplog):
    caplog.set_level(logging.INFO)
    full = _task(data["pairs"])
    with caplog.at_level(logging.INFO):
        short = _task(data["pairs"], "--max-positions", "16")
    assert "valid: truncated 3 of 6 samples (50.0%) longer than --max-positions 16 to 16 tokens, keeping <s> " \
           "and the closing </s> (longest 50)" in caplog.text
    dataset_full, dataset_short = full.dataset("valid"), short.dataset("valid")
    for i in range(len(dataset_full)):
        original = dataset_full[i]["net_input.src_tokens"]
        cut = dataset_short[i]["net_input.src_tokens"]
        if len(original) <= 16:
            assert torch.equal(cut, original)
        else:
            assert len(cut) == 16 and cut[0] == BOS and cut[-1] == EOS
            assert torch.equal(cut[:-1], original[:15])
        assert dataset_short.size(i) == len(cut)  # batching and size filtering see the truncated length
    batch = dataset_short.collater([dataset_short[i] for i in range(6)])
    assert batch["net_input"]["src_tokens"].shape[1] == 16
    assert batch["net_input"]["src_lengths"].max() == 16 and batch["ntokens"] == sum(
        min(16, dataset_full.size(i)) for i in range(6))
    # first-segment on a truncated row whose first text filled the limit: every token but the last </s>
    cut_mode = _task(data["pairs"], "--max-positions", "6", "--global-attention", "first-segment")
    row = cut_mode.dataset("valid")[4]  # 6 q words: <s> q0..q3 </s>
    assert row["net_input.global_attention_mask"].tolist() == [True] * 5 + [False]


def test_targets_follow_the_label_dictionary(data):
    task = _task(data["single"])
    batch = _batch(task, range(6))
    labels = [json.loads(line)["label"] for line in open(data["valid"])]
    names = [task.label_dictionary[int(t) + task.label_dictionary.nspecial] for t in batch["target"].view(-1)]
    assert names == [labels[int(i)] for i in batch["id"]]


def test_the_mask_reaches_the_model_through_the_criterion(data):
    task, args = _task(data["single"], "--encoder-layers", "1", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim",
                       "32", "--encoder-attention-heads", "2", "--attention-window", "4", "--max-positions", "64",
                       with_args=True)
    model = task.build_model(args).eval()
    criterion = task.build_criterion(args)
    batch = _batch(task, range(6))
    seen = {}
    forward = model.forward

    def spy(*a, **kw):
        seen.update(kw)
        return forward(*a, **kw)

    model.forward = spy
    with torch.no_grad():
        criterion(model, batch)
    assert torch.equal(seen["global_attention_mask"], batch["net_input"]["global_attention_mask"])
    # and it changes <s>'s features on documents longer than the window
    with torch.no_grad():
        tokens = batch["net_input"]["src_tokens"]
        with_mask = forward(tokens, classification_head_name="sentence_classification_head",
                            global_attention_mask=seen["global_attention_mask"])[0]
        without = forward(tokens, classification_head_name="sentence_classification_head")[0]
    assert not torch.allclose(with_mask, without)


def test_bad_options_are_refused(data):
    with pytest.raises(SystemExit):
        _task(data["single"], "--global-attention", "question")
    with pytest.raises(ValueError, match="--max-positions must be >= 2"):
        _task(data["single"], "--max-positions", "1")
    assert Dictionary().bos() == BOS and Dictionary().eos() == EOS  # the defaults --init-token 0, --separator-token 2
