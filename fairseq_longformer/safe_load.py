"""Let torch's safe unpickler (``weights_only=True``, the default since torch 2.6) read fairseq checkpoints.

Rather than turning safe loading off, we allow exactly the types that fairseq's own checkpoints pickle;
everything else still fails to unpickle. Two groups, both found by listing the globals of real
checkpoints (``torch.serialization.get_unsafe_globals_in_checkpoint``):

* On disk: released RoBERTa models store their training arguments as ``argparse.Namespace``, and
  fairseq stores a few numpy scalars (best validation loss, iterator state).
* After fairseq's loader: ``checkpoint_utils.load_checkpoint_to_cpu`` turns ``cfg`` into an omegaconf
  ``DictConfig`` of untyped nodes. That object is pickled again when rank 0 broadcasts the checkpoint
  to the other ranks (``distributed_utils.broadcast_object``, read back with ``torch.load``) and when a
  loaded checkpoint is saved again. Its pickle names the containers, their metadata, the untyped
  ``AnyNode``, the ``typing.Any`` / ``dict`` / ``list`` / ``int`` types that metadata records and the
  ``defaultdict`` of its resolver cache; the broadcast adds fairseq's ``_TensorPlaceholder``.
  Typed omegaconf nodes (``StringNode``, ``EnumNode``, ...) and structured-config classes never
  occur there and stay refused.
"""

from __future__ import annotations

import argparse
import collections
import typing

import numpy as np
import torch


def _numpy_scalar_types() -> list:
    """The globals numpy scalars and dtypes pickle through (names moved in numpy 2)."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [scalar, np.dtype, *dtype_classes]


def _loaded_cfg_types() -> list:
    """What a ``cfg`` that went through fairseq's loader pickles (see the module docstring)."""
    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    return [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode,
            typing.Any, dict, list, int, collections.defaultdict, _TensorPlaceholder]


def fairseq_checkpoint_globals() -> list:
    return [argparse.Namespace, *_numpy_scalar_types(), *_loaded_cfg_types()]


def allow_fairseq_checkpoints() -> None:
    """Add the types above to torch's safe-globals allow list (idempotent)."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())
