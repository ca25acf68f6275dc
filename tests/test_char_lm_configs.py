"""The shipped char-LM schedules follow the paper's Table 12 (values re-derived here, not copied)."""

from pathlib import Path

import pytest

from fairseq_longformer.staged_train import load_schedule, phase_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "char_lm"
TABLE_12_STEPS = {"small": [430_000, 50_000, 50_000, 35_000, 5_000], "large": [350_000, 25_000, 10_000, 5_000, 5_000]}


@pytest.mark.parametrize("name,layers,dropout,gap_layers", [
    ("small", 12, 0.2, [range(0, 6), range(6, 8), range(8, 10), range(10, 12)]),
    ("large", 30, 0.4, [range(0, 15), range(15, 20), range(20, 25), range(25, 30)]),
])
def test_schedule_matches_table_12(name, layers, dropout, gap_layers):
    base, phases = load_schedule(CONFIGS / f"{name}.yaml")
    configs = [phase_config(base, p) for p in phases]
    assert len(configs) == 5
    assert [c["task"]["tokens_per_sample"] for c in configs] == [2048, 4096, 8192, 16384, 23040]
    assert [c["dataset"]["batch_size"] for c in configs] == [32, 32, 16, 16, 16]
    assert [c["optimization"]["max_update"] for c in configs] == TABLE_12_STEPS[name]
    assert [c["lr_scheduler"]["warmup_updates"] for c in configs] == [min(10_000, s // 10) for s in TABLE_12_STEPS[name]]
    assert [c["optimization"]["lr"][0] for c in configs] == pytest.approx([2.5e-4 / 2 ** k for k in range(5)])
    for c in configs:
        model = c["model"]
        assert (model["decoder_layers"], model["decoder_attention_heads"], model["decoder_embed_dim"]) == (layers, 8, 512)
        assert model["dropout"] == dropout and model["dilated_heads"] == 2
        assert c["optimization"]["clip_norm"] == 0.25 and c["optimizer"]["weight_decay"] == 0.01
        assert c["lr_scheduler"]["_name"] == "fixed" and c["criterion"]["_name"] == "char_lm_bpc"
        for gap, layer_ids in enumerate(gap_layers):
            assert {model["attention_dilation"][i] for i in layer_ids} == {gap + 1}
    windows = [c["model"]["attention_window"] for c in configs]
    assert windows[0][0] == 32 and windows[0][-1] == 512 and windows[4][0] == 512 and windows[4][-1] == 8192
    assert windows[0] == sorted(windows[0])  # small at the bottom, large at the top
    for before, after in zip(windows, windows[1:]):
        assert after == [2 * w for w in before]


def test_demo_schedule_doubles_and_halves():
    base, phases = load_schedule(CONFIGS / "demo.yaml")
    configs = [phase_config(base, p) for p in phases]
    assert 2 <= len(configs) <= 3
    for before, after in zip(configs, configs[1:]):
        assert after["task"]["tokens_per_sample"] == 2 * before["task"]["tokens_per_sample"]
        assert after["model"]["attention_window"] == [2 * w for w in before["model"]["attention_window"]]
        assert after["optimization"]["lr"][0] == before["optimization"]["lr"][0] / 2
