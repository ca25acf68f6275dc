"""End to end with fairseq's own tools: longformer-prep-qa (model's BPE) -> fairseq-train --restore-file of a
converted Longformer (no span head) -> fairseq-validate -> longformer-qa-predict; the hydra demo config."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import bpe_fixtures as bf
import fairseq_longformer
import qa_fixtures as qf
import roberta_fixtures as rf
from data_prep.qa.cli import main as prep_main
from fairseq_longformer.qa_predict import main as predict_main
from fairseq_longformer.squad_metrics import evaluate

pytestmark = pytest.mark.slow

USER_DIR = os.path.dirname(fairseq_longformer.__file__)
CONFIGS = os.path.join(os.path.dirname(USER_DIR), "configs", "finetune")
T = rf.TINY
MODEL = ["--arch", "longformer_roberta", "--encoder-layers", str(T["layers"]), "--encoder-embed-dim",
         str(T["embed_dim"]), "--encoder-ffn-embed-dim", str(T["ffn_dim"]), "--encoder-attention-heads", str(T["heads"]),
         "--max-positions", "128", "--attention-window", "16", "--roberta-max-positions", str(T["max_positions"])]


def _valid_squad():
    extra = [{"context": f"Room {i} of the house has {i + 2} windows and a blue door.", "qas": [
        qf.qa(f"door{i}", "What colour is the door?", "blue", f"Room {i} of the house has {i + 2} windows and a blue door.")]}
        for i in range(6)]
    return qf.squad(qf.round_trip_squad()["data"][0]["paragraphs"] + extra)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_train")
    lf = bf.make_bpe_longformer_dir(str(root / "lf"), max_positions=128, attention_window="16")
    squad = qf.write_json(root / "squad.json", _valid_squad())
    data = str(root / "bin")
    assert prep_main(["--train", squad, "--valid", squad, "--output", data, "--model-dir", lf,
                      "--max-positions", "64", "--max-question-tokens", "16", "--doc-stride", "16",
                      "--no-progress"]) == 0
    return root, lf, data, squad


def _in_process(caplog, module, parser_name, argv):
    """What the fairseq console scripts do, in this process (saves a fairseq import per run)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils

    caplog.set_level(logging.INFO)
    args = options.parse_args_and_arch(getattr(options, parser_name)(), list(argv))
    distributed_utils.call_main(convert_namespace_to_omegaconf(args), module.main)
    return caplog.text


def test_train_validate_and_predict(setup, caplog, capsys):
    from fairseq_cli import train, validate

    root, lf, data, squad = setup
    save_dir = str(root / "ckpt")
    out = _in_process(caplog, train, "get_training_parser", [
        data, "--user-dir", USER_DIR, "--task", "longformer_span_qa", "--criterion", "span_qa", "--span-loss", "or",
        *MODEL, "--restore-file", os.path.join(lf, "model.pt"), "--reset-optimizer", "--reset-dataloader",
        "--reset-meters", "--reset-lr-scheduler", "--optimizer", "adam", "--lr", "1e-4", "--batch-size", "4",
        "--max-update", "4", "--cpu", "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple",
        "--log-interval", "1", "--num-workers", "0"])
    assert "model.pt (epoch 1 @ 0 updates)" in out           # started from the converted Longformer ...
    assert "span head span_qa.out_proj.weight: new weights" in out   # ... which had no span head
    assert "num_updates: 4 >= max_update: 4" in out
    assert "start_acc" in out and "end_acc" in out and "| loss " in out

    before = torch.load(os.path.join(lf, "model.pt"), weights_only=False)["model"]
    after = torch.load(os.path.join(save_dir, "checkpoint_last.pt"), weights_only=False)["model"]
    assert set(after) - set(before) == {"span_heads.span_qa.out_proj.weight", "span_heads.span_qa.out_proj.bias"}
    layer = "encoder.sentence_encoder.layers.0.fc1.weight"
    assert 0 < (after[layer] - before[layer]).abs().max() < 1e-3  # 4 small Adam steps from the converted weights

    caplog.clear()
    capsys.readouterr()
    out = _in_process(caplog, validate, "get_validation_parser", [
        data, "--user-dir", USER_DIR, "--task", "longformer_span_qa", "--criterion", "span_qa",
        "--path", os.path.join(save_dir, "checkpoint_last.pt"), "--cpu", "--batch-size", "4", "--log-format", "simple"])
    out += capsys.readouterr().out  # fairseq-validate's handler writes its metrics line to stdout
    assert "valid on 'valid' subset" in out and "start_acc" in out and "end_acc" in out

    output = str(root / "pred.json")
    assert predict_main(["--data", data, "--split", "valid", "--path", os.path.join(save_dir, "checkpoint_last.pt"),
                         "--output", output, "--cpu"]) == 0
    result = json.loads(open(output, encoding="utf-8").read())
    questions = {qa["id"]: (p["context"], [a["text"] for a in qa["answers"]])
                 for p in json.load(open(squad, encoding="utf-8"))["data"][0]["paragraphs"] for qa in p["qas"]}
    assert set(result["predictions"]) == set(questions)
    for qid, text in result["predictions"].items():
        assert text and text in questions[qid][0]   # exact text of the context
    independent = evaluate(result["predictions"], {qid: answers for qid, (_, answers) in questions.items()})
    assert result["exact_match"] == pytest.approx(independent["exact_match"])
    assert result["f1"] == pytest.approx(independent["f1"])
    printed = capsys.readouterr().out
    assert f"exact match {result['exact_match']:.2f}, F1 {result['f1']:.2f} over {len(questions)} questions" in printed


def test_predict_refuses_bad_input(setup, tmp_path):
    root, lf, data, _ = setup
    with pytest.raises(SystemExit, match="is not a file"):
        predict_main(["--data", data, "--path", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit, match="prepare split 'test'"):
        predict_main(["--data", data, "--split", "test", "--path", os.path.join(lf, "model.pt")])
    with pytest.raises(SystemExit, match="was not trained with --task longformer_span_qa"):
        predict_main(["--data", data, "--path", os.path.join(lf, "model.pt"), "--cpu"])


def test_paper_recipe_configs_hold_table_13():
    for name, update_freq, gpus in (("base", 8, 4), ("large", 4, 8)):
        cfg = OmegaConf.load(os.path.join(CONFIGS, f"qa_{name}.yaml"))
        assert cfg.model._name == f"longformer_roberta_{name}" and cfg.model.max_positions == 4096
        assert cfg.task._name == "longformer_span_qa" and cfg.task.global_attention == "question"
        assert cfg.criterion._name == "span_qa" and cfg.criterion.span_loss == "or"
        assert cfg.optimization.lr == [3e-05] and cfg.optimization.max_epoch == 5
        assert cfg.lr_scheduler.warmup_updates == 1000 and cfg.lr_scheduler.power == 1
        assert cfg.dataset.batch_size * gpus * cfg.optimization.update_freq[0] == 32
        assert cfg.optimization.update_freq == [update_freq] and cfg.optimizer._name == "adam"


def test_demo_config_runs_with_fairseq_hydra_train(setup):
    root, _, data, _ = setup
    overrides = [f"common.user_dir={USER_DIR}", f"task.data={data}", f"checkpoint.save_dir={root}/demo",
                 "optimization.max_update=2", "dataset.validate_interval_updates=2"]
    cmd = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", CONFIGS, "--config-name", "qa_demo",
           *overrides]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "num_updates: 2 >= max_update: 2" in out and "start_acc" in out
    assert os.path.isfile(root / "demo" / "checkpoint_last.pt")
    assert not os.path.exists(root / "outputs")  # hydra.run.dir keeps fairseq in the launch directory
