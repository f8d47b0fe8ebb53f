"""Constants of the grouped (MoE) layouts, and the segments of the prefix-sum layout."""

from __future__ import annotations

import torch

MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT = 128


def get_mk_alignment_for_contiguous_layout() -> int:
    """Rows (M-grouped) or K elements (K-grouped) each group's segment is padded to: one BLOCK_M/BLOCK_K."""
    return MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT


def psum_bounds(ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int64 ``(previous end, start, end)`` of each group of a prefix-sum layout ``ends`` (int [G]):
    group g starts at ``align(ends[g-1], 128)`` (0 for g = 0) and ends, exclusive, at ``ends[g]``."""
    alignment = MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT
    end = ends.long()
    prev = torch.cat([end.new_zeros(1), end[:-1]])
    return prev, (prev + alignment - 1) // alignment * alignment, end
