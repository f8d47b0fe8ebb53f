"""K-grouped ``tn`` GEMMs (MoE weight gradient): ``d[g] = c[g] + a_g.T @ b_g``.

- a: (e4m3 ``[sum_K, M]``, float32 sfa ``[sum_K/128, M]``), b: (e4m3 ``[sum_K, N]``, float32
  sfb ``[sum_K/128, N]``), recipe (1, 1, 128) only (packed UE8M0 is not accepted here: a packed
  int could straddle two groups); the BF16 op takes plain bfloat16 a and b.
- ks_cpu: host list of each group's K (multiples of 128, 0 allowed), summing to sum_K; group g
  owns rows ``sum(ks[:g]) .. sum(ks[:g+1])`` of a and b.
- grouped_layout: int32 ``[G]`` on the device, the same K sizes (``use_psum_layout=False``) or
  their running sums (``use_psum_layout=True``); checked against ks_cpu on CPU tensors only.
- d: float32 ``[G, M, N]``; c: optional float32 ``[G, M, N]`` accumulated (d may alias c); a group
  with K = 0 gets ``c[g]`` (or zeros).

On CUDA (both ops, one kernel family; docs/sm90-fp8-wgrad.md) the kernel reads the group sizes from
``grouped_layout`` on the device: no host sync, so the call can be captured in a CUDA graph and replayed
with new sizes. It reads a and b K-major: pass them as ``.mT`` views of ``[M, sum_K]`` and ``[N, sum_K]``
buffers to avoid a transposed copy of each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.compiler import is_compiling

from .. import checks as chk
from .. import reference as ref
from ..reference.common import MK_ALIGNMENT, RECIPE_1D1D, Recipe
from . import gemm_checks as gemm
from .dispatch import no_products, run_op

FP8Operand = tuple[torch.Tensor, torch.Tensor]


def _ks(op: str, ks_cpu: object, num_groups: int, sum_k_a: int, sum_k_b: int) -> list[int]:
    if not isinstance(ks_cpu, (list, tuple)) or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in ks_cpu
    ):
        raise TypeError(f"{op}: ks_cpu must be a list of Python ints (K of each group), got {ks_cpu!r}")
    if len(ks_cpu) != num_groups:
        raise ValueError(f"{op}: ks_cpu has {len(ks_cpu)} entries but d [G, M, N] has G = {num_groups}")
    for g, k in enumerate(ks_cpu):
        if k < 0 or k % MK_ALIGNMENT != 0:
            raise ValueError(
                f"{op}: ks_cpu[{g}] = {k} is not a non-negative multiple of {MK_ALIGNMENT}; pad each group's "
                f"K to a multiple of {MK_ALIGNMENT} with zero rows"
            )
    total = sum(ks_cpu)
    if total != sum_k_a or total != sum_k_b:
        raise ValueError(
            f"{op}: ks_cpu sums to {total} but a has sum_K = {sum_k_a} rows and b has {sum_k_b}; "
            "ks_cpu must list the K of every group in a and b"
        )
    return list(ks_cpu)


def _common(op, a, b, d, ks_cpu, grouped_layout, c, compiled_dims, use_psum_layout) -> tuple[int, ...]:
    g, m, n = d.shape
    sum_k_a, m_a = a.shape
    sum_k_b, n_b = b.shape
    if m_a != m or n_b != n:
        raise ValueError(
            f"{op}: d has shape {tuple(d.shape)} = [G, M, N] but a is [sum_K, M] = {tuple(a.shape)} and "
            f"b is [sum_K, N] = {tuple(b.shape)}"
        )
    ks = _ks(op, ks_cpu, g, sum_k_a, sum_k_b)
    chk.output_rows(op, "d", d)
    chk.unit_stride(op, "a" if a.dtype != chk.FP8 else "a[0]", a)
    chk.unit_stride(op, "b" if b.dtype != chk.FP8 else "b[0]", b)
    c = gemm.accumulator(op, c, d)
    chk.flag(op, "use_psum_layout", use_psum_layout)
    gl = chk.int32_vector(op, "grouped_layout", grouped_layout, g, "G (groups of d)", "d", d)
    gemm.k_grouped_layout(op, gl, ks, use_psum_layout)
    gemm.compiled_dims(op, compiled_dims)
    return g, m, n, sum_k_a


def k_grouped_fp8_gemm_tn_contiguous(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, ks_cpu: Sequence[int], grouped_layout: torch.Tensor,
    c: torch.Tensor | None = None, recipe: Recipe = RECIPE_1D1D, compiled_dims: str = "mn",
    use_psum_layout: bool = False,
) -> None:
    """FP8 ``d[g] = c[g] + a_g.T @ b_g`` with per-channel 1x128 scales on both; see the module docstring."""
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.k_grouped_fp8_gemm_tn_contiguous(*a, *b, d, ks_cpu, grouped_layout, c, recipe,
                                                                compiled_dims, use_psum_layout)
    _fp8_k_grouped(a, b, d, ks_cpu, grouped_layout, c, recipe, compiled_dims, use_psum_layout)


def _fp8_k_grouped(a: FP8Operand, b: FP8Operand, d: torch.Tensor, ks_cpu: Sequence[int],
                   grouped_layout: torch.Tensor, c: torch.Tensor | None, recipe: Recipe, compiled_dims: str,
                   use_psum_layout: bool) -> None:
    op = "k_grouped_fp8_gemm_tn_contiguous"
    a_data, sfa = gemm.fp8_pair(op, "a", a, 2, "[sum_K, M]")
    b_data, sfb = gemm.fp8_pair(op, "b", b, 2, "[sum_K, N]")
    d = chk.tensor(op, "d", d, (torch.float32,), 3, "[G, M, N]")
    for name, t in (("sfa (a[1])", sfa), ("sfb (b[1])", sfb)):
        gemm.dtype_is(op, name, t, (torch.float32,), "the K-grouped layout takes float32 scales only")
    chk.same_device(op, "d", d, {"a[0]": a_data, "a[1] (sfa)": sfa, "b[0]": b_data, "b[1] (sfb)": sfb})
    _, m, n, sum_k = _common(op, a_data, b_data, d, ks_cpu, grouped_layout, c, compiled_dims, use_psum_layout)
    rec = gemm.recipe(op, recipe, d, (RECIPE_1D1D,))
    gemm.sf(op, "sfa (a[1])", sfa, (), m, sum_k, 1, 128, rec, f"sum_K={sum_k}, M={m}", transposed=True)
    gemm.sf(op, "sfb (b[1])", sfb, (), n, sum_k, 1, 128, rec, f"sum_K={sum_k}, N={n}", transposed=True)
    run_op(op, d.device, ref.k_grouped_fp8_gemm_tn_contiguous, a, b, d, list(ks_cpu), grouped_layout, c, rec,
           compiled_dims, use_psum_layout, recipe=rec, empty=d.numel() == 0,
           trivial=no_products(d, c) if sum_k == 0 else None)


def k_grouped_bf16_gemm_tn_contiguous(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, ks_cpu: Sequence[int], grouped_layout: torch.Tensor,
    c: torch.Tensor | None = None, compiled_dims: str = "mn", use_psum_layout: bool = False,
) -> None:
    """BF16 ``d[g] = c[g] + a_g.T @ b_g``; a bf16 ``[sum_K, M]``, b bf16 ``[sum_K, N]``, d/c float32
    ``[G, M, N]``; ks_cpu and grouped_layout as for :func:`k_grouped_fp8_gemm_tn_contiguous`."""
    if is_compiling():
        return torch.ops.dg_moe.k_grouped_bf16_gemm_tn_contiguous(a, b, d, ks_cpu, grouped_layout, c, compiled_dims,
                                                                 use_psum_layout)
    _bf16_k_grouped(a, b, d, ks_cpu, grouped_layout, c, compiled_dims, use_psum_layout)


def _bf16_k_grouped(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, ks_cpu: Sequence[int],
                    grouped_layout: torch.Tensor, c: torch.Tensor | None, compiled_dims: str,
                    use_psum_layout: bool) -> None:
    op = "k_grouped_bf16_gemm_tn_contiguous"
    hint = "cast it with .to(torch.bfloat16) (or call the fp8 op for FP8 inputs)"
    a = chk.tensor(op, "a", a, (torch.bfloat16,), 2, "[sum_K, M]", hint)
    b = chk.tensor(op, "b", b, (torch.bfloat16,), 2, "[sum_K, N]", hint)
    d = chk.tensor(op, "d", d, (torch.float32,), 3, "[G, M, N]")
    chk.same_device(op, "d", d, {"a": a, "b": b})
    _, _, _, sum_k = _common(op, a, b, d, ks_cpu, grouped_layout, c, compiled_dims, use_psum_layout)
    run_op(op, d.device, ref.k_grouped_bf16_gemm_tn_contiguous, a, b, d, list(ks_cpu), grouped_layout, c,
           compiled_dims, use_psum_layout, empty=d.numel() == 0, trivial=no_products(d, c) if sum_k == 0 else None)
