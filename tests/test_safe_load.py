"""Importing the plugin lets torch's safe unpickler read fairseq checkpoints, and nothing more.

Three processes (a process's allow list only grows): one writes the files, one loads them with torch and
fairseq alone, one with the plugin imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SAVE = textwrap.dedent(
    """
    import argparse, collections, dataclasses, enum, sys
    import numpy as np, torch
    from omegaconf import OmegaConf

    class NotAllowed:
        pass

    class Mode(enum.Enum):
        A = 1

    @dataclasses.dataclass
    class Typed:
        name: str = "x"
        mode: Mode = Mode.A

    out = sys.argv[1]
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
    torch.save(state, out + "/fairseq.pt")
    torch.save({"evil": NotAllowed()}, out + "/other.pt")

    # What fairseq pickles once its loader has turned ``cfg`` into a DictConfig: a checkpoint saved
    # again after loading, and rank 0's broadcast to the other ranks (tensors split off as placeholders).
    import fairseq_longformer  # noqa: F401  (fairseq's loader reads the Namespace in cfg)
    from fairseq import checkpoint_utils
    from fairseq.distributed.utils import _split_tensors_from_obj

    cfg = {"common": {"seed": 1, "fp16": False}, "task": {"_name": "masked_lm", "data": "/data"},
           "optimization": {"lr": [1e-4], "update_freq": [1]},
           "model": argparse.Namespace(arch="roberta_base", max_positions=512)}
    torch.save({**state, "args": None, "cfg": cfg}, out + "/with_cfg.pt")
    loaded = checkpoint_utils.load_checkpoint_to_cpu(out + "/with_cfg.pt")  # fairseq's own loader
    assert OmegaConf.is_config(loaded["cfg"])
    torch.save(loaded, out + "/resaved.pt")
    torch.save(_split_tensors_from_obj(loaded, []), out + "/broadcast.pt")
    # omegaconf objects fairseq never produces: typed nodes of a structured config, and an untyped
    # DictConfig holding an arbitrary object.
    torch.save({"cfg": OmegaConf.structured(Typed)}, out + "/typed_nodes.pt")
    torch.save({"cfg": OmegaConf.create({"x": NotAllowed()}, flags={"allow_objects": True})}, out + "/object.pt")
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
    for name in ("other", "resaved", "broadcast", "typed_nodes", "object"):
        try:
            state = torch.load(sys.argv[1] + "/" + name + ".pt")  # weights_only=True: torch's default
            detail = {"resaved": lambda: state["cfg"].common.seed, "broadcast": lambda: state["cfg"].task.data}
            print(name, "ok", detail.get(name, lambda: "")())
        except pickle.UnpicklingError:
            print(name, "refused")
    """
)


def _run(code, *args):
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return [line.strip() for line in done.stdout.split("\n")]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """What each file gave when loaded without the plugin and with it."""
    out = str(tmp_path_factory.mktemp("safe_load"))
    _run(SAVE, out)
    return {"bare": _run(LOAD, out, "bare"), "plugin": _run(LOAD, out, "plugin")}


def test_plugin_allows_exactly_fairseq_checkpoint_types(loaded):
    assert "fairseq refused" in loaded["bare"]  # the problem the plugin fixes is real on this torch
    assert "fairseq ok roberta_base 1.25" in loaded["plugin"]
    assert "other refused" in loaded["plugin"]  # safe loading is still on for everything else


def test_plugin_allows_exactly_the_cfg_that_fairseqs_loader_builds(loaded):
    assert "resaved refused" in loaded["bare"] and "broadcast refused" in loaded["bare"]  # the failure is real
    assert "resaved ok 1" in loaded["plugin"] and "broadcast ok /data" in loaded["plugin"]
    assert "typed_nodes refused" in loaded["plugin"] and "object refused" in loaded["plugin"]
