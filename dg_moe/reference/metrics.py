"""Accuracy metric of the numeric contract: how far a kernel's output may stray from the float64 reference."""

from __future__ import annotations

import torch


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """Global similarity ``1 - 2·Σxy / Σ(x² + y²)`` in float64: 0 for identical tensors, 1 for orthogonal.

    x, y: same shape, any float dtype and device. FP8 kernels must stay below 1e-3 against the
    float64 reference, BF16 kernels below 1e-5. Two all-zero tensors count as identical (0.0);
    a NaN or Inf anywhere gives NaN.
    """
    if x.shape != y.shape:
        raise ValueError(f"calc_diff: x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}")
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    denominator = (x64 * x64 + y64 * y64).sum()
    if denominator.item() == 0.0:
        return 0.0
    return (1.0 - 2.0 * (x64 * y64).sum() / denominator).item()
