"""Argument checks shared by the ops. Each failure names the op, the argument, what was expected,
what was got and how to fix it.

Only metadata (type, dtype, shape, stride, device) is inspected, so the checks never synchronise
with a GPU; checks on values (group ids, layout prefix sums) live in ``_values`` and run on CPU only.
TypeError marks a wrong Python type or dtype, ValueError anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..layout._checks import _dtype_names, tensor
from ..layout.math import align, ceil_div
from ..reference.common import RECIPE_1D1D, RECIPE_1D2D, Recipe, default_recipe

FP8 = torch.float8_e4m3fn
SF_DTYPES = (torch.float32, torch.int32)
BLOCK_K = 128

_OUT_DTYPE_OF_RECIPE = {RECIPE_1D2D: torch.bfloat16, RECIPE_1D1D: torch.float32}


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def fp8_pair(op: str, name: str, x: object, ndim: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` is a ``(float8_e4m3fn tensor, scale factors)`` pair; returns the two tensors."""
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise TypeError(
            f"{op}: {name} must be a (tensor, scale_factors) tuple for FP8 ops, got {type(x).__name__}; "
            "quantise with dg_moe.per_token_cast_to_fp8 / per_block_cast_to_fp8"
        )
    data = tensor(op, f"{name}[0]", x[0], (FP8,), ndim, layout,
                  "quantise it to float8_e4m3fn first (or call the bf16_* op for BF16 inputs)")
    sf = tensor(op, f"{name}[1] (scale factors)", x[1], SF_DTYPES, ndim,
                "(float32 scales or int32 packed UE8M0)")
    return data, sf


def shape(op: str, name: str, t: torch.Tensor, expected: tuple[int, ...], why: str, after: str = "") -> None:
    """``t`` has exactly ``expected`` shape, which ``why`` explains (e.g. "a [M, K] and b [N, K]")."""
    if _shape(t) != tuple(expected):
        raise ValueError(f"{op}: {name} has shape {_shape(t)} but {why} needs {tuple(expected)}{after}")


def same_k(op: str, k_a: int, k_b: int, layout: str) -> None:
    """A and B agree on K."""
    if k_a != k_b:
        raise ValueError(f"{op}: a and b disagree on K: a gives K={k_a}, b gives K={k_b} ({layout})")


def same_device(op: str, d: torch.Tensor, named: dict[str, torch.Tensor | None]) -> None:
    """Every tensor in ``named`` lives on ``d``'s device."""
    for name, t in named.items():
        if t is not None and t.device != d.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but d is on {d.device}; move every tensor to one device"
            )


def inner_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    """The last dim of ``t`` is contiguous (stride 1), as the TMA store needs."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{op}: {name} must have a contiguous last dim (stride 1), got strides {t.stride()} for "
            f"shape {_shape(t)}; pass a row-major tensor (or a row slice of one)"
        )


def unit_stride(op: str, name: str, t: torch.Tensor) -> None:
    """One of the last two dims of operand ``t`` has stride 1 (K-major or MN-major), as TMA needs."""
    inner_ok = t.shape[-1] <= 1 or t.stride(-1) == 1
    outer_ok = t.shape[-2] <= 1 or t.stride(-2) == 1
    if not (inner_ok or outer_ok):
        raise ValueError(
            f"{op}: {name} must have stride 1 along one of its last two dims, got strides {t.stride()} "
            f"for shape {_shape(t)}; call .contiguous() on it"
        )


def k_aligned(op: str, k: int) -> None:
    """FP8 K is a multiple of the 128-wide scale block."""
    if k % BLOCK_K != 0:
        raise ValueError(
            f"{op}: K={k} is not a multiple of {BLOCK_K}; FP8 ops need K % {BLOCK_K} == 0 "
            f"(pad K to {align(k, BLOCK_K)} with zero values and their scale factors with ones)"
        )


def dtype_is(op: str, name: str, t: torch.Tensor, dtypes: Sequence[torch.dtype], why: str) -> None:
    """``t`` has one of ``dtypes`` (``why`` says which op variant needs them)."""
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be {_dtype_names(dtypes)} ({why}), got {_dtype_names([t.dtype])}")


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
        raise TypeError(
            f"{op}: recipe {resolved} writes a {_dtype_names([needed])} d, got d of dtype "
            f"{_dtype_names([d.dtype])}; "
            f"pass a {_dtype_names([needed])} d, or use the recipe of your output dtype "
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
    shape(op, name, t, expected, f"recipe {rec} with {dims}{note}", after)


def flag(op: str, name: str, value: object) -> None:
    """``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")


def compiled_dims(op: str, value: object) -> None:
    """``compiled_dims`` names distinct dims among m, n, k (e.g. "nk", "mn", "")."""
    if not isinstance(value, str) or not set(value) <= set("mnk") or len(set(value)) != len(value):
        raise ValueError(
            f"{op}: compiled_dims must be a string of distinct letters from 'mnk' (e.g. 'nk'), got {value!r}"
        )


def positive_int(op: str, name: str, value: object) -> None:
    """``value`` is an int > 0."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value}")


def int32_vector(op: str, name: str, t: object, length: int, length_doc: str,
                 d: torch.Tensor) -> torch.Tensor:
    """``t`` is a contiguous int32 vector of ``length`` elements on d's device."""
    t = tensor(op, name, t, (torch.int32,), 1, f"[{length_doc}]", "convert it with .to(torch.int32)")
    if t.shape[0] != length:
        raise ValueError(f"{op}: {name} has {t.shape[0]} elements but needs {length_doc} = {length}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous; call .contiguous() on it")
    same_device(op, d, {name: t})
    return t


def accumulator(op: str, c: object, d: torch.Tensor) -> torch.Tensor | None:
    """Optional ``c``: d's dtype and shape, contiguous last dim, same strides if it aliases d."""
    if c is None:
        return None
    c = tensor(op, "c", c, (d.dtype,), d.dim(), "(d's dtype)")
    shape(op, "c", c, _shape(d), "d")
    same_device(op, d, {"c": c})
    inner_contiguous(op, "c", c)
    if c.device.type != "meta" and c.data_ptr() == d.data_ptr() and c.stride() != d.stride():
        raise ValueError(
            f"{op}: c aliases d but has strides {c.stride()} instead of d's {d.stride()}; pass d itself as c"
        )
    return c
