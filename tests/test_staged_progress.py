"""The staged runner's progress bar and end table, fed a canned fairseq JSON log: lines of a phase's
train.log as ``fairseq-hydra-train --log-format json`` wrote them in a run of tests/test_staged_train.py
(paths shortened)."""

from __future__ import annotations

import io

from fairseq_longformer.staged_train import (
    PhaseProgress,
    format_duration,
    parse_log,
    phase_table,
)

CANNED_LOG = """\
[2026-11-26 14:40:21,972][fairseq_cli.train][INFO] - training on 1 devices (GPUs/TPUs)
[2026-11-26 14:40:21,982][fairseq.trainer][INFO] - No existing checkpoint found /runs/demo/p1/checkpoint_last.pt
[2026-11-26 14:40:31,448][fairseq.trainer][INFO] - begin training epoch 1
[2026-11-26 14:40:32,334][train_inner][INFO] - {"epoch": 1, "update": 0.046, "loss": "7.101", "bpc": "7.1013", "ppl": "137.31", "wps": "980.8", "ups": "7.65", "wpb": "128", "bsz": "4", "num_updates": "5", "lr": "0.003", "gnorm": "1.398", "clip": "100", "train_wall": "1", "wall": "10"}
[2026-11-26 14:40:32,343][fairseq_cli.train][INFO] - begin validation on "valid" subset
[2026-11-26 14:40:32,880][valid][INFO] - {"epoch": 1, "valid_loss": "6.658", "valid_bpc": "6.6583", "valid_ppl": "101.01", "valid_wps": "3502.6", "valid_wpb": "124.9", "valid_bsz": "3.9", "valid_num_updates": "5"}
[2026-11-26 14:40:32,975][fairseq.checkpoint_utils][INFO] - Saved checkpoint /runs/demo/p1/checkpoint_1_5.pt (epoch 1 @ 5 updates, score 6.658) (writing took 0.08341654700006984 seconds)
[2026-11-26 14:40:33,562][train_inner][INFO] - {"epoch": 1, "update": 0.092, "loss": "6.218", "bpc": "6.2177", "ppl": "74.42", "wps": "525.1", "ups": "4.1", "wpb": "128", "bsz": "4", "num_updates": "10", "lr": "0.003", "gnorm": "1.115", "clip": "100", "train_wall": "1", "wall": "12"}
[2026-11-26 14:40:33,565][fairseq_cli.train][INFO] - Stopping training due to num_updates: 10 >= max_update: 10
[2026-11-26 14:40:34,010][valid][INFO] - {"epoch": 1, "valid_loss": "6.155", "valid_bpc": "6.1554", "valid_ppl": "71.28", "valid_wps": "4208.3", "valid_wpb": "124.9", "valid_bsz": "3.9", "valid_num_updates": "10", "valid_best_loss": "6.155"}
[2026-11-26 14:40:34,070][fairseq_cli.train][INFO] - end of epoch 1 (average epoch stats below)
[2026-11-26 14:40:34,074][train][INFO] - {"epoch": 1, "train_loss": "6.659", "train_bpc": "6.6595", "train_ppl": "101.09", "train_wps": "509.3", "train_ups": "3.98", "train_wpb": "128", "train_bsz": "4", "train_num_updates": "10", "train_lr": "0.003", "train_gnorm": "1.256", "train_clip": "100", "train_train_wall": "1", "train_wall": "12"}
[2026-11-26 14:40:34,082][fairseq_cli.train][INFO] - done training in 2.7 seconds
"""


def test_progress_bar_follows_updates_and_latest_bpc():
    out = io.StringIO()
    progress = PhaseProgress("p1", 32, 10, file=out)
    seen = []
    for line in CANNED_LOG.splitlines(keepends=True):
        progress.feed(line)
        seen.append((progress.bar.n, progress.latest["train_bpc"], progress.latest["valid_bpc"]))
    progress.close()
    assert seen[2] == (0, None, None)  # no JSON yet
    assert seen[3] == (5, 7.1013, None)  # first train_inner line
    assert seen[5] == (5, 7.1013, 6.6583)  # first validation
    assert seen[7] == (10, 6.2177, 6.6583)
    assert seen[-1] == (10, 6.2177, 6.1554)  # the epoch summary's train_bpc is an average, not the latest
    assert "p1 (32 tokens)" in out.getvalue() and "10/10" in out.getvalue()
    assert "train BPC=6.218" in out.getvalue() and "valid BPC=6.155" in out.getvalue()


def test_resumed_phase_starts_the_bar_at_its_logged_updates():
    progress = PhaseProgress("phase2", 512, 150, done=40, file=io.StringIO())
    assert progress.bar.n == 40
    # a relaunch resumes from its last checkpoint, which may be older than the last logged update
    progress.feed('[2026-11-26 14:42:22,167][train_inner][INFO] - {"epoch": 1, "bpc": "2.0", "num_updates": "30"}\n')
    assert progress.bar.n == 30
    progress.close()


def test_table_of_phases_from_the_parsed_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(CANNED_LOG)
    points = parse_log(log)
    assert points["train"] == [(5, 7.1013), (10, 6.2177)]
    assert points["valid"] == [(5, 6.6583), (10, 6.1554)]
    records = [
        {"name": "phase1", "tokens_per_sample": 256, "updates": points["updates"][-1][0],
         "train_bpc": points["train"][-1][1], "valid_bpc": points["valid"][-1][1], "wall_s": 31.0},
        {"name": "phase2", "tokens_per_sample": 512, "updates": 150, "train_bpc": 2.1,
         "valid_bpc": None, "wall_s": 3725.4},
    ]
    assert phase_table(records).splitlines() == [
        "phase   seq length  updates  train BPC  valid BPC  wall time",
        "phase1         256       10     6.2177     6.1554      0m31s",
        "phase2         512      150     2.1000          -   1h02m05s",
    ]


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 61, 3600)] == ["0m00s", "1m00s", "1m01s", "1h00m00s"]


def test_demo_ends_with_the_phase_table_and_the_test_bpc(tmp_path):
    from fairseq_longformer.demo import summary

    phases = [{"phase": 1, "name": "phase1", "tokens_per_sample": 256, "updates": 600, "train_bpc": 1.8886,
               "valid_bpc": 2.0238, "wall_s": 186.5}]
    result = {"test_bpc": 1.67554, "phases": phases, "wall_s_this_run": 264.2, "plot": str(tmp_path / "bpc.png")}
    prep = {"tokens": {"train": 417_000, "valid": 23_216, "test": 23_216}, "train_unigram_entropy_bits": 4.6928,
            "test_unigram_cross_entropy_bits": 4.6022}
    lines = summary(result, prep, tmp_path).splitlines()
    assert lines[:2] == ["phase   seq length  updates  train BPC  valid BPC  wall time",
                         "phase1         256      600     1.8886     2.0238      3m06s"]
    assert lines[3].startswith("Test BPC 1.6755 (fairseq-eval-lm, 23,216 test characters) vs unigram entropy 4.6928")
    assert "this run took 4m24s" in lines[3] and str(tmp_path / "demo_result.json") in lines[4]
