"""Reference M-grouped GEMMs over the masked (decode) layout.

``a`` is ``[G, max_m, K]``, ``d`` is ``[G, max_m, N]`` and only the first ``masked_m[g]`` rows of
group g are read and written. A count above ``max_m`` is clamped to ``max_m`` and a negative one
counts as 0, so the op never touches memory outside ``d``. The compute helpers return NaN on the
rows that are not written.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import RECIPE_1D2D, Recipe, round_to_dtype
from .dequant import dequantize

FP8Operand = tuple[torch.Tensor, torch.Tensor]


def valid_rows(masked_m: torch.Tensor, max_m: int) -> list[int]:
    """Rows computed per group: ``masked_m`` (int32 ``[G]``) clamped to ``[0, max_m]``; read on the host."""
    return [min(max(m, 0), max_m) for m in masked_m.tolist()]


def _masked_products(
    lhs: Callable[[int, int], torch.Tensor], rhs: Callable[[int], torch.Tensor], counts: list[int]
) -> list[tuple[int, int, torch.Tensor]]:
    # lhs(g, m): float64 [m, K] (first m rows of group g); rhs(g): float64 [N, K].
    return [(g, m, lhs(g, m) @ rhs(g).mT) for g, m in enumerate(counts) if m > 0]


def _fp8_parts(a, b, masked_m, recipe):
    gran_m, gran_n, gran_k = recipe
    counts = valid_rows(masked_m, a[0].shape[1])
    return _masked_products(
        lambda g, m: dequantize(a[0][g, :m], a[1][g, :m], gran_m, gran_k),
        lambda g: dequantize(b[0][g], b[1][g], gran_n, gran_k),
        counts,
    )


def _bf16_parts(a, b, masked_m):
    counts = valid_rows(masked_m, a.shape[1])
    return _masked_products(lambda g, m: a[g, :m].to(torch.float64), lambda g: b[g].to(torch.float64), counts)


def _fill_nan(shape: tuple[int, int, int], device: torch.device, parts) -> torch.Tensor:
    out = torch.full(shape, float("nan"), dtype=torch.float64, device=device)
    for g, m, value in parts:
        out[g, :m] = value
    return out


def ref_m_grouped_fp8_gemm_nt_masked(
    a: FP8Operand, b: FP8Operand, masked_m: torch.Tensor, recipe: Recipe = RECIPE_1D2D
) -> torch.Tensor:
    """float64 ``[G, max_m, N]``: ``deq(A[g, :m]) @ deq(B[g]).T`` with m the clamped ``masked_m[g]``,
    NaN on rows past it.

    a: (e4m3 ``[G, max_m, K]``, sfa ``[G, max_m, K/128]``); b: (e4m3 ``[G, N, K]``,
    sfb ``[G, ceil(N/128), K/128]``); scales float32 or packed UE8M0 int32, any strides.
    """
    g, max_m, n = a[0].shape[0], a[0].shape[1], b[0].shape[1]
    return _fill_nan((g, max_m, n), a[0].device, _fp8_parts(a, b, masked_m, recipe))


def ref_m_grouped_bf16_gemm_nt_masked(
    a: torch.Tensor, b: torch.Tensor, masked_m: torch.Tensor
) -> torch.Tensor:
    """float64 ``[G, max_m, N]`` from a ``[G, max_m, K]`` and b ``[G, N, K]``; NaN past ``masked_m``."""
    g, max_m, n = a.shape[0], a.shape[1], b.shape[1]
    return _fill_nan((g, max_m, n), a.device, _bf16_parts(a, b, masked_m))


def _write(d: torch.Tensor, parts) -> None:
    for g, m, value in parts:
        d[g, :m] = round_to_dtype(value, d.dtype)


def m_grouped_fp8_gemm_nt_masked(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int,
    recipe: Recipe | None = None, compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
) -> None:
    """Reference of ``dg_moe.m_grouped_fp8_gemm_nt_masked``: writes bfloat16 ``d[g, :masked_m[g]]``
    only; ``expected_m`` is a kernel heuristic hint and does not change the result."""
    recipe = RECIPE_1D2D if recipe is None else tuple(recipe)
    _write(d, _fp8_parts(a, b, masked_m, recipe))


def m_grouped_bf16_gemm_nt_masked(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int,
    compiled_dims: str = "nk",
) -> None:
    """Reference of ``dg_moe.m_grouped_bf16_gemm_nt_masked``: writes ``d[g, :masked_m[g]]`` only."""
    _write(d, _bf16_parts(a, b, masked_m))
