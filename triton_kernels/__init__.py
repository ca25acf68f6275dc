"""Longformer attention ops. Knows nothing of fairseq.

``longformer_attention(q, k, v, window, ...)`` is the one public op (its contract: docs/attention.md,
"The contract"); backends: ``dense`` (O(T^2) reference), ``torch`` (blocked, O(T*w), CPU and GPU),
``triton`` (fused GPU kernels).
"""

from .api import AttentionSpec, available_backends, longformer_attention

__all__ = ["AttentionSpec", "available_backends", "longformer_attention"]
