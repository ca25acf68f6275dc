"""The paper-recipe MLM configs, as fairseq-hydra-train loads them (paper §5: 2^18 tokens per update
in 4,096-token sequences, LR 3e-5 with 500 warmup updates then power-3 polynomial decay over 65K updates).

Each config goes through what ``fairseq_cli.hydra_train`` does (hydra composition against fairseq's
schema, ``add_defaults``, resolution); the tokens per update are then counted in a real batch that
fairseq's ``masked_lm`` task builds from the composed config, and the learning rate is read from the
scheduler fairseq builds from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import roberta_fixtures as rf
import torch
from omegaconf import OmegaConf

import fairseq_longformer  # noqa: F401  (registers longformer_roberta_{base,large})

CONFIGS = Path(__file__).absolute().parent.parent / "configs" / "mlm"
PAPER_GPUS = 8  # the configs' batch settings assume 8 GPUs (see their header comments)


def load_like_fairseq_hydra_train(name: str, *overrides: str):
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from hydra import compose, initialize_config_dir

    hydra_init(name)  # fairseq-hydra-train registers its schema under the --config-name
    # version_base 1.1: what fairseq's @hydra.main (no version_base) runs with
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.1"):
        cfg = compose(name, overrides=list(overrides))
    add_defaults(cfg)
    with omegaconf_no_object_check():
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # ~19K tokens: four full 4,096-token blocks and a shorter last one.
    return rf.write_data(str(tmp_path_factory.mktemp("mlm_configs")), train_lines=800, valid_lines=4)


def largest_batch(cfg):
    """The largest batch fairseq's masked_lm task makes of the training data (the one holding the
    shorter last block is smaller)."""
    from fairseq import tasks

    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    iterator = task.get_batch_iterator(
        task.dataset("train"), max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
        max_positions=task.max_positions(), required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed, num_workers=0,
    )
    batches = [batch["net_input"]["src_tokens"] for batch in iterator.next_epoch_itr(shuffle=False)]
    return max(batches, key=torch.Tensor.numel)


@pytest.mark.parametrize("name", ["base", "large"])
def test_paper_recipe_runs_2_to_the_18_tokens_per_update_on_8_gpus(name, data):
    cfg = load_like_fairseq_hydra_train(
        name, f"task.data={data}", "checkpoint.restore_file=unused.pt",
        f"distributed_training.distributed_world_size={PAPER_GPUS}",
    )
    assert cfg.model._name == f"longformer_roberta_{name}" and cfg.criterion._name == "masked_lm_bpc"
    assert cfg.model.max_positions == 4096 and cfg.model.attention_window == "512"
    assert cfg.model.roberta_max_positions == 512

    tokens = largest_batch(cfg)
    assert tokens.shape[1] == 4096  # full-length sequences, <s> included
    sequences = cfg.distributed_training.distributed_world_size * cfg.optimization.update_freq[0] * tokens.shape[0]
    assert sequences == 64 and sequences * tokens.shape[1] == 2 ** 18


@pytest.mark.parametrize("name", ["base", "large"])
def test_paper_recipe_learning_rate_schedule(name):
    from fairseq import optim
    from fairseq.optim.lr_scheduler import build_lr_scheduler

    cfg = load_like_fairseq_hydra_train(name, "task.data=unused", "checkpoint.restore_file=unused.pt")
    optimizer = optim.build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = build_lr_scheduler(cfg.lr_scheduler, optimizer)
    peak, warmup, total = 3e-5, 500, 65_000
    assert cfg.optimization.max_update == total
    for update, expected in ((250, peak / 2), (warmup, peak), (32_750, peak / 8), (total, 0.0)):
        # after warmup: peak * (1 - (u - 500) / (65000 - 500)) ** 3; halfway is peak / 8
        assert scheduler.step_update(update) == pytest.approx(expected, abs=1e-12), update
