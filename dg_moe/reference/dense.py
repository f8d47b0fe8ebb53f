"""Reference dense GEMMs: ``D = C + A @ B.T`` in float64 from dequantised (FP8) or widened (BF16) inputs.

Layout suffixes follow DeepGEMM (BLAS-style, of ``D = op(A) @ op(B)``): A is given ``[M, K]`` for
``n`` and ``[K, M]`` for ``t``; B is given ``[K, N]`` for ``n`` and ``[N, K]`` for ``t``; a
transposed operand's scale factors are transposed likewise. The writers take exactly the
arguments of the public ops and assume they were validated; ``compiled_dims`` and
``disable_ue8m0_cast`` do not change the maths.
"""

from __future__ import annotations

import torch

from .common import RECIPE_1D2D, Recipe, default_recipe, round_to_dtype
from .dequant import dequantize

FP8Operand = tuple[torch.Tensor, torch.Tensor]


def _t(x: FP8Operand) -> FP8Operand:
    return x[0].mT, x[1].mT


def ref_fp8_gemm_nt(
    a: FP8Operand, b: FP8Operand, c: torch.Tensor | None = None, recipe: Recipe = RECIPE_1D2D
) -> torch.Tensor:
    """float64 ``[M, N] = C + deq(A) @ deq(B).T``.

    a: (e4m3 ``[M, K]``, sfa ``[M, ceil(K/gran_k)]``); b: (e4m3 ``[N, K]``,
    sfb ``[ceil(N/gran_n), ceil(K/gran_k)]``); scales float32 or packed UE8M0 int32, any strides.
    c: optional ``[M, N]`` of any float dtype. recipe: (gran_m, gran_n, gran_k).
    """
    gran_m, gran_n, gran_k = recipe
    out = dequantize(a[0], a[1], gran_m, gran_k) @ dequantize(b[0], b[1], gran_n, gran_k).mT
    if c is not None:
        out += c.to(torch.float64)
    return out


def ref_fp8_gemm_nn(a: FP8Operand, b: FP8Operand, c: torch.Tensor | None = None,
                    recipe: Recipe = RECIPE_1D2D) -> torch.Tensor:
    """As :func:`ref_fp8_gemm_nt` with b given as (e4m3 ``[K, N]``, sfb ``[K/gran_k, N/gran_n]``)."""
    return ref_fp8_gemm_nt(a, _t(b), c, recipe)


def ref_fp8_gemm_tn(a: FP8Operand, b: FP8Operand, c: torch.Tensor | None = None,
                    recipe: Recipe = RECIPE_1D2D) -> torch.Tensor:
    """As :func:`ref_fp8_gemm_nt` with a given ``[K, M]`` (sfa ``[K/gran_k, M]``) and b ``[K, N]``."""
    return ref_fp8_gemm_nt(_t(a), _t(b), c, recipe)


def ref_fp8_gemm_tt(a: FP8Operand, b: FP8Operand, c: torch.Tensor | None = None,
                    recipe: Recipe = RECIPE_1D2D) -> torch.Tensor:
    """As :func:`ref_fp8_gemm_nt` with a given ``[K, M]`` (sfa ``[K/gran_k, M]``), b as in nt."""
    return ref_fp8_gemm_nt(_t(a), b, c, recipe)


def ref_bf16_gemm_nt(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """float64 ``[M, N] = C + A @ B.T``; a ``[M, K]``, b ``[N, K]`` (any float dtype, any strides)."""
    out = a.to(torch.float64) @ b.to(torch.float64).mT
    if c is not None:
        out += c.to(torch.float64)
    return out


def ref_bf16_gemm_nn(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """As :func:`ref_bf16_gemm_nt` with b given ``[K, N]``."""
    return ref_bf16_gemm_nt(a, b.mT, c)


def ref_bf16_gemm_tn(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """As :func:`ref_bf16_gemm_nt` with a given ``[K, M]`` and b given ``[K, N]``."""
    return ref_bf16_gemm_nt(a.mT, b.mT, c)


def ref_bf16_gemm_tt(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """As :func:`ref_bf16_gemm_nt` with a given ``[K, M]``, b as in nt."""
    return ref_bf16_gemm_nt(a.mT, b, c)


def _write_fp8(ref, a, b, d, c, recipe) -> None:
    recipe = default_recipe(d.dtype) if recipe is None else tuple(recipe)
    d.copy_(round_to_dtype(ref(a, b, c, recipe), d.dtype))


def fp8_gemm_nt(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "nk",
                disable_ue8m0_cast: bool = False) -> None:
    """Reference of ``dg_moe.fp8_gemm_nt``: writes ``d [M, N]`` (bfloat16 for (1,128,128), float32
    for (1,1,128)) = round(C + A @ B.T); ``d`` may alias ``c``. recipe None: from d's dtype."""
    _write_fp8(ref_fp8_gemm_nt, a, b, d, c, recipe)


def fp8_gemm_nn(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "nk",
                disable_ue8m0_cast: bool = False) -> None:
    """Reference of ``dg_moe.fp8_gemm_nn`` (b given ``[K, N]``); see :func:`fp8_gemm_nt`."""
    _write_fp8(ref_fp8_gemm_nn, a, b, d, c, recipe)


def fp8_gemm_tn(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "mn",
                disable_ue8m0_cast: bool = False) -> None:
    """Reference of ``dg_moe.fp8_gemm_tn`` (a ``[K, M]``, b ``[K, N]``); see :func:`fp8_gemm_nt`."""
    _write_fp8(ref_fp8_gemm_tn, a, b, d, c, recipe)


def fp8_gemm_tt(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "mn",
                disable_ue8m0_cast: bool = False) -> None:
    """Reference of ``dg_moe.fp8_gemm_tt`` (a ``[K, M]``, b ``[N, K]``); see :func:`fp8_gemm_nt`."""
    _write_fp8(ref_fp8_gemm_tt, a, b, d, c, recipe)


def bf16_gemm_nt(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "nk") -> None:
    """Reference of ``dg_moe.bf16_gemm_nt``: ``d [M, N]`` (bfloat16 or float32) = round(C + A @ B.T)."""
    d.copy_(round_to_dtype(ref_bf16_gemm_nt(a, b, c), d.dtype))


def bf16_gemm_nn(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "nk") -> None:
    """Reference of ``dg_moe.bf16_gemm_nn`` (b given ``[K, N]``)."""
    d.copy_(round_to_dtype(ref_bf16_gemm_nn(a, b, c), d.dtype))


def bf16_gemm_tn(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "mn") -> None:
    """Reference of ``dg_moe.bf16_gemm_tn`` (a ``[K, M]``, b ``[K, N]``)."""
    d.copy_(round_to_dtype(ref_bf16_gemm_tn(a, b, c), d.dtype))


def bf16_gemm_tt(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "mn") -> None:
    """Reference of ``dg_moe.bf16_gemm_tt`` (a ``[K, M]``, b ``[N, K]``)."""
    d.copy_(round_to_dtype(ref_bf16_gemm_tt(a, b, c), d.dtype))
