"""Recipes, the contiguous-layout alignment and the single rounding step shared by every reference op."""

from __future__ import annotations

import torch

from ..layout.grouped import MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT

Recipe = tuple[int, int, int]

#: (gran_m, gran_n, gran_k) of the inference recipe: A per-token 1x128, B per-block 128x128, BF16 output.
RECIPE_1D2D: Recipe = (1, 128, 128)
#: (gran_m, gran_n, gran_k) of the weight-gradient recipe: both operands 1x128, FP32 output.
RECIPE_1D1D: Recipe = (1, 1, 128)

#: Rows per segment of the M-grouped contiguous layout (and K per group of the K-grouped one).
MK_ALIGNMENT = MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT


def default_recipe(out_dtype: torch.dtype) -> Recipe:
    """Recipe implied by the output dtype: (1, 128, 128) for a bfloat16 ``d``, (1, 1, 128) for float32."""
    if out_dtype == torch.bfloat16:
        return RECIPE_1D2D
    if out_dtype == torch.float32:
        return RECIPE_1D1D
    raise TypeError(f"no default FP8 recipe for an output of dtype {out_dtype}; use bfloat16 or float32")


def round_to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round a float64 tensor once (nearest, ties to even) to ``dtype``; any shape and strides.

    torch converts float64 to bfloat16/float16 through float32, which rounds twice and can land
    on the wrong neighbour at a float32-created tie. Rounding to float32 with round-to-odd first
    keeps enough sticky information that the second rounding is exact.
    """
    if dtype == torch.float64:
        return x.clone()
    if dtype in (torch.bfloat16, torch.float16):
        return _round_to_odd_float32(x).to(dtype)
    return x.to(dtype)


def _round_to_odd_float32(x: torch.Tensor) -> torch.Tensor:
    x32 = x.to(torch.float32)
    back = x32.to(torch.float64)
    bits = x32.view(torch.int32)
    # IEEE floats are sign-magnitude: one less in the bits is one ulp toward zero (inf -> FLT_MAX too).
    bits = bits - (back.abs() > x.abs()).to(torch.int32)
    bits = bits | (back != x).to(torch.int32)
    return bits.view(torch.float32)
