"""M-grouped GEMMs over the contiguous (prefill) layout: every group's rows in one ``[M_sum, K]`` buffer.

- a: (e4m3 ``[M_sum, K]``, sfa ``[M_sum, K/128]``), b: (e4m3 ``[G, N, K]``,
  sfb ``[G, ceil(N/128), K/128]``) (``nn``: b ``[G, K, N]``, sfb ``[G, K/128, ceil(N/128)]``);
  scales float32 or int32 packed UE8M0; recipe (1, 128, 128) only; d bfloat16 ``[M_sum, N]``. The BF16
  ops take a bf16 and b bf16 of the same shapes, d bfloat16 or float32.
- grouped_layout, int32 contiguous: ``[M_sum]`` group id per row, -1 on padding rows, each
  128-row tile holding one group's rows first (``use_psum_layout=False``); or ``[G]`` exclusive
  end rows with group g starting at ``align(grouped_layout[g-1], 128)`` (``use_psum_layout=True``,
  no host sync, CUDA-graph safe).

Padding rows of d are not written. Group ids and ends are checked on CPU tensors only; on the
GPU an out-of-range id or a broken layout is undefined behaviour.

Strides: the ``nt`` FP8 op, which the SM90 kernel runs, takes contiguous a[0], b[0] and d (its TMA
addresses dense rows), on every device so that code written on CPU meets the GPU's rule. The others
take operands with stride 1 along either of their last two dims and a d with a contiguous last dim.
"""

from __future__ import annotations

import torch
from torch.compiler import is_compiling

from .. import checks as chk
from .. import reference as ref
from ..reference.common import RECIPE_1D2D, Recipe
from . import _memo
from . import gemm_checks as gemm
from .dispatch import run_op

FP8Operand = tuple[torch.Tensor, torch.Tensor]


def _b_dims(op: str, b: torch.Tensor, b_t: bool) -> tuple[int, int, int]:
    g, n, k = (b.shape[0], b.shape[2], b.shape[1]) if b_t else tuple(b.shape)
    if g == 0:
        raise ValueError(f"{op}: b holds no group (shape {tuple(b.shape)}); it needs G >= 1 weights")
    return g, n, k


def _layout(op: str, grouped_layout: object, d: torch.Tensor, m: int, g: int, use_psum_layout: object,
            expected_m_for_psum_layout: object) -> None:
    chk.flag(op, "use_psum_layout", use_psum_layout)
    if expected_m_for_psum_layout is not None:
        if not use_psum_layout:
            raise ValueError(
                f"{op}: expected_m_for_psum_layout is only used with use_psum_layout=True; drop it or "
                "pass use_psum_layout=True with prefix-sum ends"
            )
        chk.positive_int(op, "expected_m_for_psum_layout", expected_m_for_psum_layout)
    if use_psum_layout:
        gl = chk.int32_vector(op, "grouped_layout", grouped_layout, g, "G (groups of b, psum layout)", "d", d)
        chk.psum_ends(op, "grouped_layout", gl, m, f"M_sum = {m}, the rows of a")
    else:
        gl = chk.int32_vector(op, "grouped_layout", grouped_layout, m, "M_sum (rows of a)", "d", d)
        gemm.per_row_tiles(op, gl, g)


def _fp8_contiguous(op, ref_fn, a, b, d, grouped_layout, recipe, compiled_dims, disable_ue8m0_cast,
                    use_psum_layout, expected_m, b_t, **extra) -> None:
    signature = _memo.key(op, lambda: (a[0], a[1], b[0], b[1], d, grouped_layout),
                          (recipe, compiled_dims, disable_ue8m0_cast, use_psum_layout, expected_m, b_t))
    launch = _memo.plan(signature)
    if launch is not None and launch(a[0], a[1], b[0], b[1], d, grouped_layout):
        return
    rec = _memo.validated(signature, getattr(d, "device", None),
                          lambda: _check_fp8_contiguous(op, a, b, d, grouped_layout, recipe, compiled_dims,
                                                        disable_ue8m0_cast, use_psum_layout, expected_m, b_t))
    run_op(op, d.device, ref_fn, a, b, d, grouped_layout, rec, compiled_dims, disable_ue8m0_cast,
           use_psum_layout, **extra, recipe=rec, empty=d.numel() == 0, plan_key=signature)


def _check_fp8_contiguous(op, a, b, d, grouped_layout, recipe, compiled_dims, disable_ue8m0_cast,
                          use_psum_layout, expected_m, b_t) -> Recipe:
    lay_b = "[G, K, N]" if b_t else "[G, N, K]"
    a_data, sfa = gemm.fp8_pair(op, "a", a, 2, "[M_sum, K]")
    b_data, sfb = gemm.fp8_pair(op, "b", b, 3, lay_b)
    d = chk.tensor(op, "d", d, (torch.bfloat16,), 2, "[M_sum, N]")
    chk.same_device(op, "d", d, {"a[0]": a_data, "a[1] (sfa)": sfa, "b[0]": b_data, "b[1] (sfb)": sfb})
    m, k = a_data.shape
    g, n, k_b = _b_dims(op, b_data, b_t)
    gemm.same_k(op, k, k_b, f"a is [M_sum, K], b is {lay_b}")
    chk.k_aligned(op, "K", k, allow_zero=True, pad="a and b along K")
    chk.shape(op, "d", d, (m, n), f"a [M_sum, K] with M_sum={m} and b {lay_b} with N={n}")
    if b_t:
        chk.output_rows(op, "d", d)
        chk.unit_stride(op, "a[0]", a_data)
        chk.unit_stride(op, "b[0]", b_data)
    else:
        gemm.kernel_rows(op, a_data, b_data, d)
    rec = gemm.recipe(op, recipe, d, (RECIPE_1D2D,))
    gemm.sf(op, "sfa (a[1])", sfa, (), m, k, 1, 128, rec, f"M_sum={m}, K={k}")
    gemm.sf(op, "sfb (b[1])", sfb, (g,), n, k, 128, 128, rec, f"G={g}, N={n}, K={k}", transposed=b_t)
    gemm.compiled_dims(op, compiled_dims)
    chk.flag(op, "disable_ue8m0_cast", disable_ue8m0_cast)
    _layout(op, grouped_layout, d, m, g, use_psum_layout, expected_m)
    return rec


def _bf16_contiguous(op, ref_fn, a, b, d, grouped_layout, compiled_dims, use_psum_layout, expected_m, b_t,
                     **extra) -> None:
    lay_b = "[G, K, N]" if b_t else "[G, N, K]"
    hint = "cast it with .to(torch.bfloat16) (or call the fp8 op for FP8 inputs)"
    a = chk.tensor(op, "a", a, (torch.bfloat16,), 2, "[M_sum, K]", hint)
    b = chk.tensor(op, "b", b, (torch.bfloat16,), 3, lay_b, hint)
    d = chk.tensor(op, "d", d, (torch.bfloat16, torch.float32), 2, "[M_sum, N]")
    chk.same_device(op, "d", d, {"a": a, "b": b})
    m, k = a.shape
    g, n, k_b = _b_dims(op, b, b_t)
    gemm.same_k(op, k, k_b, f"a is [M_sum, K], b is {lay_b}")
    chk.shape(op, "d", d, (m, n), f"a [M_sum, K] with M_sum={m} and b {lay_b} with N={n}")
    chk.output_rows(op, "d", d)
    chk.unit_stride(op, "a", a)
    chk.unit_stride(op, "b", b)
    gemm.compiled_dims(op, compiled_dims)
    _layout(op, grouped_layout, d, m, g, use_psum_layout, expected_m)
    run_op(op, d.device, ref_fn, a, b, d, grouped_layout, compiled_dims, use_psum_layout, **extra,
           empty=d.numel() == 0)


def m_grouped_fp8_gemm_nt_contiguous(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, grouped_layout: torch.Tensor,
    recipe: Recipe | None = None, compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
    use_psum_layout: bool = False, expected_m_for_psum_layout: int | None = None,
) -> None:
    """Row r of group g: ``d[r] = a[r] @ b[g].T``; a ``[M_sum, K]``, b ``[G, N, K]``, d bf16 ``[M_sum, N]``;
    a[0], b[0] and d contiguous (the SM90 kernel's TMA reads and writes dense rows), on every device.

    ``expected_m_for_psum_layout`` (psum layout only) is a per-group row-count hint for the kernel
    heuristic. See the module docstring for scales and ``grouped_layout``.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.m_grouped_fp8_gemm_nt_contiguous(*a, *b, d, grouped_layout, recipe, compiled_dims,
                                                                disable_ue8m0_cast, use_psum_layout,
                                                                expected_m_for_psum_layout)
    op = "m_grouped_fp8_gemm_nt_contiguous"
    _fp8_contiguous(op, ref.m_grouped_fp8_gemm_nt_contiguous, a, b, d, grouped_layout, recipe, compiled_dims,
                    disable_ue8m0_cast, use_psum_layout, expected_m_for_psum_layout, False,
                    expected_m_for_psum_layout=expected_m_for_psum_layout)


def m_grouped_fp8_gemm_nt_contiguous_unchecked(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, grouped_layout: torch.Tensor, *, use_psum_layout: bool,
    expected_m_for_psum_layout: int | None = None,
) -> None:
    """:func:`m_grouped_fp8_gemm_nt_contiguous` with recipe (1, 128, 128), on arguments the caller has
    already validated to that op's rules (``fused_moe`` does): no check runs, layout values included."""
    run_op("m_grouped_fp8_gemm_nt_contiguous", d.device, ref.m_grouped_fp8_gemm_nt_contiguous, a, b, d,
           grouped_layout, RECIPE_1D2D, "nk", False, use_psum_layout,
           expected_m_for_psum_layout=expected_m_for_psum_layout, recipe=RECIPE_1D2D, empty=d.numel() == 0)


def m_grouped_fp8_gemm_nn_contiguous(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, grouped_layout: torch.Tensor,
    recipe: Recipe | None = None, compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
    use_psum_layout: bool = False,
) -> None:
    """Row r of group g: ``d[r] = a[r] @ b[g]``; b given (e4m3 ``[G, K, N]``, sfb
    ``[G, K/128, ceil(N/128)]``); otherwise as :func:`m_grouped_fp8_gemm_nt_contiguous`."""
    if is_compiling():
        return torch.ops.dg_moe.m_grouped_fp8_gemm_nn_contiguous(*a, *b, d, grouped_layout, recipe, compiled_dims,
                                                                disable_ue8m0_cast, use_psum_layout)
    op = "m_grouped_fp8_gemm_nn_contiguous"
    _fp8_contiguous(op, ref.m_grouped_fp8_gemm_nn_contiguous, a, b, d, grouped_layout, recipe, compiled_dims,
                    disable_ue8m0_cast, use_psum_layout, None, True)


def m_grouped_bf16_gemm_nt_contiguous(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, grouped_layout: torch.Tensor,
    compiled_dims: str = "nk", use_psum_layout: bool = False, expected_m_for_psum_layout: int | None = None,
) -> None:
    """BF16 ``d[r] = a[r] @ b[g].T``; a bf16 ``[M_sum, K]``, b bf16 ``[G, N, K]``, d bfloat16 or float32
    ``[M_sum, N]``; ``grouped_layout`` as for :func:`m_grouped_fp8_gemm_nt_contiguous`."""
    if is_compiling():
        return torch.ops.dg_moe.m_grouped_bf16_gemm_nt_contiguous(a, b, d, grouped_layout, compiled_dims,
                                                                 use_psum_layout, expected_m_for_psum_layout)
    op = "m_grouped_bf16_gemm_nt_contiguous"
    _bf16_contiguous(op, ref.m_grouped_bf16_gemm_nt_contiguous, a, b, d, grouped_layout, compiled_dims,
                     use_psum_layout, expected_m_for_psum_layout, False,
                     expected_m_for_psum_layout=expected_m_for_psum_layout)


def m_grouped_bf16_gemm_nt_contiguous_unchecked(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, grouped_layout: torch.Tensor, *, use_psum_layout: bool,
    expected_m_for_psum_layout: int | None = None,
) -> None:
    """:func:`m_grouped_bf16_gemm_nt_contiguous` on arguments the caller has already validated to that op's
    rules (``fused_moe_bf16`` does): no check runs, layout values included."""
    run_op("m_grouped_bf16_gemm_nt_contiguous", d.device, ref.m_grouped_bf16_gemm_nt_contiguous, a, b, d,
           grouped_layout, "nk", use_psum_layout, expected_m_for_psum_layout=expected_m_for_psum_layout,
           empty=d.numel() == 0)


def m_grouped_bf16_gemm_nn_contiguous(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, grouped_layout: torch.Tensor,
    compiled_dims: str = "nk", use_psum_layout: bool = False,
) -> None:
    """BF16 ``d[r] = a[r] @ b[g]``; b bf16 ``[G, K, N]``; otherwise as
    :func:`m_grouped_bf16_gemm_nt_contiguous`."""
    if is_compiling():
        return torch.ops.dg_moe.m_grouped_bf16_gemm_nn_contiguous(a, b, d, grouped_layout, compiled_dims,
                                                                 use_psum_layout)
    op = "m_grouped_bf16_gemm_nn_contiguous"
    _bf16_contiguous(op, ref.m_grouped_bf16_gemm_nn_contiguous, a, b, d, grouped_layout, compiled_dims,
                     use_psum_layout, None, True)
