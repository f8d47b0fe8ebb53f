"""Checks on the values of layout tensors. They read the tensor, so the ops run them on CPU only;
on the GPU a layout that breaks these rules is undefined behaviour (the kernel trusts it)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F

from ..layout.math import align
from ..reference.common import MK_ALIGNMENT


def per_row_layout(op: str, grouped_layout: torch.Tensor, num_groups: int) -> None:
    """Per-row group ids: each in ``[-1, num_groups)``; every 128-row tile holds one group's rows
    first and padding (-1) after them, as the kernel reads a tile's group from its first row."""
    bad = ((grouped_layout < -1) | (grouped_layout >= num_groups)).nonzero()
    if bad.numel() > 0:
        row = bad[0, 0].item()
        raise ValueError(
            f"{op}: grouped_layout[{row}] = {grouped_layout[row].item()} is not a group id: rows hold a "
            f"group in [0, {num_groups}) or -1 for padding (on CUDA an out-of-range id is undefined "
            "behaviour)"
        )
    m = grouped_layout.shape[0]
    tiles = F.pad(grouped_layout, (0, align(m, MK_ALIGNMENT) - m), value=-1).view(-1, MK_ALIGNMENT)
    valid = tiles >= 0
    lo = torch.where(valid, tiles, num_groups).amin(dim=1)
    hi = torch.where(valid, tiles, -1).amax(dim=1)
    mixed = valid.any(dim=1) & (lo != hi)
    late = (valid[:, 1:] & ~valid[:, :-1]).any(dim=1)
    broken = (mixed | late).nonzero()
    if broken.numel() > 0:
        tile = broken[0, 0].item()
        first = tile * MK_ALIGNMENT
        ids = sorted(set(tiles[tile].tolist()))
        raise ValueError(
            f"{op}: grouped_layout rows {first}..{first + MK_ALIGNMENT - 1} hold ids {ids}; each "
            f"{MK_ALIGNMENT}-row tile must hold one group's rows first and padding (-1) after them: pad each "
            f"group's segment to a multiple of {MK_ALIGNMENT} rows"
        )


def psum_layout(op: str, grouped_layout: torch.Tensor, m_sum: int) -> None:
    """Prefix-sum ends: non-negative, non-decreasing, at most ``m_sum``, and never inside the
    alignment gap that separates a group's start from the previous group's end."""
    prev_end = 0
    for g, end in enumerate(grouped_layout.tolist()):
        start = align(prev_end, MK_ALIGNMENT)
        if end < prev_end:
            raise ValueError(
                f"{op}: grouped_layout[{g}] = {end} is below the previous end {prev_end}; with "
                "use_psum_layout=True it holds each group's exclusive end row, non-decreasing and >= 0"
            )
        if prev_end < end < start:
            raise ValueError(
                f"{op}: grouped_layout[{g}] = {end} falls in the alignment gap {prev_end}..{start - 1}: "
                f"group {g} starts at align({prev_end}, {MK_ALIGNMENT}) = {start}, so its end must be "
                f"{prev_end} (empty) or >= {start}"
            )
        if end > m_sum:
            raise ValueError(f"{op}: grouped_layout[{g}] = {end} exceeds M_sum = {m_sum}, the rows of a")
        prev_end = end


def k_grouped_layout(op: str, grouped_layout: torch.Tensor, ks: Sequence[int], use_psum_layout: bool) -> None:
    """The device layout matches ``ks_cpu``: the K sizes themselves, or their running sums for psum."""
    expected = list(accumulate(ks)) if use_psum_layout else list(ks)
    for g, (got, want) in enumerate(zip(grouped_layout.tolist(), expected, strict=True)):
        if got != want:
            what = "the running sum of ks_cpu (use_psum_layout=True)" if use_psum_layout else "ks_cpu"
            raise ValueError(
                f"{op}: grouped_layout[{g}] = {got} but must equal {what}: {want}; "
                "ks_cpu and grouped_layout describe the same groups"
            )
