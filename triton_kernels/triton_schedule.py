"""Which key tiles each query tile visits: the tile-skipping plan of the Triton kernels.

Pure PyTorch (no Triton import), so the plan can be inspected and unit-tested anywhere.

Dilation is removed by a per-head token permutation (NATTEN's trick): with dilation ``d`` the tokens
``r, r+d, r+2d, ...`` form *residue class* ``r``, and a dilated window over the sequence is an
ordinary contiguous window inside one class. The kernels never materialise the permutation; they
address token ``r + p*d`` directly, so a class is just a strided view of length
``L_r = ceil((T - r) / d)``. Every tile below lives in class coordinates.

Inside a class, query ``i`` sees key ``j`` iff ``-reach_right <= i - j <= reach_left``
(``reach_left, reach_right = masks.reaches(w, causal)``). A query tile visits
key tiles ``[lo, hi)``; those in ``[ilo, ihi)`` lie wholly inside every row's window and inside the
class, so the kernel skips the window mask there ("interior"); ``[lo, ilo)`` and ``[ihi, hi)`` are
"edge" tiles and get masked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from .masks import reaches

# Row layout of a schedule table (int32): one row per tile of one head.
ROW_CLASS, ROW_START, ROW_LO, ROW_ILO, ROW_IHI, ROW_HI, ROW_LEN = range(7)
ROW_WIDTH = 8  # padded to 8 ints per row


def _cdiv(a: torch.Tensor | int, b: int):
    return -((-a) // b)


def head_schedule(seq_len: int, dilation: int, reach_left: int, reach_right: int,
                  block_rows: int, block_cols: int) -> torch.Tensor:
    """``[n_tiles, ROW_WIDTH]`` int64 plan for one head: row-tiles against the column tiles they visit.

    "Rows" are the tile the program owns, "columns" the tiles it loops over. The forward and dq
    kernels own query tiles (reach = window reach); the dk/dv kernel owns key tiles and loops over
    query tiles, which is the same plan with the two reaches swapped.
    """
    rows = []
    for r in range(min(dilation, seq_len)):
        length = (seq_len - r + dilation - 1) // dilation  # L_r, size of residue class r
        n_row_tiles = _cdiv(length, block_rows)
        start = torch.arange(n_row_tiles, dtype=torch.int64) * block_rows
        last = torch.clamp(start + block_rows, max=length) - 1  # last real row of the tile
        n_col_tiles = _cdiv(length, block_cols)
        full_col_tiles = length // block_cols  # column tiles with no position past the class end

        lo = torch.clamp(torch.div(start - reach_left, block_cols, rounding_mode="floor"), min=0)
        hi = torch.clamp(torch.div(last + reach_right, block_cols, rounding_mode="floor") + 1, max=n_col_tiles)
        # Interior column tile c (cols c*B .. c*B+B-1) for rows start..last:
        #   last - c*B <= reach_left  and  c*B + B - 1 - start <= reach_right  and  c < full tiles.
        ilo = _cdiv(last - reach_left, block_cols)
        ihi = torch.clamp(
            torch.div(start + reach_right - block_cols + 1, block_cols, rounding_mode="floor") + 1,
            max=full_col_tiles,
        )
        ilo = torch.minimum(torch.maximum(ilo, lo), hi)
        ihi = torch.minimum(torch.maximum(ihi, ilo), hi)
        table = torch.zeros(n_row_tiles, ROW_WIDTH, dtype=torch.int64)
        table[:, ROW_CLASS] = r
        table[:, ROW_START] = start
        table[:, ROW_LO], table[:, ROW_ILO], table[:, ROW_IHI], table[:, ROW_HI] = lo, ilo, ihi, hi
        table[:, ROW_LEN] = length
        rows.append(table)
    return torch.cat(rows) if rows else torch.zeros(0, ROW_WIDTH, dtype=torch.int64)


@functools.lru_cache(maxsize=64)
def _schedule_cpu(seq_len: int, dilations: tuple[int, ...], reach_left: int, reach_right: int,
                  block_rows: int, block_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    per_head = {d: head_schedule(seq_len, d, reach_left, reach_right, block_rows, block_cols)
                for d in set(dilations)}
    n_tiles = torch.tensor([per_head[d].shape[0] for d in dilations], dtype=torch.int32)
    table = torch.zeros(len(dilations), max(1, int(n_tiles.max())), ROW_WIDTH, dtype=torch.int32)
    for h, d in enumerate(dilations):
        table[h, : per_head[d].shape[0]] = per_head[d].to(torch.int32)
    return table, n_tiles


_DEVICE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def schedule(seq_len: int, dilations: Sequence[int], reach_left: int, reach_right: int,
             block_rows: int, block_cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(table [H, max_tiles, ROW_WIDTH] int32, n_tiles [H] int32)`` on ``device``, cached.

    Cached per shape so a training step does not rebuild or re-upload it.
    """
    key = (seq_len, tuple(dilations), reach_left, reach_right, block_rows, block_cols, str(device))
    hit = _DEVICE_CACHE.get(key)
    if hit is None:
        table, n_tiles = _schedule_cpu(*key[:-1])
        if len(_DEVICE_CACHE) > 64:
            _DEVICE_CACHE.clear()
        hit = _DEVICE_CACHE[key] = (table.to(device), n_tiles.to(device))
    return hit


@dataclass(frozen=True)
class TileCount:
    """Work of one forward launch set for one (batch, head) slot, summed over heads.

    ``*_tiles`` count (row tile, column tile) pairs the kernels visit; ``useful_scores`` counts the
    (query, key) pairs the contract actually needs. ``visited_scores / useful_scores`` is the
    price of tiling (1.0 would be perfect).
    """

    masked_tiles: int  # window edge tiles (with mask)
    interior_tiles: int  # window tiles with no mask
    global_key_tiles: int  # local query tiles x the extra tile(s) of global keys
    global_query_tiles: int  # global query tiles x every key tile
    visited_scores: int
    useful_scores: int

    @property
    def window_tiles(self) -> int:
        return self.masked_tiles + self.interior_tiles

    @property
    def overhead(self) -> float:
        return self.visited_scores / max(1, self.useful_scores)


def count_tiles(seq_len: int, window: int, dilation: int | Sequence[int] = 1, causal: bool = False,
                block_m: int = 64, block_n: int = 64, n_global: int = 0) -> TileCount:
    """Tiles the forward kernels visit for one batch row, against the scores the contract needs.

    Uses the very plan the kernels load (:func:`head_schedule`). ``n_global`` global tokens add one
    key tile group per local query tile and ``ceil(G/block_m)`` query tiles over all keys. Useful
    scores ignore padding and count a global key inside a window once.
    """
    dilations = (dilation,) if isinstance(dilation, int) else tuple(dilation)
    left, right = reaches(window, causal)
    masked = interior = window_useful = query_tiles = 0
    for d in dilations:
        plan = head_schedule(seq_len, d, left, right, block_m, block_n)
        masked += int((plan[:, ROW_ILO] - plan[:, ROW_LO] + plan[:, ROW_HI] - plan[:, ROW_IHI]).sum())
        interior += int((plan[:, ROW_IHI] - plan[:, ROW_ILO]).sum())
        query_tiles += plan.shape[0]
        for r in range(min(d, seq_len)):
            length = (seq_len - r + d - 1) // d
            i = torch.arange(length)
            window_useful += int((torch.clamp(i + right, max=length - 1) - torch.clamp(i - left, min=0) + 1).sum())
    g_key = query_tiles * _cdiv(n_global, block_n) if n_global else 0
    g_query = len(dilations) * _cdiv(n_global, block_m) * _cdiv(seq_len, block_n) if n_global else 0
    useful = window_useful
    if n_global:
        # Exact useful count needs positions; bound it by treating globals as outside every window:
        # each local query gains n_global keys, each global query sees all keys.
        useful += len(dilations) * ((seq_len - n_global) * n_global + n_global * seq_len)
    visited = (masked + interior + g_key + g_query) * block_m * block_n
    return TileCount(masked, interior, g_key, g_query, visited, useful)
