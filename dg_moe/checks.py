"""Argument checks shared by the GEMM ops (``dg_moe.ops``), the MoE layouts (``dg_moe.layout``) and
the MoE layer (``dg_moe.moe``). Each failure names the function, the argument, what was expected,
what was got and how to fix it; TypeError marks a wrong Python type or dtype, ValueError anything else.

Checks on metadata (type, dtype, shape, strides, device) never synchronise with a GPU. Checks on
values (expert ids, group ids, prefix sums, row indices) read the tensor, so they run on CPU tensors
only: on a GPU they would synchronise with the host and break CUDA-graph capture, and there a broken
value is undefined behaviour (the kernels trust it).

Along one call each constraint is checked once: a public function checks its own arguments, then
hands what is valid by construction to the ``*_unchecked`` cores of the ops it calls (``fused_moe``
to the layout ops, quantiser and GEMMs), and a GEMM op's checks state its kernel's rules, so the
launcher checks nothing again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layout.grouped import MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT, psum_bounds
from .layout.math import align

FP8 = torch.float8_e4m3fn
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
SF_DTYPES = (torch.float32, torch.int32)
BLOCK_K = 128
"""Elements along K that one FP8 scale covers, in every recipe."""


def dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    """``"bfloat16 or float32"`` for ``(torch.bfloat16, torch.float32)``."""
    return " or ".join(str(t).removeprefix("torch.") for t in dtypes)


def tensor(fn: str, name: str, t: object, dtypes: Sequence[torch.dtype], ndim: int, layout: str,
           hint: str = "") -> torch.Tensor:
    """``t`` is a tensor of one of ``dtypes`` with ``ndim`` dims (``layout`` documents them, e.g.
    ``"[T, H]"``); ``hint`` is the fix for a wrong dtype. Returns ``t``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dtype not in dtypes:
        fix = f"; {hint}" if hint else ""
        raise TypeError(
            f"{fn}: {name} must have dtype {dtype_names(dtypes)} {layout}, got {dtype_names([t.dtype])}{fix}"
        )
    if t.dim() != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    return t


def shape(fn: str, name: str, t: torch.Tensor, expected: tuple[int, ...], why: str, after: str = "") -> None:
    """``t`` has exactly the ``expected`` shape, which ``why`` explains (e.g. "a [M, K] and b [N, K]");
    ``after`` ends the message."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)} but {why} needs {tuple(expected)}{after}")


def same_device(fn: str, anchor_name: str, anchor: torch.Tensor, named: dict[str, torch.Tensor | None]) -> None:
    """Every tensor in ``named`` (None entries skipped) lives on ``anchor``'s device."""
    for name, t in named.items():
        if t is not None and t.device != anchor.device:
            raise ValueError(
                f"{fn}: {name} is on {t.device} but {anchor_name} is on {anchor.device}; "
                "move every tensor to one device"
            )


def _dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def contiguous(fn: str, name: str, t: torch.Tensor, why: str, fix: str = "call .contiguous() on it") -> None:
    """``t`` is contiguous: dense rows, as the TMA and the kernels address it (``why`` says who)."""
    if not t.is_contiguous():
        raise ValueError(
            f"{fn}: {name} must be contiguous ({why}), got strides {t.stride()} for shape {tuple(t.shape)} "
            f"instead of {_dense_strides(t)}; {fix}"
        )


def inner_contiguous(fn: str, name: str, t: torch.Tensor) -> None:
    """The last dim of ``t`` is contiguous (stride 1), rows may be strided (a row slice of a larger buffer)."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{fn}: {name} must have a contiguous last dim (stride 1), got strides {t.stride()} for "
            f"shape {tuple(t.shape)}; pass a row-major tensor (or a row slice of one)"
        )


def output_rows(fn: str, name: str, t: torch.Tensor) -> None:
    """Output ``t`` has a contiguous last dim (rows may be strided, e.g. a row slice of a larger buffer)
    and no two of its elements share memory: an expanded (stride 0) or self-overlapping view would have
    rows overwrite each other, leaving a result that depends on the write order."""
    inner_contiguous(fn, name, t)
    reach = 0  # the largest offset reached by the dims of smaller stride; a larger stride must pass it
    for stride, size in sorted((t.stride(i), t.shape[i]) for i in range(t.dim()) if t.shape[i] > 1):
        if stride <= reach:
            raise ValueError(
                f"{fn}: {name} has strides {t.stride()} for shape {tuple(t.shape)}, so some of its elements "
                "share memory; pass an output whose rows do not overlap (e.g. a new torch.empty of its shape)"
            )
        reach += (size - 1) * stride


def unit_stride(fn: str, name: str, t: torch.Tensor) -> None:
    """One of the last two dims of operand ``t`` has stride 1 (K-major or MN-major)."""
    inner_ok = t.shape[-1] <= 1 or t.stride(-1) == 1
    outer_ok = t.shape[-2] <= 1 or t.stride(-2) == 1
    if not (inner_ok or outer_ok):
        raise ValueError(
            f"{fn}: {name} must have stride 1 along one of its last two dims, got strides {t.stride()} "
            f"for shape {tuple(t.shape)}; call .contiguous() on it"
        )


def positive_int(fn: str, name: str, value: object) -> int:
    """``value`` is a Python int > 0; returns it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{fn}: {name} must be > 0, got {value}")
    return value


def flag(fn: str, name: str, value: object) -> bool:
    """``value`` is a bool; returns it."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")
    return value


def k_aligned(fn: str, what: str, k: int, *, allow_zero: bool = False, pad: str = "it") -> None:
    """An FP8 K (of a GEMM, or the hidden or intermediate size a layout quantises) is a multiple of the
    128-wide scale block, and positive unless ``allow_zero`` (a GEMM with K = 0 writes c or zeros).
    ``what`` names it (e.g. "K", "hidden has H"), ``pad`` what the fix pads."""
    if k % BLOCK_K == 0 and (k > 0 or allow_zero):
        return
    multiple = "a multiple" if allow_zero else "a positive multiple"
    raise ValueError(
        f"{fn}: {what} = {k}, not {multiple} of {BLOCK_K} (FP8 takes one scale per {BLOCK_K} elements "
        f"along K); pad {pad} to {max(align(k, BLOCK_K), BLOCK_K)} with zeros"
    )


def gate_up(fn: str, name: str, two_i: int, layout: str) -> int:
    """``two_i`` rows or columns of ``name`` hold ``[gate | up]`` halves of I each, I an FP8 K (a
    positive multiple of 128); returns I."""
    if two_i % 2 != 0:
        raise ValueError(
            f"{fn}: {name} {layout} has 2I = {two_i} [gate | up] rows or columns; the count must be even"
        )
    k_aligned(fn, f"{name} {layout} has 2I = {two_i} [gate | up], so I", two_i // 2, pad="each half")
    return two_i // 2


def fits_int32(fn: str, what: str, value: int) -> None:
    """Row indices stored as int32 (grouped_layout, inverse map) cannot exceed 2**31 - 1."""
    if value >= 2**31:
        raise ValueError(f"{fn}: {what} = {value} does not fit the int32 row indices; split the batch")


def int32_vector(fn: str, name: str, t: object, length: int, length_doc: str, anchor_name: str,
                 anchor: torch.Tensor) -> torch.Tensor:
    """``t`` is a contiguous int32 vector of ``length`` elements on ``anchor``'s device; returns it."""
    t = tensor(fn, name, t, (torch.int32,), 1, f"[{length_doc}]", "convert it with .to(torch.int32)")
    if t.shape[0] != length:
        raise ValueError(f"{fn}: {name} has {t.shape[0]} elements but needs {length_doc} = {length}")
    if not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous; call .contiguous() on it")
    same_device(fn, anchor_name, anchor, {name: t})
    return t


# ---- values, read on CPU tensors only (module docstring) ----------------------------------------------


def _first_outside(t: torch.Tensor, upper: int | None) -> tuple[int, ...] | None:
    # Index of the first entry below -1 or (with an upper bound) at or above it; None when all fit.
    if t.device.type != "cpu" or t.numel() == 0:
        return None
    outside = t < -1 if upper is None else (t < -1) | (t >= upper)
    bad = outside.nonzero()
    return tuple(bad[0].tolist()) if bad.numel() > 0 else None


def expert_ids(fn: str, name: str, ids: torch.Tensor, num_experts: int) -> None:
    """On CPU: every id is -1 (expert not local) or in ``[0, num_experts)``."""
    where = _first_outside(ids, num_experts)
    if where is not None:
        raise ValueError(
            f"{fn}: {name}{list(where)} = {ids[where].item()} is not an expert id: ids must be in "
            f"[0, {num_experts}) (E = {num_experts} local experts) or -1 for an expert that is not local; "
            "map global ids to local ones first"
        )


def row_indices(fn: str, name: str, rows: torch.Tensor, num_rows: int) -> None:
    """On CPU: every entry of an inverse map is -1 or a row of the ``num_rows``-row GEMM output."""
    where = _first_outside(rows, num_rows)
    if where is not None:
        raise ValueError(
            f"{fn}: {name}{list(where)} = {rows[where].item()} is not a row of y ({num_rows} rows) nor -1; "
            "pass the inverse map returned by the routing op that built y's input"
        )


def group_ids(fn: str, name: str, layout: torch.Tensor, num_groups: int | None) -> None:
    """On CPU: a per-row grouped_layout holds each row's group, in ``[0, num_groups)`` when that is
    known, or -1 for a padding row."""
    where = _first_outside(layout, num_groups)
    if where is not None:
        groups = "a group" if num_groups is None else f"a group in [0, {num_groups})"
        raise ValueError(
            f"{fn}: {name}[{where[0]}] = {layout[where].item()} is not a group id: a per-row layout holds "
            f"{groups} per row or -1 for padding (use_psum_layout=True takes the prefix-sum ends instead)"
        )


def psum_ends(fn: str, name: str, ends: torch.Tensor, num_rows: int, rows_doc: str) -> None:
    """On CPU: prefix-sum ends (``use_psum_layout=True``) are non-decreasing, at most ``num_rows`` (the
    rows ``rows_doc`` names), and never inside the alignment gap between a group's aligned start and
    the previous group's end."""
    if ends.device.type != "cpu" or ends.numel() == 0:
        return
    prev, start, end = psum_bounds(ends)
    bad = ((end < prev) | ((end > prev) & (end < start)) | (end > num_rows)).nonzero()
    if bad.numel() == 0:
        return
    g = bad[0, 0].item()
    e, p, s = end[g].item(), prev[g].item(), start[g].item()
    if e < p:
        raise ValueError(
            f"{fn}: {name}[{g}] = {e} is below the previous end {p}; with use_psum_layout=True it holds each "
            "group's exclusive end row, non-decreasing and >= 0"
        )
    if e < s:
        raise ValueError(
            f"{fn}: {name}[{g}] = {e} falls in the alignment gap {p}..{s - 1}: group {g} starts at "
            f"align({p}, {MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT}) = {s}, so its end must be {p} (empty) or >= {s}"
        )
    raise ValueError(f"{fn}: {name}[{g}] = {e} exceeds {rows_doc}")
