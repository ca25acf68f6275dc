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


# What fairseq itself pickles once its loader has turned ``cfg`` into a DictConfig: a checkpoint saved
# again after loading, and rank 0's broadcast to the other ranks (tensors split off as placeholders).
# Next to them, omegaconf objects that fairseq never produces: typed nodes of a structured config, and
# an untyped DictConfig holding an arbitrary object.
SAVE_LOADED_CFG = textwrap.dedent(
    """
    import argparse, dataclasses, enum, sys
    import torch
    from omegaconf import OmegaConf
    import fairseq_longformer  # noqa: F401  (fairseq's loader reads the Namespace in cfg)
    from fairseq import checkpoint_utils
    from fairseq.distributed.utils import _split_tensors_from_obj

    class Mode(enum.Enum):
        A = 1

    @dataclasses.dataclass
    class Typed:
        name: str = "x"
        mode: Mode = Mode.A

    class NotAllowed:
        pass

    out = sys.argv[1]
    cfg = {"common": {"seed": 1, "fp16": False}, "task": {"_name": "masked_lm", "data": "/data"},
           "optimization": {"lr": [1e-4], "update_freq": [1]},
           "model": argparse.Namespace(arch="roberta_base", max_positions=512)}
    torch.save({"cfg": cfg, "args": None, "model": {"w": torch.randn(3, 2)},
                "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": None}, "num_updates": 7}],
                "extra_state": {"train_iterator": {"epoch": 1}}}, out + "/on_disk.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(out + "/on_disk.pt")  # fairseq's own loader
    assert OmegaConf.is_config(state["cfg"])
    torch.save(state, out + "/resaved.pt")
    torch.save(_split_tensors_from_obj(state, []), out + "/broadcast.pt")
    torch.save({"cfg": OmegaConf.structured(Typed)}, out + "/typed_nodes.pt")
    torch.save({"cfg": OmegaConf.create({"x": NotAllowed()}, flags={"allow_objects": True})}, out + "/object.pt")
    """
)

LOAD_EACH = textwrap.dedent(
    """
    import pickle, sys, torch
    if sys.argv[2] == "plugin":
        import fairseq_longformer  # noqa: F401
    for name in sys.argv[3:]:
        try:
            state = torch.load(sys.argv[1] + "/" + name + ".pt")  # weights_only=True: torch's default
            print(name, "ok", state["cfg"].common.seed if name != "broadcast" else state["cfg"].task.data)
        except pickle.UnpicklingError:
            print(name, "refused")
    """
)


def test_plugin_allows_exactly_the_cfg_that_fairseqs_loader_builds(tmp_path):
    _run(SAVE_LOADED_CFG, str(tmp_path))
    names = ["resaved", "broadcast", "typed_nodes", "object"]
    without = _run(LOAD_EACH, str(tmp_path), "bare", *names)
    assert "resaved refused" in without and "broadcast refused" in without  # the failure is real
    with_plugin = _run(LOAD_EACH, str(tmp_path), "plugin", *names)
    assert "resaved ok 1" in with_plugin and "broadcast ok /data" in with_plugin
    assert "typed_nodes refused" in with_plugin and "object refused" in with_plugin
