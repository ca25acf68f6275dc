"""Let torch's safe unpickler (``weights_only=True``, the default since torch 2.6) read fairseq checkpoints.

fairseq's checkpoints store their training arguments as ``argparse.Namespace`` (released RoBERTa
models) and a few numpy scalars (best validation loss, iterator state). Rather than turning safe
loading off, we allow exactly those types; everything else still fails to unpickle.
"""

from __future__ import annotations

import argparse

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


def fairseq_checkpoint_globals() -> list:
    return [argparse.Namespace, *_numpy_scalar_types()]


def allow_fairseq_checkpoints() -> None:
    """Add the types above to torch's safe-globals allow list (idempotent)."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())
