"""End to end with fairseq's own CLIs: a converted Longformer -> prep (its BPE and dictionary) ->
fairseq-train ``longformer_sentence_prediction`` -> fairseq-validate (accuracy) -> the hub's ``predict``
agreeing with the validation predictions; and the finetuning configs under fairseq-hydra-train."""

import json
import logging
import os
import re
import shutil

import pytest
import roberta_fixtures as rf
import torch
from bpe_fixtures import corpus_texts, make_bpe_longformer_dir
from omegaconf import OmegaConf

import fairseq_longformer
from data_prep.prep_classification import main as prep
from fairseq_longformer import LongformerRobertaModel

pytestmark = pytest.mark.slow

USER_DIR = os.path.dirname(fairseq_longformer.__file__)
CONFIGS = os.path.join(os.path.dirname(USER_DIR), "configs", "finetune")
POSITIONS, WINDOW = 128, "16"
HEAD = "sentence_classification_head"


def _records(texts, start):
    # label: does the text mention "class"? (learnable or not, it only has to be consistent; integers, as
    # fairseq's --report-acc-and-f1 needs); lengths vary from ~30 to ~250 tokens, so batches are padded
    # and some documents are truncated to 128
    return [{"text": t[: 100 + 50 * (i % 17)], "label": int("class" in t)} for i, t in enumerate(texts[start:start + 40])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls_train")
    lf = make_bpe_longformer_dir(str(root / "lf"), max_positions=POSITIONS, attention_window=WINDOW)
    texts = corpus_texts()
    paths = {}
    for split, start in (("train", 0), ("valid", 40)):
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in _records(texts, start)))
    data = str(root / "bin")
    prep(["--train", str(paths["train"]), "--valid", str(paths["valid"]), "--output", data,
          "--model-dir", lf, "--max-positions", str(POSITIONS)])
    with open(os.path.join(data, "prep.json")) as f:
        report = json.load(f)
    assert report["splits"]["valid"]["over_limit"] > 0  # some documents are truncated by the task
    return root, lf, data, paths


def _model_args():
    t = rf.TINY
    return ["--arch", "longformer_roberta", "--encoder-layers", str(t["layers"]),
            "--encoder-embed-dim", str(t["embed_dim"]), "--encoder-ffn-embed-dim", str(t["ffn_dim"]),
            "--encoder-attention-heads", str(t["heads"]), "--attention-window", WINDOW,
            "--roberta-max-positions", str(t["max_positions"])]


def _run_in_process(caplog, parser_fn, main, argv, **kwargs):
    """What a fairseq console script does, in this process (saves a fairseq import per run)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils

    caplog.set_level(logging.INFO)
    args = options.parse_args_and_arch(parser_fn(), list(argv))
    if kwargs.pop("with_overrides", False):
        kwargs["override_args"] = options.parse_args_and_arch(parser_fn(), list(argv), suppress_defaults=True)
    caplog.clear()
    distributed_utils.call_main(convert_namespace_to_omegaconf(args), main, **kwargs)
    return caplog.text


def test_train_validate_and_hub_predict_agree(setup, caplog, monkeypatch):
    from fairseq import options
    from fairseq_cli import train, validate

    monkeypatch.setattr(validate, "reset_logging", lambda: None)  # it would drop pytest's log capture
    root, lf, data, paths = setup
    save_dir = str(root / "ckpt")
    out = _run_in_process(caplog, options.get_training_parser, train.main, [
        data, "--user-dir", USER_DIR, "--task", "longformer_sentence_prediction", "--num-classes", "2",
        "--max-positions", str(POSITIONS), *_model_args(), "--criterion", "sentence_prediction",
        "--restore-file", os.path.join(lf, "model.pt"), "--reset-optimizer", "--reset-dataloader", "--reset-meters",
        "--reset-lr-scheduler", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4", "--max-update", "4",
        "--cpu", "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
        "--num-workers", "0", "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
        "--report-acc-and-f1",  # one of sentence_prediction's criterion options, kept working
    ])
    assert "Loaded checkpoint" in out and "num_updates: 4 >= max_update: 4" in out
    assert "Overwriting classification_heads.sentence_classification_head.dense.weight" in out  # a new head
    assert re.search(r"train: truncated \d+ of 40 samples .* keeping <s> and the closing </s>", out)
    assert re.search(r"valid on 'valid' subset .*\| accuracy [\d.]+", out)
    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")

    out = _run_in_process(caplog, options.get_validation_parser, validate.main, [
        data, "--user-dir", USER_DIR, "--task", "longformer_sentence_prediction", "--num-classes", "2",
        "--path", checkpoint, "--valid-subset", "valid", "--batch-size", "3", "--required-batch-size-multiple", "1",
        "--cpu", "--num-workers", "0", "--log-format", "simple",
    ], with_overrides=True)
    validated = re.search(r"valid on 'valid' subset \| .*accuracy ([\d.]+) .*\| f1 ([\d.]+)", out)
    validate_accuracy, validate_f1 = float(validated.group(1)), float(validated.group(2))

    # the hub, from raw text as a user has it (the model's BPE files beside the checkpoint)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(lf, name), save_dir)
    hub = LongformerRobertaModel.from_pretrained(save_dir, "checkpoint_last.pt", data_name_or_path=data, bpe="gpt2")
    hub.eval()
    assert hub.global_attention == "cls"
    records = [json.loads(line) for line in open(paths["valid"])]
    labels = hub.task.label_dictionary
    with torch.no_grad():
        hub_logits = torch.stack([hub.predict(HEAD, hub.encode(r["text"]), return_logits=True)[0] for r in records])
        predicted = [int(labels[int(p) + labels.nspecial]) for p in hub_logits.argmax(-1)]
        # the validation path: the task's padded batches, through the criterion's model call
        hub.task.load_dataset("valid")
        dataset = hub.task.dataset("valid")
        batch_logits = torch.zeros_like(hub_logits)
        for start in range(0, len(dataset), 7):
            sample = dataset.collater([dataset[i] for i in range(start, min(start + 7, len(dataset)))])
            logits, _ = hub.model(**sample["net_input"], features_only=True, classification_head_name=HEAD)
            batch_logits[sample["id"]] = logits
        unglobal = torch.stack([hub.predict(HEAD, hub.encode(r["text"]), return_logits=True, global_attention="none")[0]
                                for r in records])
    torch.testing.assert_close(hub_logits, batch_logits, atol=1e-5, rtol=1e-4)
    truth = [r["label"] for r in records]
    assert round(100 * sum(p == t for p, t in zip(predicted, truth)) / len(records), 1) == validate_accuracy
    true_pos = sum(p == t == 1 for p, t in zip(predicted, truth))
    f1 = 2 * true_pos / max(1, predicted.count(1) + truth.count(1))  # F1 of class 1, by hand
    assert round(100 * f1, 1) == validate_f1
    assert (hub_logits - unglobal).abs().max() > 1e-3  # the mask matters, so agreeing above means something


def test_paper_recipe_configs_hold_the_papers_numbers():
    for name, batch, update_freq in (("base", 4, 8), ("large", 2, 16)):
        cfg = OmegaConf.load(os.path.join(CONFIGS, f"classification_{name}.yaml"))
        assert cfg.model._name == f"longformer_roberta_{name}" and cfg.model.max_positions == 4096
        assert cfg.task._name == "longformer_sentence_prediction" and cfg.task.global_attention == "cls"
        assert cfg.task.max_positions == 4096 and (cfg.task.init_token, cfg.task.separator_token) == (0, 2)
        assert cfg.optimizer._name == "adam" and cfg.optimization.lr == [3e-05] and cfg.optimization.max_epoch == 15
        assert cfg.dataset.batch_size * update_freq == 32 and cfg.optimization.update_freq == [update_freq]
        scheduler = cfg.lr_scheduler
        assert scheduler._name == "polynomial_decay" and scheduler.power == 1  # linear decay
        # IMDB: ceil(25,000 / 32) updates per epoch x 15 epochs, 10% warmup
        assert scheduler.total_num_update == -(-25000 // 32) * 15
        assert scheduler.warmup_updates == round(0.1 * scheduler.total_num_update)
        assert cfg.criterion._name == "sentence_prediction"
        assert cfg.checkpoint.best_checkpoint_metric == "accuracy" and cfg.checkpoint.maximize_best_checkpoint_metric


@pytest.mark.parametrize("config", ["classification_demo", "classification_base"])
def test_config_runs_with_fairseq_hydra_train(setup, config):
    """Every key of the YAML runs as written but the data, the run length and (base) the model size / GPU
    settings; base restores the converted Longformer, the demo trains from scratch."""
    root, lf, data, _ = setup
    values = {**rf.short_run_values(data, f"{root}/{config}"), "task.num_classes": 2}
    if config == "classification_base":
        values.update({
            **rf.tiny_restore_values(lf, WINDOW), "task.max_positions": POSITIONS, "model.max_positions": POSITIONS,
            "model.roberta_max_positions": rf.TINY["max_positions"],
            "common.fp16": "false", "common.cpu": "true", "optimization.update_freq": "[1]",
        })
    # run_hydra_train also checks the exit status and that hydra left no outputs/ folder behind
    out = rf.run_hydra_train(CONFIGS, config, values, [], cwd=root)
    assert "num_updates: 2 >= max_update: 2" in out
    assert re.search(r"valid on 'valid' subset .*accuracy|\"valid_accuracy\"", out)  # simple / json log format
    assert ("Loaded checkpoint" in out) == (config == "classification_base")
