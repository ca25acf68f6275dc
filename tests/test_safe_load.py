"""Importing the plugin lets torch's safe unpickler read fairseq checkpoints, and nothing more."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SAVE = textwrap.dedent(
    """
    import argparse, collections, sys
    import numpy as np, torch

    class NotAllowed:
        pass

    # The shape of a released fairseq RoBERTa checkpoint: argparse args, numpy scalars in extra_state.
    state = {
        "args": argparse.Namespace(arch="roberta_base", max_positions=512, lr=[0.0006]),
        "cfg": None,
        "model": collections.OrderedDict(w=torch.randn(3, 2)),
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": np.float32(1.5)}, "num_updates": 7,
                               "best_loss": np.float64(1.5)}],
        "extra_state": {"val_loss": np.float64(1.25), "train_iterator": {"epoch": np.int64(3)}},
    }
    torch.save(state, sys.argv[1] + "/fairseq.pt")
    torch.save({"evil": NotAllowed()}, sys.argv[1] + "/other.pt")
    """
)

LOAD = textwrap.dedent(
    """
    import pickle, sys, torch
    if sys.argv[2] == "plugin":
        import fairseq_longformer  # noqa: F401
    from fairseq import checkpoint_utils
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(sys.argv[1] + "/fairseq.pt")
        print("fairseq ok", state["args"].arch, float(state["extra_state"]["val_loss"]))
    except pickle.UnpicklingError:
        print("fairseq refused")
    try:
        torch.load(sys.argv[1] + "/other.pt")
        print("other ok")
    except pickle.UnpicklingError:
        print("other refused")
    """
)


def _run(code, *args):
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")


def test_plugin_allows_exactly_fairseq_checkpoint_types(tmp_path):
    _run(SAVE, str(tmp_path))
    without = _run(LOAD, str(tmp_path), "bare")
    assert "fairseq refused" in without  # the problem the plugin fixes is real on this torch
    with_plugin = _run(LOAD, str(tmp_path), "plugin")
    assert "fairseq ok roberta_base 1.25" in with_plugin
    assert "other refused" in with_plugin  # safe loading is still on for everything else
