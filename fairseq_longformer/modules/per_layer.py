"""The one parser of per-layer options (``--attention-window``, ``--attention-dilation``) for every model.

A value is one number for every layer or one number per layer, bottom layer first, given as an int, a
list/tuple, or a string ``"32,64,128"`` (what the command line and YAML give). The window is the total
number of keys besides the query itself, in every model: ``w`` keys back in the causal char LM,
``w/2`` on each side in the bidirectional encoders (so it must be even there).
"""

from __future__ import annotations

from collections.abc import Sequence


def per_layer(value, num_layers: int, option: str = "--attention-window", minimum: int = 0,
              even: bool = False) -> list[int]:
    """Expand ``value`` to ``num_layers`` ints and check them, with an error that names ``option``."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").strip("[]").split(",") if p]
    elif isinstance(value, Sequence):  # list, tuple, omegaconf's ListConfig (what hydra configs give)
        parts = list(value)
    else:
        parts = [value]
    if not parts or any(isinstance(p, (bool, float)) for p in parts):
        raise ValueError(f"{option} must be an int or a comma list of ints, got {value!r}")
    try:
        values = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be an int or a comma list of ints, got {value!r}") from None
    if len(values) == 1:
        values = values * num_layers
    if len(values) != num_layers:
        raise ValueError(
            f"{option} has {len(values)} values but the model has {num_layers} layers; "
            f"give one value for every layer or {num_layers} values, bottom layer first"
        )
    bad = [v for v in values if v < minimum or (even and v % 2)]
    if bad:
        kind = "even ints" if even else "ints"
        why = " (window/2 keys on each side of a token)" if even else ""
        raise ValueError(f"{option} values must be {kind} >= {minimum}{why}, got {bad}")
    return values
