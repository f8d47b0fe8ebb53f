"""Reference M-grouped GEMMs over the contiguous (prefill) layout.

``a`` holds every group's rows in one ``[M_sum, K]`` buffer; ``b`` holds one ``[N, K]`` weight
per group. Which rows belong to which group comes from ``grouped_layout``:

- per-row (``use_psum_layout=False``): int32 ``[M_sum]``, the group of each row, -1 for padding;
- prefix sums (``use_psum_layout=True``): int32 ``[G]``, ``grouped_layout[g]`` is the exclusive
  end of group g's valid rows, which start at ``align(grouped_layout[g-1], 128)`` (0 for g=0).

Padding rows are neither computed nor written: the compute helpers return NaN there, which is
exactly what a NaN-poisoned ``d`` must still hold after the op.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..layout.math import align
from .common import MK_ALIGNMENT, RECIPE_1D2D, Recipe, round_to_dtype
from .dequant import dequantize

FP8Operand = tuple[torch.Tensor, torch.Tensor]


def group_rows(grouped_layout: torch.Tensor, num_groups: int, use_psum_layout: bool) -> list[torch.Tensor]:
    """int64 row indices of each group's valid rows, in increasing order; one tensor per group.

    grouped_layout: int32 ``[M_sum]`` (per-row) or ``[num_groups]`` (prefix sums); ids outside
    ``[0, num_groups)`` belong to no group. Reads the layout on the host.
    """
    device = grouped_layout.device
    if not use_psum_layout:
        layout = grouped_layout.cpu()
        return [(layout == g).nonzero().flatten().to(device) for g in range(num_groups)]
    ends = grouped_layout.tolist()
    rows, prev_end = [], 0
    for end in ends[:num_groups]:
        start = align(prev_end, MK_ALIGNMENT)
        rows.append(torch.arange(start, max(start, end), device=device))
        prev_end = end
    return rows


def _grouped_products(
    lhs: torch.Tensor, rhs: Callable[[int], torch.Tensor], rows: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # lhs: float64 [M_sum, K]; rhs(g): float64 [N, K]. Empty groups cost nothing.
    return [(r, lhs[r] @ rhs(g).mT) for g, r in enumerate(rows) if r.numel() > 0]


def _fill_nan(m: int, n: int, device: torch.device, parts) -> torch.Tensor:
    out = torch.full((m, n), float("nan"), dtype=torch.float64, device=device)
    for r, value in parts:
        out[r] = value
    return out


def _fp8_parts(a, b, grouped_layout, recipe, use_psum_layout, b_transposed):
    gran_m, gran_n, gran_k = recipe
    b_data, b_sf = (b[0].mT, b[1].mT) if b_transposed else b
    lhs = dequantize(a[0], a[1], gran_m, gran_k)
    rows = group_rows(grouped_layout, b_data.shape[0], use_psum_layout)
    return _grouped_products(lhs, lambda g: dequantize(b_data[g], b_sf[g], gran_n, gran_k), rows)


def _bf16_parts(a, b, grouped_layout, use_psum_layout, b_transposed):
    b_data = b.mT if b_transposed else b
    rows = group_rows(grouped_layout, b_data.shape[0], use_psum_layout)
    return _grouped_products(a.to(torch.float64), lambda g: b_data[g].to(torch.float64), rows)


def ref_m_grouped_fp8_gemm_nt_contiguous(
    a: FP8Operand, b: FP8Operand, grouped_layout: torch.Tensor,
    recipe: Recipe = RECIPE_1D2D, use_psum_layout: bool = False,
) -> torch.Tensor:
    """float64 ``[M_sum, N]``: row r of group g is ``deq(A)[r] @ deq(B[g]).T``; NaN on padding rows.

    a: (e4m3 ``[M_sum, K]``, sfa ``[M_sum, K/128]``); b: (e4m3 ``[G, N, K]``,
    sfb ``[G, ceil(N/128), K/128]``); scales float32 or packed UE8M0 int32, any strides.
    """
    parts = _fp8_parts(a, b, grouped_layout, recipe, use_psum_layout, b_transposed=False)
    return _fill_nan(a[0].shape[0], b[0].shape[1], a[0].device, parts)


def ref_m_grouped_fp8_gemm_nn_contiguous(
    a: FP8Operand, b: FP8Operand, grouped_layout: torch.Tensor,
    recipe: Recipe = RECIPE_1D2D, use_psum_layout: bool = False,
) -> torch.Tensor:
    """As :func:`ref_m_grouped_fp8_gemm_nt_contiguous` with b given (e4m3 ``[G, K, N]``,
    sfb ``[G, K/128, ceil(N/128)]``)."""
    parts = _fp8_parts(a, b, grouped_layout, recipe, use_psum_layout, b_transposed=True)
    return _fill_nan(a[0].shape[0], b[0].shape[2], a[0].device, parts)


def ref_m_grouped_bf16_gemm_nt_contiguous(
    a: torch.Tensor, b: torch.Tensor, grouped_layout: torch.Tensor, use_psum_layout: bool = False
) -> torch.Tensor:
    """float64 ``[M_sum, N]`` from a ``[M_sum, K]`` and b ``[G, N, K]``; NaN on padding rows."""
    parts = _bf16_parts(a, b, grouped_layout, use_psum_layout, b_transposed=False)
    return _fill_nan(a.shape[0], b.shape[1], a.device, parts)


def ref_m_grouped_bf16_gemm_nn_contiguous(
    a: torch.Tensor, b: torch.Tensor, grouped_layout: torch.Tensor, use_psum_layout: bool = False
) -> torch.Tensor:
    """As :func:`ref_m_grouped_bf16_gemm_nt_contiguous` with b given ``[G, K, N]``."""
    parts = _bf16_parts(a, b, grouped_layout, use_psum_layout, b_transposed=True)
    return _fill_nan(a.shape[0], b.shape[2], a.device, parts)


def _write_rows(d: torch.Tensor, parts) -> None:
    for r, value in parts:
        d[r] = round_to_dtype(value, d.dtype)


def m_grouped_fp8_gemm_nt_contiguous(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, grouped_layout: torch.Tensor,
    recipe: Recipe | None = None, compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
    use_psum_layout: bool = False, expected_m_for_psum_layout: int | None = None,
) -> None:
    """Reference of ``dg_moe.m_grouped_fp8_gemm_nt_contiguous``: writes the valid rows of
    bfloat16 ``d [M_sum, N]``, leaves padding rows untouched."""
    recipe = RECIPE_1D2D if recipe is None else tuple(recipe)
    _write_rows(d, _fp8_parts(a, b, grouped_layout, recipe, use_psum_layout, b_transposed=False))


def m_grouped_fp8_gemm_nn_contiguous(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, grouped_layout: torch.Tensor,
    recipe: Recipe | None = None, compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
    use_psum_layout: bool = False,
) -> None:
    """Reference of ``dg_moe.m_grouped_fp8_gemm_nn_contiguous`` (b given ``[G, K, N]``)."""
    recipe = RECIPE_1D2D if recipe is None else tuple(recipe)
    _write_rows(d, _fp8_parts(a, b, grouped_layout, recipe, use_psum_layout, b_transposed=True))


def m_grouped_bf16_gemm_nt_contiguous(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, grouped_layout: torch.Tensor,
    compiled_dims: str = "nk", use_psum_layout: bool = False,
    expected_m_for_psum_layout: int | None = None,
) -> None:
    """Reference of ``dg_moe.m_grouped_bf16_gemm_nt_contiguous``: writes the valid rows of ``d``."""
    _write_rows(d, _bf16_parts(a, b, grouped_layout, use_psum_layout, b_transposed=False))


def m_grouped_bf16_gemm_nn_contiguous(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, grouped_layout: torch.Tensor,
    compiled_dims: str = "nk", use_psum_layout: bool = False,
) -> None:
    """Reference of ``dg_moe.m_grouped_bf16_gemm_nn_contiguous`` (b given ``[G, K, N]``)."""
    _write_rows(d, _bf16_parts(a, b, grouped_layout, use_psum_layout, b_transposed=True))
