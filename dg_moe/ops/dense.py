"""Dense GEMMs ``D = C + A @ B.T`` (FP8 with block scales, and BF16), in the four layouts nt/nn/tn/tt.

Layout suffix (BLAS-style, of ``D = op(A) @ op(B)``): first letter A, second B. A is given
``[M, K]`` for ``n`` and ``[K, M]`` for ``t``; B is given ``[K, N]`` for ``n`` and ``[N, K]`` for
``t``; a transposed operand's scale factors are transposed likewise. So ``fp8_gemm_nn(a, b, ...)``
computes the same as ``fp8_gemm_nt(a, (b[0].T, b[1].T), ...)``.

FP8 recipes (``recipe=None`` picks by d's dtype):

- (1, 128, 128): sfa float32 ``[M, K/128]`` (row-major or MN-major ``stride=(1, align(M, 4))``),
  sfb float32 ``[ceil(N/128), K/128]``, d bfloat16 ``[M, N]``;
- (1, 1, 128) (weight gradient): sfa ``[M, K/128]``, sfb ``[N, K/128]``, d float32 ``[M, N]``.

Scales may be int32 packed UE8M0 instead (4 K-block exponents per int: ``[.., ceil(K/128/4)]``).
K must be a multiple of 128. ``c`` (optional, d's dtype and shape) is added; d may alias c.

Strides: ``fp8_gemm_nt``, the layout the SM90 kernel runs, takes contiguous a[0], b[0] and d (its TMA
addresses dense rows), on every device so that code written on CPU meets the GPU's rule. The other
layouts take operands with stride 1 along either of their last two dims and a d (and c) with a
contiguous last dim, e.g. a row slice of a larger buffer.
"""

from __future__ import annotations

import torch
from torch.compiler import is_compiling

from .. import checks as chk
from .. import reference as ref
from ..reference.common import RECIPE_1D1D, RECIPE_1D2D, Recipe
from . import _memo
from . import gemm_checks as gemm
from .dispatch import no_products, run_op

FP8Operand = tuple[torch.Tensor, torch.Tensor]
_OUT_DTYPES = (torch.bfloat16, torch.float32)


def _mn_k(t: torch.Tensor, transposed: bool) -> tuple[int, int]:
    return (t.shape[1], t.shape[0]) if transposed else (t.shape[0], t.shape[1])


def _layouts(a_t: bool, b_t: bool) -> tuple[str, str]:
    return ("[K, M]" if a_t else "[M, K]"), ("[K, N]" if b_t else "[N, K]")


def _fp8_dense(op, ref_fn, a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast, a_t, b_t) -> None:
    aliased = (isinstance(c, torch.Tensor) and isinstance(d, torch.Tensor) and c.device.type != "meta"
               and c.data_ptr() == d.data_ptr())
    signature = _memo.key(op, lambda: (a[0], a[1], b[0], b[1], d, c),
                          (aliased, recipe, compiled_dims, disable_ue8m0_cast, a_t, b_t))
    launch = _memo.plan(signature)
    if launch is not None and launch(a[0], a[1], b[0], b[1], d, c):
        return
    rec, k = _memo.validated(signature, getattr(d, "device", None),
                             lambda: _check_fp8_dense(op, a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast,
                                                      a_t, b_t))
    run_op(op, d.device, ref_fn, a, b, d, c, rec, compiled_dims, disable_ue8m0_cast, recipe=rec,
           empty=d.numel() == 0, trivial=no_products(d, c) if k == 0 else None, plan_key=signature)


def _check_fp8_dense(op, a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast, a_t, b_t) -> tuple[Recipe, int]:
    lay_a, lay_b = _layouts(a_t, b_t)
    a_data, sfa = gemm.fp8_pair(op, "a", a, 2, lay_a)
    b_data, sfb = gemm.fp8_pair(op, "b", b, 2, lay_b)
    d = chk.tensor(op, "d", d, _OUT_DTYPES, 2, "[M, N]")
    chk.same_device(op, "d", d, {"a[0]": a_data, "a[1] (sfa)": sfa, "b[0]": b_data, "b[1] (sfb)": sfb})
    (m, k), (n, k_b) = _mn_k(a_data, a_t), _mn_k(b_data, b_t)
    gemm.same_k(op, k, k_b, f"a is {lay_a}, b is {lay_b}")
    chk.k_aligned(op, "K", k, allow_zero=True, pad="a and b along K")
    chk.shape(op, "d", d, (m, n), f"a {lay_a} with M={m} and b {lay_b} with N={n}")
    if a_t or b_t:
        chk.output_rows(op, "d", d)
        chk.unit_stride(op, "a[0]", a_data)
        chk.unit_stride(op, "b[0]", b_data)
    else:
        gemm.kernel_rows(op, a_data, b_data, d)
    rec = gemm.recipe(op, recipe, d, (RECIPE_1D2D, RECIPE_1D1D))
    gran_m, gran_n, gran_k = rec
    inferred = recipe is None
    gemm.sf(op, "sfa (a[1])", sfa, (), m, k, gran_m, gran_k, rec, f"M={m}, K={k}", a_t, inferred)
    gemm.sf(op, "sfb (b[1])", sfb, (), n, k, gran_n, gran_k, rec, f"N={n}, K={k}", b_t, inferred)
    gemm.accumulator(op, c, d)
    gemm.compiled_dims(op, compiled_dims)
    chk.flag(op, "disable_ue8m0_cast", disable_ue8m0_cast)
    return rec, k


def _bf16_dense(op, ref_fn, a, b, d, c, compiled_dims, a_t, b_t) -> None:
    lay_a, lay_b = _layouts(a_t, b_t)
    hint = "cast it with .to(torch.bfloat16) (or call the fp8_* op for FP8 inputs)"
    a = chk.tensor(op, "a", a, (torch.bfloat16,), 2, lay_a, hint)
    b = chk.tensor(op, "b", b, (torch.bfloat16,), 2, lay_b, hint)
    d = chk.tensor(op, "d", d, _OUT_DTYPES, 2, "[M, N]")
    chk.same_device(op, "d", d, {"a": a, "b": b})
    (m, k), (n, k_b) = _mn_k(a, a_t), _mn_k(b, b_t)
    gemm.same_k(op, k, k_b, f"a is {lay_a}, b is {lay_b}")
    chk.shape(op, "d", d, (m, n), f"a {lay_a} with M={m} and b {lay_b} with N={n}")
    chk.output_rows(op, "d", d)
    chk.unit_stride(op, "a", a)
    chk.unit_stride(op, "b", b)
    c = gemm.accumulator(op, c, d)
    gemm.compiled_dims(op, compiled_dims)
    run_op(op, d.device, ref_fn, a, b, d, c, compiled_dims, empty=d.numel() == 0,
           trivial=no_products(d, c) if k == 0 else None)


def fp8_gemm_nt(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "nk",
                disable_ue8m0_cast: bool = False) -> None:
    """``d = c + a @ b.T``; a (e4m3 ``[M, K]``, sfa), b (e4m3 ``[N, K]``, sfb), d ``[M, N]``; a[0], b[0]
    and d contiguous (the SM90 kernel's TMA reads and writes dense rows), on every device.

    See the module docstring for the recipes and scale-factor shapes.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.fp8_gemm_nt(*a, *b, d, c, recipe, compiled_dims, disable_ue8m0_cast)
    _fp8_dense("fp8_gemm_nt", ref.fp8_gemm_nt, a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast,
               False, False)


def fp8_gemm_nt_unchecked(a: FP8Operand, b: FP8Operand, d: torch.Tensor) -> None:
    """:func:`fp8_gemm_nt` with recipe (1, 128, 128) and no ``c``, on arguments the caller has already
    validated to that op's rules with K > 0 (``fused_moe`` does for its shared expert): no check runs."""
    run_op("fp8_gemm_nt", d.device, ref.fp8_gemm_nt, a, b, d, None, RECIPE_1D2D, "nk", False, recipe=RECIPE_1D2D,
           empty=d.numel() == 0)


def fp8_gemm_nn(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "nk",
                disable_ue8m0_cast: bool = False) -> None:
    """``d = c + a @ b``; a (e4m3 ``[M, K]``, sfa ``[M, K/128]``), b (e4m3 ``[K, N]``,
    sfb ``[K/128, ceil(N/128)]`` or ``[K/128, N]``), d ``[M, N]``."""
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.fp8_gemm_nn(*a, *b, d, c, recipe, compiled_dims, disable_ue8m0_cast)
    _fp8_dense("fp8_gemm_nn", ref.fp8_gemm_nn, a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast,
               False, True)


def fp8_gemm_tn(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "mn",
                disable_ue8m0_cast: bool = False) -> None:
    """``d = c + a.T @ b``; a (e4m3 ``[K, M]``, sfa ``[K/128, M]``), b (e4m3 ``[K, N]``,
    sfb ``[K/128, ceil(N/128)]`` or ``[K/128, N]``), d ``[M, N]``."""
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.fp8_gemm_tn(*a, *b, d, c, recipe, compiled_dims, disable_ue8m0_cast)
    _fp8_dense("fp8_gemm_tn", ref.fp8_gemm_tn, a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast,
               True, True)


def fp8_gemm_tt(a: FP8Operand, b: FP8Operand, d: torch.Tensor, c: torch.Tensor | None = None,
                recipe: Recipe | None = None, compiled_dims: str = "mn",
                disable_ue8m0_cast: bool = False) -> None:
    """``d = c + a.T @ b.T``; a (e4m3 ``[K, M]``, sfa ``[K/128, M]``), b (e4m3 ``[N, K]``, sfb as
    in nt), d ``[M, N]``."""
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.fp8_gemm_tt(*a, *b, d, c, recipe, compiled_dims, disable_ue8m0_cast)
    _fp8_dense("fp8_gemm_tt", ref.fp8_gemm_tt, a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast,
               True, False)


def bf16_gemm_nt(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "nk") -> None:
    """``d = c + a @ b.T``; a bfloat16 ``[M, K]``, b bfloat16 ``[N, K]``, d (and c) bfloat16 or
    float32 ``[M, N]``; d may alias c."""
    if is_compiling():
        return torch.ops.dg_moe.bf16_gemm_nt(a, b, d, c, compiled_dims)
    _bf16_dense("bf16_gemm_nt", ref.bf16_gemm_nt, a, b, d, c, compiled_dims, False, False)


def bf16_gemm_nn(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "nk") -> None:
    """``d = c + a @ b``; a bfloat16 ``[M, K]``, b bfloat16 ``[K, N]``, d bfloat16/float32 ``[M, N]``."""
    if is_compiling():
        return torch.ops.dg_moe.bf16_gemm_nn(a, b, d, c, compiled_dims)
    _bf16_dense("bf16_gemm_nn", ref.bf16_gemm_nn, a, b, d, c, compiled_dims, False, True)


def bf16_gemm_tn(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "mn") -> None:
    """``d = c + a.T @ b``; a bfloat16 ``[K, M]``, b bfloat16 ``[K, N]``, d bfloat16/float32 ``[M, N]``."""
    if is_compiling():
        return torch.ops.dg_moe.bf16_gemm_tn(a, b, d, c, compiled_dims)
    _bf16_dense("bf16_gemm_tn", ref.bf16_gemm_tn, a, b, d, c, compiled_dims, True, True)


def bf16_gemm_tt(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None = None,
                 compiled_dims: str = "mn") -> None:
    """``d = c + a.T @ b.T``; a bfloat16 ``[K, M]``, b bfloat16 ``[N, K]``, d bfloat16/float32 ``[M, N]``."""
    if is_compiling():
        return torch.ops.dg_moe.bf16_gemm_tt(a, b, d, c, compiled_dims)
    _bf16_dense("bf16_gemm_tt", ref.bf16_gemm_tt, a, b, d, c, compiled_dims, True, False)
