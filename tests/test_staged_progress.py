"""The staged runner's progress bar and end table, fed a canned fairseq JSON log (lines as fairseq 0.12's
``--log-format json`` writes them, taken from a demo run's train.log)."""

from __future__ import annotations

import io

from fairseq_longformer.staged_train import PhaseProgress, format_duration, parse_log, phase_table

CANNED_LOG = """\
2026-11-26 14:10:02 | INFO | fairseq_cli.train | task: LanguageModelingTask
2026-11-26 14:10:03 | INFO | fairseq.trainer | No existing checkpoint found /run/phase1/checkpoint_last.pt
2026-11-26 14:10:09 | INFO | train_inner | {"epoch": 1, "update": 0.131, "loss": "4.868", "bpc": "4.868", "ppl": "29.2", "wps": "2171.5", "ups": "1.06", "wpb": "2048", "bsz": "8", "num_updates": "10", "lr": "0.000333333", "gnorm": "2.164", "clip": "100", "train_wall": "9", "wall": "10"}
2026-11-26 14:10:19 | INFO | train_inner | {"epoch": 1, "update": 0.263, "loss": "3.611", "bpc": "3.611", "ppl": "12.22", "wps": "2093.1", "ups": "1.02", "wpb": "2048", "bsz": "8", "num_updates": "20", "lr": "0.000666667", "gnorm": "1.02", "clip": "100", "train_wall": "9", "wall": "20"}
2026-11-26 14:10:20 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-11-26 14:10:22 | INFO | valid | {"epoch": 1, "valid_loss": "3.402", "valid_bpc": "3.402", "valid_ppl": "10.57", "valid_wps": "9876.5", "valid_wpb": "1968.4", "valid_bsz": "7.7", "valid_num_updates": "20"}
2026-11-26 14:10:29 | INFO | train_inner | {"epoch": 1, "update": 0.394, "loss": "3.350", "bpc": "3.35", "ppl": "10.2", "wps": "2101.7", "ups": "1.03", "wpb": "2048", "bsz": "8", "num_updates": "30", "lr": "0.001", "gnorm": "0.8", "clip": "100", "train_wall": "9", "wall": "30"}
2026-11-26 14:10:31 | INFO | valid | {"epoch": 1, "valid_loss": "3.298", "valid_bpc": "3.298", "valid_ppl": "9.84", "valid_wps": "9912.1", "valid_wpb": "1968.4", "valid_bsz": "7.7", "valid_num_updates": "32"}
2026-11-26 14:10:31 | INFO | fairseq_cli.train | end of epoch 1 (average epoch stats below)
2026-11-26 14:10:31 | INFO | train | {"epoch": 1, "train_loss": "3.85", "train_bpc": "3.85", "train_ppl": "14.42", "train_wps": "2110.3", "train_ups": "1.03", "train_wpb": "2048", "train_bsz": "8", "train_num_updates": "32", "train_lr": "0.00106667", "train_gnorm": "1.3", "train_clip": "100", "train_train_wall": "31", "train_wall": "32"}
2026-11-26 14:10:31 | INFO | fairseq_cli.train | done training in 31.0 seconds
"""


def test_progress_bar_follows_updates_and_latest_bpc():
    out = io.StringIO()
    progress = PhaseProgress("phase1", 256, 32, file=out)
    seen = []
    for line in CANNED_LOG.splitlines(keepends=True):
        progress.feed(line)
        seen.append((progress.bar.n, progress.latest["train_bpc"], progress.latest["valid_bpc"]))
    progress.close()
    assert seen[2] == (10, 4.868, None)  # first train_inner line
    assert seen[5] == (20, 3.611, 3.402)  # first validation
    assert seen[-1] == (32, 3.35, 3.298)  # the last update comes from validation / the epoch summary
    assert "phase1 (256 tokens)" in out.getvalue() and "32/32" in out.getvalue()
    assert "train BPC=3.350" in out.getvalue() and "valid BPC=3.298" in out.getvalue()


def test_resumed_phase_starts_the_bar_at_its_logged_updates():
    progress = PhaseProgress("phase2", 512, 150, done=40, file=io.StringIO())
    assert progress.bar.n == 40
    progress.feed('x | INFO | train_inner | {"bpc": "2.0", "num_updates": "30"}\n')  # relaunch from an earlier checkpoint
    assert progress.bar.n == 30
    progress.close()


def test_table_of_phases_from_the_parsed_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(CANNED_LOG)
    points = parse_log(log)
    assert points["train"] == [(10, 4.868), (20, 3.611), (30, 3.35)]
    assert points["valid"] == [(20, 3.402), (32, 3.298)]
    records = [
        {"name": "phase1", "tokens_per_sample": 256, "updates": points["updates"][-1][0],
         "train_bpc": points["train"][-1][1], "valid_bpc": points["valid"][-1][1], "wall_s": 31.0},
        {"name": "phase2", "tokens_per_sample": 512, "updates": 150, "train_bpc": 2.1,
         "valid_bpc": None, "wall_s": 3725.4},
    ]
    assert phase_table(records).splitlines() == [
        "phase   seq length  updates  train BPC  valid BPC  wall time",
        "phase1         256       32     3.3500     3.2980      0m31s",
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
