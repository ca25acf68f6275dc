"""``longformer_attention``: the public op, its input checks, and the one backend dispatch point."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# Backend name -> "module:function". Imported lazily so that e.g. the torch path never imports
# Triton. Every backend takes an ``AttentionSpec`` with already-validated, normalised arguments.
_BACKENDS: dict[str, str] = {
    "dense": "triton_kernels.dense:attention",
    "torch": "triton_kernels.blocked:attention",
    "triton": "triton_kernels.triton_attention:attention",
}


@dataclass(frozen=True)
class AttentionSpec:
    """Validated arguments shared by every backend (tensors are ``[B, H, T, D]``)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    window: int
    dilation: tuple[int, ...]  # one per head
    causal: bool
    key_padding_mask: torch.Tensor | None  # bool [B, T], True = padding
    global_mask: torch.Tensor | None  # bool [B, T], True = global; never True on padding
    q_global: torch.Tensor | None
    k_global: torch.Tensor | None
    v_global: torch.Tensor | None
    scale: float
    dropout_p: float


def longformer_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    dilation: int | Sequence[int] = 1,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    global_mask: torch.Tensor | None = None,
    q_global: torch.Tensor | None = None,
    k_global: torch.Tensor | None = None,
    v_global: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Longformer attention: sliding window (optionally dilated per head or causal) plus global tokens.

    Tensors are ``[B, H, T, D]``; ``q`` is not pre-scaled. The key set of each query is defined in
    docs/attention.md ("The contract"). A token marked both global and padding counts as padding.
    Passing ``global_mask`` (even one with no ``True``) asks for the global path and so needs
    ``q_global``, ``k_global`` and ``v_global``; pass ``None`` when no token is global.
    """
    spec = _validate(
        q, k, v, window, dilation, causal, key_padding_mask, global_mask,
        q_global, k_global, v_global, scale, dropout_p,
    )
    return resolve_backend(backend, q)(spec)


def available_backends() -> list[str]:
    """Backend names usable on this machine (``triton`` only where Triton imports)."""
    names = ["dense", "torch"]
    if _triton_importable():
        names.append("triton")
    return names


def resolve_backend(name: str, q: torch.Tensor) -> Callable[[AttentionSpec], torch.Tensor]:
    if name == "auto":
        name = "triton" if q.is_cuda and _triton_importable() else "torch"
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of 'auto', {', '.join(map(repr, _BACKENDS))}")
    return _load_backend(name)


@functools.lru_cache(maxsize=None)
def _load_backend(name: str) -> Callable[[AttentionSpec], torch.Tensor]:
    # Cached so that the import happens once (and torch.compile sees no import on later calls).
    module_name, fn_name = _BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"backend {name!r} is not available here ({err}); use backend='torch' or 'auto'"
        ) from err
    return getattr(module, fn_name)


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _validate(q, k, v, window, dilation, causal, key_padding_mask, global_mask,
              q_global, k_global, v_global, scale, dropout_p) -> AttentionSpec:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor [B, H, T, D], got {_describe(t)}")
    if not q.is_floating_point():
        raise ValueError(f"q, k, v must be floating point, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"{name} must match q in shape, dtype and device: q is {_describe(q)}, {name} is {_describe(t)}"
            )
    B, H, T, D = q.shape

    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0, got {window!r}")
    if not causal and window % 2:
        raise ValueError(
            f"window={window} is odd: a non-causal window is split evenly, window/2 keys on each side; "
            f"use an even window such as {window + 1}"
        )

    if isinstance(dilation, bool):
        raise ValueError(f"dilation must be an int or a list of {H} ints, got {dilation!r}")
    if isinstance(dilation, int):
        dilations = (dilation,) * H
    else:
        dilations = tuple(dilation)
        if len(dilations) != H:
            raise ValueError(f"dilation has {len(dilations)} entries but q has {H} heads; give one per head")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
        raise ValueError(f"every dilation must be an int >= 1 (1 = no gaps), got {list(dilations)}")

    for name, m in (("key_padding_mask", key_padding_mask), ("global_mask", global_mask)):
        if m is not None and (m.dtype != torch.bool or tuple(m.shape) != (B, T) or m.device != q.device):
            raise ValueError(f"{name} must be a bool tensor of shape [B, T] = [{B}, {T}] on {q.device}, got {_describe(m)}")

    projections = (q_global, k_global, v_global)
    if global_mask is not None:
        if causal:
            raise ValueError("global attention is not defined with causal=True; drop global_mask or set causal=False")
        if any(p is None for p in projections):
            raise ValueError("global_mask needs q_global, k_global and v_global (the global projections)")
        for name, p in zip(("q_global", "k_global", "v_global"), projections):
            if p.shape != q.shape or p.dtype != q.dtype or p.device != q.device:
                raise ValueError(f"{name} must match q ({_describe(q)}), got {_describe(p)}")
        if key_padding_mask is not None:
            global_mask = global_mask & ~key_padding_mask
    elif any(p is not None for p in projections):
        raise ValueError("q_global/k_global/v_global given without global_mask; pass global_mask too")

    if scale is None:
        scale = D ** -0.5
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")

    return AttentionSpec(q, k, v, window, dilations, bool(causal), key_padding_mask, global_mask,
                         q_global, k_global, v_global, float(scale), float(dropout_p))


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor(shape={list(t.shape)}, dtype={t.dtype}, device={t.device})"
    return repr(type(t).__name__)
