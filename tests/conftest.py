import os

import pytest
import torch

# Without CUDA the Triton kernels run on CPU tensors under the interpreter (it must be set before any
# kernel is defined); with CUDA they compile, and tests/test_triton_attention.py puts its tensors there.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
