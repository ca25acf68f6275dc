"""End to end with fairseq's own CLIs: convert -> fairseq-train --restore-file -> reload; the freeze
option; two CPU processes; the hydra configs."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import fairseq_longformer
import roberta_fixtures as rf
from fairseq_longformer import LongformerRobertaModel
from fairseq_longformer.convert_roberta import ConversionOptions, convert

pytestmark = pytest.mark.slow

USER_DIR = os.path.dirname(fairseq_longformer.__file__)
CONFIGS = os.path.join(os.path.dirname(USER_DIR), "configs", "mlm")
POSITIONS_KEY = "encoder.sentence_encoder.embed_positions.weight"
SOURCE_ROWS = rf.TINY["max_positions"] + 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    src = rf.make_roberta_dir(str(root / "src"))
    convert(src, str(root / "lf"), ConversionOptions(max_positions=128, attention_window="16"))
    data = rf.write_data(str(root / "data"))
    return root, str(root / "lf"), data


def _model_args():
    t = rf.TINY
    return [
        "--arch", "longformer_roberta", "--encoder-layers", str(t["layers"]),
        "--encoder-embed-dim", str(t["embed_dim"]), "--encoder-ffn-embed-dim", str(t["ffn_dim"]),
        "--encoder-attention-heads", str(t["heads"]), "--max-positions", "128", "--tokens-per-sample", "128",
        "--attention-window", "16", "--roberta-max-positions", str(t["max_positions"]),
    ]


def _train_argv(data, lf, save_dir, *extra, restore_file=None):
    return [
        data, "--user-dir", USER_DIR, "--task", "masked_lm", "--criterion", "masked_lm_bpc", *_model_args(),
        "--restore-file", restore_file or os.path.join(lf, "model.pt"),
        "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
        "--optimizer", "adam", "--max-tokens", "512", "--max-update", "3", "--cpu",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
        "--num-workers", "0", *extra,
    ]


def _fairseq_train_in_process(caplog, *argv):
    """What the fairseq-train console script does, in this process (saves a fairseq import per run)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils
    from fairseq_cli import train

    caplog.set_level(logging.INFO)
    args = options.parse_args_and_arch(options.get_training_parser(), list(argv))
    distributed_utils.call_main(convert_namespace_to_omegaconf(args), train.main)
    return caplog.text


def _fairseq_train_process(argv, log):
    cmd = [sys.executable, "-m", "fairseq_cli.train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def _state(path):
    return torch.load(path, weights_only=False)["model"]


def test_restore_converted_model_train_a_few_steps_and_reload(setup, caplog):
    root, lf, data = setup
    save_dir = str(root / "ckpt")
    out = _fairseq_train_in_process(caplog, *_train_argv(data, lf, save_dir, "--lr", "1e-4", "--weight-decay", "0.01"))
    assert "Loaded checkpoint" in out and "model.pt (epoch 1 @ 0 updates)" in out
    assert "bpc=" in out and "| bpc " in out  # the Table 6 figure, logged in training and validation

    before = _state(os.path.join(lf, "model.pt"))
    after = _state(os.path.join(save_dir, "checkpoint_last.pt"))
    assert before.keys() == after.keys()
    changes = {k: (after[k].float() - before[k].float()).abs().max().item() for k in before}
    # started from the converted weights (3 small Adam steps move each weight by at most ~3 * lr) ...
    assert max(changes.values()) < 1e-3
    # ... and trained them
    assert changes["encoder.sentence_encoder.layers.0.fc1.weight"] > 0

    reloaded = LongformerRobertaModel.from_pretrained(save_dir, "checkpoint_last.pt", data_name_or_path=lf)
    for key, value in reloaded.model.state_dict().items():
        assert torch.equal(value, after[key]), key
    features = reloaded.extract_features(torch.randint(4, rf.VOCAB, (1, 100)))
    assert features.shape == (1, 100, rf.TINY["embed_dim"]) and torch.isfinite(features).all()


def test_freeze_roberta_trains_only_the_new_position_rows(setup, caplog):
    root, lf, data = setup
    save_dir = str(root / "frozen")
    # weight decay on: frozen weights must stay bit-identical even so
    out = _fairseq_train_in_process(
        caplog, *_train_argv(data, lf, save_dir, "--freeze-roberta", "--lr", "1e-3", "--weight-decay", "0.01")
    )
    assert "freeze_roberta: training only 96 new position rows" in out

    before = _state(os.path.join(lf, "model.pt"))
    after = _state(os.path.join(save_dir, "checkpoint_last.pt"))
    for key in before:
        if key != POSITIONS_KEY:
            assert torch.equal(before[key], after[key]), key
    assert torch.equal(before[POSITIONS_KEY][:SOURCE_ROWS], after[POSITIONS_KEY][:SOURCE_ROWS])
    changed_rows = (before[POSITIONS_KEY][SOURCE_ROWS:] != after[POSITIONS_KEY][SOURCE_ROWS:]).any(dim=1)
    assert changed_rows.float().mean() > 0.9


def test_two_cpu_processes_train_data_parallel(setup):
    """fairseq's pytorch_ddp backend passes device_ids=[0] (GPU only), and its torchrun path divides by
    the CUDA device count; on CPU fairseq's own legacy_ddp with gloo and explicit ranks works.

    Restoring goes fairseq's default way: rank 0 reads the checkpoint and broadcasts it, and rank 1
    reads that back under torch's safe ``weights_only`` unpickler. The checkpoint is one that was
    loaded by fairseq's loader and saved again, so its ``cfg`` is an omegaconf DictConfig on disk too.
    """
    from fairseq import checkpoint_utils

    root, lf, data = setup
    save_dir = str(root / "ddp")
    resaved = str(root / "resaved.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(os.path.join(lf, "model.pt"))
    assert OmegaConf.is_config(state["cfg"])
    torch.save(state, resaved)
    port = rf.free_port()
    logs = [open(root / f"rank{rank}.log", "w+") for rank in range(2)]
    procs = [
        _fairseq_train_process(_train_argv(
            data, lf, save_dir, "--lr", "1e-4",
            "--distributed-world-size", "2", "--distributed-rank", str(rank), "--distributed-no-spawn",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-backend", "gloo",
            "--ddp-backend", "legacy_ddp", restore_file=resaved,
        ), logs[rank])
        for rank in range(2)
    ]
    for proc in procs:
        proc.wait(timeout=300)
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    assert [p.returncode for p in procs] == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    assert "distributed init (rank 1)" in texts[1]
    # rank 0 read the file; rank 1 (which fairseq logs at WARNING only) got it through the broadcast
    assert f"Loaded checkpoint {resaved}" in texts[0]
    # --max-tokens 512 per process: more than 512 words per batch means both ranks' batches were summed
    words_per_batch = [float(part.split("=")[1]) for line in texts[0].splitlines() if "train_inner" in line
                       for part in line.split(", ") if part.startswith("wpb=")]
    assert words_per_batch and min(words_per_batch) > 512
    assert os.path.isfile(os.path.join(save_dir, "checkpoint_last.pt"))


# Only the model size, lengths and (for base) the GPU settings are overridden: every other key of
# the YAML (optimizer, scheduler, criterion, checkpointing, activation checkpointing) runs as written.
HYDRA_OVERRIDES = {
    "demo": ["model.encoder_normalize_before=false", "model.layernorm_embedding=true"],  # fixture is post-LN
    "base": ["common.fp16=false", "common.cpu=true", "optimization.update_freq=[1]"],
}


@pytest.mark.parametrize("config", ["demo", "base"])
def test_config_runs_with_fairseq_hydra_train(setup, config):
    root, lf, data = setup
    values = {**rf.short_run_values(data, f"{root}/{config}"), **rf.tiny_restore_values(lf, "16"),
              "task.tokens_per_sample": 128, "model.max_positions": 128,
              "model.roberta_max_positions": rf.TINY["max_positions"]}
    out = rf.run_hydra_train(CONFIGS, config, values, HYDRA_OVERRIDES[config], cwd=root)
    assert "Loaded checkpoint" in out and "num_updates: 2 >= max_update: 2" in out and "bpc" in out
