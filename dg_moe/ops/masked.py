"""M-grouped GEMMs over the masked (decode) layout: a fixed ``[G, max_m, K]`` buffer plus a device count.

- a: (e4m3 ``[G, max_m, K]``, sfa ``[G, max_m, K/128]``, sfa in any strides, e.g. DeepEP's MN-major
  ``empty(G, K/128, max_m).transpose(1, 2)``), b: (e4m3 ``[G, N, K]``, sfb
  ``[G, ceil(N/128), K/128]``); scales float32 or int32 packed UE8M0; recipe (1, 128, 128) only.
- d: bfloat16 ``[G, max_m, N]`` (the BF16 op: bfloat16 or float32); masked_m: int32 ``[G]`` contiguous on
  d's device.
- Strides: the FP8 op, which the SM90 kernel runs, takes contiguous a[0], b[0] and d (its TMA
  addresses dense rows), on every device so that code written on CPU meets the GPU's rule; the BF16
  op takes operands with stride 1 along either of their last two dims and a d with a contiguous last dim.

Rows at or past ``masked_m[g]`` are neither read nor written; a count above ``max_m`` is clamped to
``max_m`` and a negative one counts as 0. ``expected_m`` (int > 0) is a hint for the kernel
heuristic only. The call reads no device value, so it can be captured in a CUDA graph. It allocates
nothing when the FP8 scales are float32 in the kernel's layout (sfa MN-major and TMA-aligned, as the
routing ops, the activation and DeepEP's float32 dispatch give it; sfb contiguous); other scales (packed
UE8M0, e.g. DeepEP's ``use_ue8m0`` dispatch, or a row-major sfa) are converted into new buffers on every
call, a copy that capture takes into the graph's memory pool.
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


def _dims(op: str, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int, int]:
    g, max_m, k = a.shape
    g_b, n, k_b = b.shape
    if g != g_b:
        raise ValueError(
            f"{op}: a has {g} groups (shape {tuple(a.shape)}) but b has {g_b} (shape {tuple(b.shape)}); "
            "dim 0 of a, b, d and masked_m is the group"
        )
    if g == 0:
        raise ValueError(f"{op}: a and b hold no group; G must be >= 1")
    gemm.same_k(op, k, k_b, "a is [G, max_m, K], b is [G, N, K]")
    return g, max_m, n, k


def _common(op: str, d: torch.Tensor, a: torch.Tensor, b: torch.Tensor, masked_m: object, expected_m: object,
            compiled_dims: object) -> tuple[int, int, int, int]:
    # What both ops check; their stride rules differ (the FP8 op's is the kernel's), so each checks strides.
    g, max_m, n, k = _dims(op, a, b)
    why = f"a [G, max_m, K] with G={g}, max_m={max_m} and b [G, N, K] with N={n}"
    chk.shape(op, "d", d, (g, max_m, n), why)
    chk.int32_vector(op, "masked_m", masked_m, g, "G (groups)", "d", d)
    chk.positive_int(op, "expected_m", expected_m)
    gemm.compiled_dims(op, compiled_dims)
    return g, max_m, n, k


def m_grouped_fp8_gemm_nt_masked(
    a: FP8Operand, b: FP8Operand, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int,
    recipe: Recipe | None = None, compiled_dims: str = "nk", disable_ue8m0_cast: bool = False,
) -> None:
    """``d[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g].T``; a[0], b[0] and d contiguous (the SM90
    kernel's TMA reads and writes dense rows), on every device; shapes in the module docstring."""
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.m_grouped_fp8_gemm_nt_masked(*a, *b, d, masked_m, expected_m, recipe, compiled_dims,
                                                            disable_ue8m0_cast)
    _fp8_masked(a, b, d, masked_m, expected_m, recipe, compiled_dims, disable_ue8m0_cast)


def _fp8_masked(a: FP8Operand, b: FP8Operand, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int,
                recipe: Recipe | None, compiled_dims: str, disable_ue8m0_cast: bool) -> None:
    op = "m_grouped_fp8_gemm_nt_masked"
    signature = _memo.key(op, lambda: (a[0], a[1], b[0], b[1], d, masked_m),
                          (expected_m, recipe, compiled_dims, disable_ue8m0_cast))
    launch = _memo.plan(signature)
    if launch is not None and launch(a[0], a[1], b[0], b[1], d, masked_m):
        return
    rec = _memo.validated(signature, getattr(d, "device", None),
                          lambda: _check_fp8_masked(op, a, b, d, masked_m, expected_m, recipe, compiled_dims,
                                                    disable_ue8m0_cast))
    run_op(op, d.device, ref.m_grouped_fp8_gemm_nt_masked, a, b, d, masked_m, expected_m, rec, compiled_dims,
           disable_ue8m0_cast, recipe=rec, empty=d.numel() == 0, plan_key=signature)


def m_grouped_fp8_gemm_nt_masked_unchecked(a: FP8Operand, b: FP8Operand, d: torch.Tensor, masked_m: torch.Tensor,
                                           expected_m: int) -> None:
    """:func:`m_grouped_fp8_gemm_nt_masked` with recipe (1, 128, 128), on arguments the caller has already
    validated to that op's rules (``fused_moe`` does): no check runs."""
    run_op("m_grouped_fp8_gemm_nt_masked", d.device, ref.m_grouped_fp8_gemm_nt_masked, a, b, d, masked_m,
           expected_m, RECIPE_1D2D, "nk", False, recipe=RECIPE_1D2D, empty=d.numel() == 0)


def _check_fp8_masked(op, a, b, d, masked_m, expected_m, recipe, compiled_dims, disable_ue8m0_cast) -> Recipe:
    a_data, sfa = gemm.fp8_pair(op, "a", a, 3, "[G, max_m, K]")
    b_data, sfb = gemm.fp8_pair(op, "b", b, 3, "[G, N, K]")
    d = chk.tensor(op, "d", d, (torch.bfloat16,), 3, "[G, max_m, N]")
    chk.same_device(op, "d", d, {"a[0]": a_data, "a[1] (sfa)": sfa, "b[0]": b_data, "b[1] (sfb)": sfb})
    g, max_m, n, k = _common(op, d, a_data, b_data, masked_m, expected_m, compiled_dims)
    gemm.kernel_rows(op, a_data, b_data, d)
    chk.k_aligned(op, "K", k, allow_zero=True, pad="a and b along K")
    rec = gemm.recipe(op, recipe, d, (RECIPE_1D2D,))
    gemm.sf(op, "sfa (a[1])", sfa, (g,), max_m, k, 1, 128, rec, f"G={g}, max_m={max_m}, K={k}")
    gemm.sf(op, "sfb (b[1])", sfb, (g,), n, k, 128, 128, rec, f"G={g}, N={n}, K={k}")
    chk.flag(op, "disable_ue8m0_cast", disable_ue8m0_cast)
    return rec


def m_grouped_bf16_gemm_nt_masked(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int,
    compiled_dims: str = "nk",
) -> None:
    """BF16 ``d[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g].T``; a bf16 ``[G, max_m, K]``,
    b bf16 ``[G, N, K]``, d bfloat16 or float32 ``[G, max_m, N]``, masked_m int32 ``[G]``."""
    if is_compiling():
        return torch.ops.dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, expected_m, compiled_dims)
    _bf16_masked(a, b, d, masked_m, expected_m, compiled_dims)


def m_grouped_bf16_gemm_nt_masked_unchecked(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor,
                                            masked_m: torch.Tensor, expected_m: int) -> None:
    """:func:`m_grouped_bf16_gemm_nt_masked` on arguments the caller has already validated to that op's rules
    (``fused_moe_bf16`` does): no check runs."""
    run_op("m_grouped_bf16_gemm_nt_masked", d.device, ref.m_grouped_bf16_gemm_nt_masked, a, b, d, masked_m,
           expected_m, "nk", empty=d.numel() == 0)


def _bf16_masked(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int,
                 compiled_dims: str) -> None:
    op = "m_grouped_bf16_gemm_nt_masked"
    hint = "cast it with .to(torch.bfloat16) (or call the fp8 op for FP8 inputs)"
    a = chk.tensor(op, "a", a, (torch.bfloat16,), 3, "[G, max_m, K]", hint)
    b = chk.tensor(op, "b", b, (torch.bfloat16,), 3, "[G, N, K]", hint)
    d = chk.tensor(op, "d", d, (torch.bfloat16, torch.float32), 3, "[G, max_m, N]")
    chk.same_device(op, "d", d, {"a": a, "b": b})
    _common(op, d, a, b, masked_m, expected_m, compiled_dims)
    chk.output_rows(op, "d", d)
    chk.unit_stride(op, "a", a)
    chk.unit_stride(op, "b", b)
    run_op(op, d.device, ref.m_grouped_bf16_gemm_nt_masked, a, b, d, masked_m, expected_m, compiled_dims,
           empty=d.numel() == 0)
