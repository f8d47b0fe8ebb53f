"""Reference K-grouped ``tn`` GEMMs (MoE weight gradient): ``D[g] = C[g] + A_g.T @ B_g``.

``a`` ``[sum_K, M]`` and ``b`` ``[sum_K, N]`` hold each group's K rows one after another, group g
taking ``ks[g]`` rows (a multiple of 128) from offset ``sum(ks[:g])``; FP8 scales are
``[sum_K/128, M]`` and ``[sum_K/128, N]`` (recipe (1, 1, 128)), so group g owns scale rows
``offset/128 .. (offset + ks[g])/128``. ``grouped_layout`` carries the same K sizes on the device
for the kernel; the reference reads ``ks_cpu``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .common import RECIPE_1D1D, Recipe, round_to_dtype
from .dequant import dequantize

FP8Operand = tuple[torch.Tensor, torch.Tensor]


def _k_grouped(
    lhs: Callable[[int, int], torch.Tensor], rhs: Callable[[int, int], torch.Tensor],
    ks: Sequence[int], shape: tuple[int, int, int], c: torch.Tensor | None, device: torch.device,
) -> torch.Tensor:
    # lhs(start, k) / rhs(start, k): float64 [M, k] / [N, k] for the K rows start .. start + k.
    if c is not None:
        out = c.to(torch.float64, copy=True)
    else:
        out = torch.zeros(shape, dtype=torch.float64, device=device)
    start = 0
    for g, k in enumerate(ks):
        if k > 0:
            out[g] += lhs(start, k) @ rhs(start, k).mT
        start += k
    return out


def _fp8_operand(x: FP8Operand, gran_mn: int, gran_k: int) -> Callable[[int, int], torch.Tensor]:
    def rows(start: int, k: int) -> torch.Tensor:
        data = x[0][start:start + k]
        sf = x[1][start // gran_k:(start + k) // gran_k]
        return dequantize(data.mT, sf.mT, gran_mn, gran_k)

    return rows


def ref_k_grouped_fp8_gemm_tn_contiguous(
    a: FP8Operand, b: FP8Operand, ks: Sequence[int], c: torch.Tensor | None = None,
    recipe: Recipe = RECIPE_1D1D,
) -> torch.Tensor:
    """float64 ``[G, M, N]`` with ``G = len(ks)``: ``C[g] + deq(A_g).T @ deq(B_g)``.

    a: (e4m3 ``[sum_K, M]``, float32 sfa ``[sum_K/128, M]``); b: (e4m3 ``[sum_K, N]``,
    sfb ``[sum_K/128, N]``); ks: K rows per group, multiples of 128; c: optional ``[G, M, N]``.
    """
    gran_m, gran_n, gran_k = recipe
    shape = (len(ks), a[0].shape[1], b[0].shape[1])
    return _k_grouped(_fp8_operand(a, gran_m, gran_k), _fp8_operand(b, gran_n, gran_k), ks, shape, c,
                      a[0].device)


def ref_k_grouped_bf16_gemm_tn_contiguous(
    a: torch.Tensor, b: torch.Tensor, ks: Sequence[int], c: torch.Tensor | None = None
) -> torch.Tensor:
    """float64 ``[G, M, N]``: ``C[g] + A_g.T @ B_g`` from a ``[sum_K, M]``, b ``[sum_K, N]``."""
    shape = (len(ks), a.shape[1], b.shape[1])
    def lhs(s: int, k: int) -> torch.Tensor:
        return a[s:s + k].mT.to(torch.float64)

    def rhs(s: int, k: int) -> torch.Tensor:
        return b[s:s + k].mT.to(torch.float64)

    return _k_grouped(lhs, rhs, ks, shape, c, a.device)


def k_grouped_fp8_gemm_tn_contiguous(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, ks_cpu: Sequence[int], grouped_layout: torch.Tensor,
    c: torch.Tensor | None = None, recipe: Recipe = RECIPE_1D1D, compiled_dims: str = "mn",
    use_psum_layout: bool = False,
) -> None:
    """Reference of ``dg_moe.k_grouped_fp8_gemm_tn_contiguous``: writes float32 ``d [G, M, N]``
    (may alias ``c``); groups with K = 0 get ``C[g]`` (or zeros)."""
    d.copy_(round_to_dtype(ref_k_grouped_fp8_gemm_tn_contiguous(a, b, ks_cpu, c, tuple(recipe)), d.dtype))


def k_grouped_bf16_gemm_tn_contiguous(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, ks_cpu: Sequence[int], grouped_layout: torch.Tensor,
    c: torch.Tensor | None = None, compiled_dims: str = "mn", use_psum_layout: bool = False,
) -> None:
    """Reference of ``dg_moe.k_grouped_bf16_gemm_tn_contiguous``: writes float32 ``d [G, M, N]``."""
    d.copy_(round_to_dtype(ref_k_grouped_bf16_gemm_tn_contiguous(a, b, ks_cpu, c), d.dtype))
