"""longformer-staged-train: phases chain through fairseq, a killed run resumes, eval-lm scores the result."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from data_prep.charlm import main as prep_main
from fairseq_longformer import staged_train
from fairseq_longformer.demo import eval_lm_command, run_eval_lm

pytestmark = pytest.mark.slow

SCHEDULE = {
    "base": {
        "common": {"log_format": "json", "log_interval": 5, "seed": 1},
        "task": {"_name": "language_modeling", "data": "???", "sample_break_mode": "none", "tokens_per_sample": 32},
        "criterion": {"_name": "char_lm_bpc"},
        "model": {"_name": "longformer_lm", "decoder_embed_dim": 16, "decoder_ffn_embed_dim": 32,
                  "decoder_layers": 2, "decoder_attention_heads": 2, "attention_window": [4, 8],
                  "attention_dilation": [1, 2], "dilated_heads": 1, "dropout": 0.0},
        "optimizer": {"_name": "adam", "weight_decay": 0.01},
        "lr_scheduler": {"_name": "fixed", "warmup_updates": 2},
        "optimization": {"lr": [0.003], "clip_norm": 0.25, "max_update": 10},
        "dataset": {"batch_size": 4, "num_workers": 0, "validate_interval_updates": 5,
                    "required_batch_size_multiple": 1},
        "checkpoint": {"save_interval_updates": 5, "keep_interval_updates": 1, "no_epoch_checkpoints": True},
    },
    "phases": [
        {"name": "p1"},
        # long enough to be killed mid-way after its first checkpoint
        {"name": "p2", "task": {"tokens_per_sample": 64}, "model": {"attention_window": [8, 16]},
         "optimization": {"lr": [0.0015], "max_update": 200}, "dataset": {"batch_size": 2}},
    ],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("staged")
    docs = root / "docs"
    docs.mkdir()
    for name in ("class", "for", "if", "while", "try", "with"):
        (docs / f"{name}.txt").write_text(topics[name], encoding="utf-8")
    prep_main(["--dataset", "text", "--input", str(docs), "--output", str(root / "data"),
               "--valid-size", "0.1", "--test-size", "0.1"])
    return root / "data"


def runner_command(schedule, data, save_dir):
    return [sys.executable, "-m", "fairseq_longformer.staged_train", str(schedule), "--input", str(data),
            "--output", str(save_dir)]


def test_killed_run_resumes_and_eval_lm_scores_it(tmp_path, data_dir, monkeypatch):
    # One torch thread per fairseq subprocess: with 2 threads on a busy 2-core CI box, steps run 6-10x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(yaml.safe_dump(SCHEDULE))
    save = tmp_path / "run"
    command = runner_command(schedule, data_dir, save)

    # 1st run: killed (whole process group, like Ctrl-C on a cluster job) once phase 2 has saved.
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (save / "p2" / "checkpoint_last.pt").exists():
        assert first.poll() is None, "runner exited before phase 2 saved a checkpoint"
        assert time.monotonic() < deadline, "phase 2 never saved a checkpoint"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert (save / "p1" / "phase_done.json").exists()
    assert not (save / "p2" / "phase_done.json").exists()
    p1_done = (save / "p1" / "phase_done.json").read_text()
    p1_log = (save / "p1" / "train.log").read_text()

    # 2nd run, same arguments: phase 1 skipped, phase 2 continued from its own checkpoint.
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "p1: finished earlier, skipped" in second.stdout
    assert "p2: resuming" in second.stdout
    # fairseq's log went to train.log, not the terminal: one progress bar, then the phase table
    assert "train_inner" not in second.stdout + second.stderr and "p2 (64 tokens)" in second.stderr
    assert "200/200" in second.stderr
    table = second.stdout[second.stdout.index("phase  seq length"):].splitlines()
    assert [row.split()[:3] for row in table[1:3]] == [["p1", "32", "10"], ["p2", "64", "200"]]
    assert (save / "p1" / "phase_done.json").read_text() == p1_done
    assert (save / "p1" / "train.log").read_text() == p1_log  # phase 1 did not run again
    p2_log = (save / "p2" / "train.log").read_text()
    assert "loading pretrained model from" in p2_log  # first launch: phase 1 weights, state reset
    resumed = [line for line in p2_log.splitlines() if "Loaded checkpoint" in line and "/p2/checkpoint_last.pt" in line]
    assert resumed and "@ 0 updates" not in resumed[-1]  # second launch: its own progress

    phases = json.loads((save / "phases.json").read_text())
    assert [p["phase"] for p in phases] == [1, 2]
    assert [p["tokens_per_sample"] for p in phases] == [32, 64]
    assert [p["updates"] for p in phases] == [10, 200]
    for p in phases:
        assert p["wall_s"] > 0 and 0 < p["train_bpc"] < 10 and 0 < p["valid_bpc"] < 10
    assert phases[1]["valid_bpc"] < phases[0]["valid_bpc"]
    assert (save / "bpc.png").stat().st_size > 1000

    # fairseq-eval-lm on the trained checkpoint matches scoring the test split by hand.
    checkpoint = save / "p2" / "checkpoint_last.pt"
    eval_bpc = run_eval_lm(eval_lm_command(data_dir, checkpoint, tokens_per_sample=64, context_window=0))
    assert abs(eval_bpc - manual_test_bpc(data_dir, checkpoint, block=64)) < 2e-3


def manual_test_bpc(data_dir, checkpoint, block):
    """Score the test split in independent blocks (what --context-window 0 means), base 2 per token."""
    from fairseq import checkpoint_utils
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(data_dir / "dict.txt"))
    data = data_utils.load_indexed_dataset(str(data_dir / "test"), dictionary, "mmap")
    stream = torch.cat([data[i] for i in range(len(data))])
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)], arg_overrides={"data": str(data_dir)})
    model = models[0].eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream), block):
            target = stream[start:start + block]
            previous = stream[start - 1:start] if start else torch.tensor([dictionary.eos()])
            source = torch.cat([previous, target[:-1]])
            logits = model(source[None])[0][0]
            total -= logits.log_softmax(-1).gather(1, target[:, None]).sum().item()
            count += len(target)
    return total / count / math.log(2)


def test_bad_schedule_is_refused(tmp_path, data_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": {}, "phases": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(SystemExit, match="unique"):
        staged_train.main([str(bad), "--input", str(data_dir)])
    with pytest.raises(SystemExit, match="does not exist"):
        staged_train.main([str(tmp_path / "missing.yaml"), "--input", str(data_dir)])
    with pytest.raises(SystemExit, match="no dict.txt"):
        staged_train.main([str(bad), "--input", str(tmp_path)])
