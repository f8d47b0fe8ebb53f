"""Argument checks of the MoE layout ops. Each failure names the op, the argument, what was
expected, what was got and how to fix it. TypeError marks a wrong Python type or dtype, ValueError
anything else.

Checks on metadata (dtype, shape, device) always run. Checks on values (expert ids, prefix sums,
row indices) read the tensor, so they run on CPU tensors only, as in ``dg_moe.ops``: on a GPU they
would synchronise with the host and break CUDA-graph capture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .math import align

FP8 = torch.float8_e4m3fn
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
BLOCK_K = 128


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(t).removeprefix("torch.") for t in dtypes)


def tensor(fn: str, name: str, t: object, dtypes: Sequence[torch.dtype], ndim: int, layout: str,
           hint: str = "") -> torch.Tensor:
    """``t`` is a tensor of one of ``dtypes`` with ``ndim`` dims (``layout`` documents them)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dtype not in dtypes:
        fix = f"; {hint}" if hint else ""
        raise TypeError(
            f"{fn}: {name} must have dtype {_dtype_names(dtypes)} {layout}, got {_dtype_names([t.dtype])}{fix}"
        )
    if t.dim() != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    return t


def shape(fn: str, name: str, t: torch.Tensor, expected: tuple[int, ...], why: str) -> None:
    """``t`` has exactly the ``expected`` shape, which ``why`` explains."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)} but {why} needs {tuple(expected)}")


def same_device(fn: str, anchor_name: str, anchor: torch.Tensor, named: dict[str, torch.Tensor]) -> None:
    """Every tensor in ``named`` lives on ``anchor``'s device."""
    for name, t in named.items():
        if t.device != anchor.device:
            raise ValueError(
                f"{fn}: {name} is on {t.device} but {anchor_name} is on {anchor.device}; "
                "move every tensor to one device"
            )


def positive_int(fn: str, name: str, value: object) -> int:
    """``value`` is a Python int > 0."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{fn}: {name} must be > 0, got {value}")
    return value


def flag(fn: str, name: str, value: object) -> bool:
    """``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")
    return value


def hidden_size(fn: str, name: str, h: int) -> None:
    """An FP8 operand's K (the hidden or intermediate size) is a positive multiple of 128."""
    if h <= 0 or h % BLOCK_K != 0:
        raise ValueError(
            f"{fn}: {name} has {h} columns, but the FP8 layouts need a positive multiple of {BLOCK_K} "
            f"(one scale per 128 columns); pad it to {max(align(h, BLOCK_K), BLOCK_K)} columns with zeros"
        )


def fits_int32(fn: str, what: str, value: int) -> None:
    """Row indices stored as int32 (grouped_layout, inverse map) cannot exceed 2**31 - 1."""
    if value >= 2**31:
        raise ValueError(f"{fn}: {what} = {value} does not fit the int32 row indices; split the batch")


def expert_ids(fn: str, name: str, ids: torch.Tensor, num_experts: int) -> None:
    """On CPU: every id is -1 (not local) or in ``[0, num_experts)``."""
    if ids.device.type != "cpu" or ids.numel() == 0:
        return
    bad = ((ids < -1) | (ids >= num_experts)).nonzero()
    if bad.numel() > 0:
        where = tuple(bad[0].tolist())
        raise ValueError(
            f"{fn}: {name}{list(where)} = {ids[where].item()} is not an expert id: ids must be in "
            f"[0, {num_experts}) (E = {num_experts} local experts) or -1 for an expert that is not local; "
            "map global ids to local ones first"
        )


def per_row_layout(fn: str, name: str, layout: torch.Tensor) -> None:
    """On CPU: a per-row grouped_layout holds expert ids (>= 0) or -1 for rows of no expert."""
    if layout.device.type != "cpu" or layout.numel() == 0:
        return
    bad = (layout < -1).nonzero()
    if bad.numel() > 0:
        row = bad[0, 0].item()
        raise ValueError(
            f"{fn}: {name}[{row}] = {layout[row].item()}; a per-row layout holds the expert of each row or -1 "
            "for padding (pass use_psum_layout=True for the prefix-sum form)"
        )


def row_indices(fn: str, name: str, rows: torch.Tensor, num_rows: int) -> None:
    """On CPU: every entry of an inverse map is -1 or a row of the ``num_rows``-row GEMM output."""
    if rows.device.type != "cpu" or rows.numel() == 0:
        return
    bad = ((rows < -1) | (rows >= num_rows)).nonzero()
    if bad.numel() > 0:
        where = tuple(bad[0].tolist())
        raise ValueError(
            f"{fn}: {name}{list(where)} = {rows[where].item()} is not a row of y ({num_rows} rows) nor -1; "
            "pass the inverse map returned by the routing op that built y's input"
        )
