"""Argument checks of the GEMM ops alone, on top of the shared ones in :mod:`dg_moe.checks`: FP8
operand pairs, recipes, scale-factor shapes, the accumulator, the kernel's dense rows, and the
values of grouped layouts (read on CPU tensors only). Messages follow :mod:`dg_moe.checks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn.functional as F

from .. import checks as chk
from ..layout.math import align, ceil_div
from ..reference.common import MK_ALIGNMENT, RECIPE_1D1D, RECIPE_1D2D, Recipe, default_recipe

_OUT_DTYPE_OF_RECIPE = {RECIPE_1D2D: torch.bfloat16, RECIPE_1D1D: torch.float32}


def fp8_pair(op: str, name: str, x: object, ndim: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` is a ``(float8_e4m3fn tensor, scale factors)`` pair; returns the two tensors."""
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise TypeError(
            f"{op}: {name} must be a (tensor, scale_factors) tuple for FP8 ops, got {type(x).__name__}; "
            "quantise with dg_moe.per_token_cast_to_fp8 / per_block_cast_to_fp8"
        )
    data = chk.tensor(op, f"{name}[0]", x[0], (chk.FP8,), ndim, layout,
                      "quantise it to float8_e4m3fn first (or call the bf16_* op for BF16 inputs)")
    sf = chk.tensor(op, f"{name}[1] (scale factors)", x[1], chk.SF_DTYPES, ndim,
                    "(float32 scales or int32 packed UE8M0)")
    return data, sf


def kernel_rows(op: str, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor) -> None:
    """a[0], b[0] and d are contiguous: the SM90 kernel's TMA maps address rows back to back (row
    stride K for A and B, N for D). Checked on every device, so that code written on CPU meets it; on
    CUDA also N a multiple of 8 (16-byte rows of D), a rule the CPU reference does not need."""
    why = "the SM90 kernel's TMA reads rows of K elements back to back"
    chk.contiguous(op, "a[0]", a, why, "pass a[0].contiguous()")
    chk.contiguous(op, "b[0]", b, why, "pass b[0].contiguous()")
    chk.contiguous(op, "d", d, "the SM90 kernel's TMA writes rows of N elements back to back",
                   "pass d.contiguous() (a new buffer: copy the result into the original afterwards)")
    n = d.shape[-1]
    if d.device.type == "cuda" and n % 8 != 0:
        # The kernel's 16-byte row stores and the TMA's 16-byte row stride; nvcc would reject the
        # variant (a static_assert) only after compiling it. The CPU reference takes any N.
        raise ValueError(
            f"{op}: N = {n} is not a multiple of 8, which the SM90 kernel needs on CUDA (it writes d in "
            f"16-byte rows of 8 bfloat16); pad b and d along N to {align(n, 8)}"
        )


def dtype_is(op: str, name: str, t: torch.Tensor, dtypes: Sequence[torch.dtype], why: str) -> None:
    """``t`` (a tensor already checked) has one of ``dtypes``; ``why`` says which op variant needs them."""
    if t.dtype not in dtypes:
        names = chk.dtype_names
        raise TypeError(f"{op}: {name} must be {names(dtypes)} ({why}), got {names([t.dtype])}")


def same_k(op: str, k_a: int, k_b: int, layout: str) -> None:
    """A and B agree on K."""
    if k_a != k_b:
        raise ValueError(f"{op}: a and b disagree on K: a gives K={k_a}, b gives K={k_b} ({layout})")


def recipe(op: str, value: object, d: torch.Tensor, allowed: Sequence[Recipe]) -> Recipe:
    """Resolve ``recipe`` (None: from d's dtype) and check it is supported and matches d's dtype."""
    if value is None:
        resolved = default_recipe(d.dtype)
    else:
        if (not isinstance(value, (tuple, list)) or len(value) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise TypeError(
                f"{op}: recipe must be a tuple of three ints (gran_m, gran_n, gran_k), got {value!r}"
            )
        resolved = tuple(value)
    if resolved not in allowed:
        raise ValueError(
            f"{op}: recipe {resolved} is not supported on SM90; supported: {', '.join(map(str, allowed))}"
        )
    needed = _OUT_DTYPE_OF_RECIPE[resolved]
    if d.dtype != needed:
        names = chk.dtype_names
        raise TypeError(
            f"{op}: recipe {resolved} writes a {names([needed])} d, got d of dtype {names([d.dtype])}; "
            f"pass a {names([needed])} d, or use the recipe of your output dtype "
            f"({RECIPE_1D2D} for bfloat16, {RECIPE_1D1D} for float32)"
        )
    return resolved


def sf(op: str, name: str, t: torch.Tensor, lead: tuple[int, ...], mn: int, k: int, gran_mn: int,
       gran_k: int, rec: Recipe, dims: str, transposed: bool = False, inferred: bool = False) -> None:
    """Scale-factor shape for ``rec``: ``lead + [ceil(mn/gran_mn), ceil(k/gran_k)]`` for float32,
    the K-block dim packed four per int for int32 (UE8M0); last two dims swapped if ``transposed``.
    ``inferred``: the recipe came from d's dtype, which the message then says."""
    kb = ceil_div(k, gran_k)
    packed = t.dtype == torch.int32
    expected = (*lead, ceil_div(mn, gran_mn), ceil_div(kb, 4) if packed else kb)
    note = " (int32 packed UE8M0: 4 K-block scales per int)" if packed else ""
    if transposed:
        expected = (*expected[:-2], expected[-1], expected[-2])
        note += " (given transposed, K blocks first, for this layout)"
    after = "; the recipe was inferred from d's dtype, pass recipe= to choose another" if inferred else ""
    chk.shape(op, name, t, expected, f"recipe {rec} with {dims}{note}", after)


def compiled_dims(op: str, value: object) -> None:
    """``compiled_dims`` names distinct dims among m, n, k (e.g. "nk", "mn", "")."""
    if not isinstance(value, str) or not set(value) <= set("mnk") or len(set(value)) != len(value):
        raise ValueError(
            f"{op}: compiled_dims must be a string of distinct letters from 'mnk' (e.g. 'nk'), got {value!r}"
        )


def accumulator(op: str, c: object, d: torch.Tensor) -> torch.Tensor | None:
    """Optional ``c``: d's dtype and shape, contiguous last dim, same strides if it aliases d."""
    if c is None:
        return None
    c = chk.tensor(op, "c", c, (d.dtype,), d.dim(), "(d's dtype)")
    chk.shape(op, "c", c, tuple(d.shape), "d")
    chk.same_device(op, "d", d, {"c": c})
    chk.inner_contiguous(op, "c", c)
    # Empty tensors share no memory, though their data pointers may compare equal (both null).
    if c.device.type != "meta" and c.numel() > 0 and c.data_ptr() == d.data_ptr() and c.stride() != d.stride():
        raise ValueError(
            f"{op}: c aliases d but has strides {c.stride()} instead of d's {d.stride()}; pass d itself as c"
        )
    return c


def per_row_tiles(op: str, grouped_layout: torch.Tensor, num_groups: int) -> None:
    """On CPU: per-row group ids in ``[-1, num_groups)``, and every 128-row tile holding one group's rows
    first and padding (-1) after them, as the kernel reads a tile's group from its first row."""
    if grouped_layout.device.type != "cpu":
        return
    chk.group_ids(op, "grouped_layout", grouped_layout, num_groups)
    m = grouped_layout.shape[0]
    tiles = F.pad(grouped_layout, (0, align(m, MK_ALIGNMENT) - m), value=-1).view(-1, MK_ALIGNMENT)
    valid = tiles >= 0
    lo = torch.where(valid, tiles, num_groups).amin(dim=1)
    hi = torch.where(valid, tiles, -1).amax(dim=1)
    mixed = valid.any(dim=1) & (lo != hi)
    late = (valid[:, 1:] & ~valid[:, :-1]).any(dim=1)
    broken = (mixed | late).nonzero()
    if broken.numel() > 0:
        tile = broken[0, 0].item()
        first = tile * MK_ALIGNMENT
        ids = sorted(set(tiles[tile].tolist()))
        raise ValueError(
            f"{op}: grouped_layout rows {first}..{first + MK_ALIGNMENT - 1} hold ids {ids}; each "
            f"{MK_ALIGNMENT}-row tile must hold one group's rows first and padding (-1) after them: pad each "
            f"group's segment to a multiple of {MK_ALIGNMENT} rows"
        )


def k_grouped_layout(op: str, grouped_layout: torch.Tensor, ks: Sequence[int], use_psum_layout: bool) -> None:
    """On CPU: the device layout matches ``ks_cpu``, the K sizes themselves or their running sums for psum."""
    if grouped_layout.device.type != "cpu":
        return
    expected = list(accumulate(ks)) if use_psum_layout else list(ks)
    for g, (got, want) in enumerate(zip(grouped_layout.tolist(), expected, strict=True)):
        if got != want:
            what = "the running sum of ks_cpu (use_psum_layout=True)" if use_psum_layout else "ks_cpu"
            raise ValueError(
                f"{op}: grouped_layout[{g}] = {got} but must equal {what}: {want}; "
                "ks_cpu and grouped_layout describe the same groups"
            )
