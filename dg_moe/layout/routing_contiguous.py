"""Routing to the contiguous (prefill) layout: tokens permuted by expert into one padded buffer.

Each expert's rows form one segment padded to ``get_mk_alignment_for_contiguous_layout()`` (128)
rows; within a segment rows follow increasing (token, slot) order. The buffer size depends on
shapes only (:func:`get_contiguous_layout_capacity`), so routing never synchronises with the host.

Padding rows (between a segment's end and the next segment's start) and unused rows (past the last
end) are zero with scale 1.0 by default; ``zero_padding=False`` leaves them unwritten where the Triton
kernels run, for callers that, like the contiguous GEMM with the prefix-sum layout, read no result
from them: the index work is then three small kernels instead of a sort and a dozen scatters.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.compiler import is_compiling

from .. import checks as chk
from . import _kernels
from ._permute import (
    TokenRows,
    TokenSource,
    expert_ranks,
    place_token_rows,
    rows_of_buffer,
    scatter_token_rows,
    split_token_rows,
    token_source,
    topk_ids_of,
    unchecked_source,
)
from .grouped import get_mk_alignment_for_contiguous_layout
from .math import align


class ContiguousLayout(NamedTuple):
    """Inputs of ``m_grouped_fp8_gemm_nt_contiguous`` and the map back to the tokens.

    a: float8_e4m3fn [M_cap, H] contiguous; padding and unused rows are zero, or uninitialised memory
        when routed with ``zero_padding=False``. bfloat16 [M_cap, H] for the BF16 layer's routing
        (``route_to_contiguous_unchecked(..., bf16=True)``), for ``m_grouped_bf16_gemm_nt_contiguous``.
    sfa: float32 [M_cap, H/128], MN-major and TMA-aligned (strides ``(1, align(M_cap, 4))``);
        padding and unused rows, and the storage's alignment columns past M_cap, hold 1.0, or
        uninitialised memory when routed with ``zero_padding=False``. None for BF16 rows.
    grouped_layout: int32 [M_cap], the expert of each row, -1 on padding and unused rows (whatever
        ``zero_padding``).
    grouped_layout_psum: int32 [E], the exclusive end row of each expert's rows; expert g starts at
        ``align(grouped_layout_psum[g-1], 128)`` (0 for g = 0). Pass with ``use_psum_layout=True``.
    inverse: int32 [T, k], the row of ``a`` holding each (token, slot), -1 where the slot's expert
        is not local.
    """

    a: torch.Tensor
    sfa: torch.Tensor | None
    grouped_layout: torch.Tensor
    grouped_layout_psum: torch.Tensor
    inverse: torch.Tensor


def get_contiguous_layout_capacity(num_tokens: int, top_k: int, num_experts: int) -> int:
    """Rows of the contiguous buffer for ``num_tokens`` tokens routed to ``top_k`` of ``num_experts``.

    Each expert's segment is its count rounded up to the alignment (128), and at most
    ``min(E, T*k)`` experts receive entries, so the rows used never exceed
    ``align(T*k + min(E, T*k)*127, 128)`` whatever the routing: a bound from shapes alone, which
    lets the buffer be allocated without reading the routing on the host (and keeps one decode
    token over 256 experts at 128 rows, not 32,640).
    """
    fn = "get_contiguous_layout_capacity"
    for name, value in (("num_tokens", num_tokens), ("top_k", top_k)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{fn}: {name} must be a non-negative int, got {value!r}")
        if value < 0:
            raise ValueError(f"{fn}: {name} must be >= 0, got {value}")
    chk.positive_int(fn, "num_experts", num_experts)
    return _capacity(num_tokens, top_k, num_experts)


def _capacity(num_tokens: int, top_k: int, num_experts: int) -> int:
    alignment = get_mk_alignment_for_contiguous_layout()
    entries = num_tokens * top_k
    return align(entries + min(num_experts, entries) * (alignment - 1), alignment)


def route_to_contiguous(
    hidden: TokenRows, topk_ids: torch.Tensor, num_experts: int, *, use_ue8m0: bool = False,
    zero_padding: bool = True,
) -> ContiguousLayout:
    """Permute tokens into the contiguous layout, quantising BF16 input to FP8 on the way.

    hidden: bf16 (or fp16/fp32) [T, H], quantised 1x128 exactly as ``per_token_cast_to_fp8``
        (``use_ue8m0`` rounds scales up to powers of two); or an FP8 pair (e4m3 [T, H],
        float32 [T, H/128] in any strides). H must be a multiple of 128.
    topk_ids: int32 or int64 [T, k], expert of each slot in [0, num_experts), -1 for an expert that
        is not local (ignored). Ids are range-checked on CPU; on CUDA an out-of-range id is treated
        as -1.
    zero_padding: True, padding and unused rows of ``a`` come out zero and their scales 1.0 (as do the
        scale storage's alignment columns). False, the Triton path leaves them, their scales and the
        alignment columns unwritten (uninitialised memory) and skips the sort-based ranking; for
        consumers that read no result from rows outside the segments. The PyTorch path (CPU, or
        ``DG_MOE_LAYOUT_KERNELS=torch``) may still write them: their contents are unspecified either way.
    Returns a :class:`ContiguousLayout` with
    ``M_cap = get_contiguous_layout_capacity(T, k, num_experts)`` rows; experts without tokens
    have empty segments. ``grouped_layout``, ``grouped_layout_psum``, ``inverse`` and the rows that
    hold an entry are the same whatever ``zero_padding``.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        rows, scales = split_token_rows(hidden)
        return ContiguousLayout(*torch.ops.dg_moe.route_to_contiguous(rows, scales, topk_ids, num_experts, use_ue8m0,
                                                                       zero_padding))
    return route_contiguous("route_to_contiguous", hidden, topk_ids, num_experts, use_ue8m0,
                            zero_padding=zero_padding)


def route_contiguous(fn: str, hidden: object, topk_ids: object, num_experts: object, use_ue8m0: object,
                     names: tuple[str, str, str] = ("hidden", "topk_ids", "num_experts"), *,
                     zero_padding: object = True) -> ContiguousLayout:
    """:func:`route_to_contiguous` with the caller's argument ``names`` (hidden, ids, experts) in
    error messages: DeepEP's, for its adapter."""
    hidden_name, ids_name, experts_name = names
    chk.positive_int(fn, experts_name, num_experts)
    chk.flag(fn, "zero_padding", zero_padding)
    source = token_source(fn, hidden_name, hidden, use_ue8m0)
    x = source.rows
    ids = topk_ids_of(fn, ids_name, topk_ids, x.shape[0], num_experts, hidden_name, x)
    return _route(fn, source, ids, num_experts, zero_padding)


def route_to_contiguous_unchecked(fn: str, hidden: TokenRows, topk_ids: torch.Tensor, num_experts: int, *,
                                  zero_padding: bool, bf16: bool = False) -> ContiguousLayout:
    """:func:`route_to_contiguous` (``use_ue8m0=False``) on arguments the caller has already validated to its
    rules (``fused_moe`` does); only the buffer-size check runs, naming ``fn``. ``bf16``: hidden is bfloat16
    [T, H] and its rows land unquantised (``a`` bfloat16, ``sfa`` None), for ``fused_moe_bf16``."""
    return _route(fn, unchecked_source(hidden, bf16), topk_ids, num_experts, zero_padding)


def _route(fn: str, source: TokenSource, ids: torch.Tensor, num_experts: int, zero_padding: bool) -> ContiguousLayout:
    num_tokens, top_k = ids.shape
    m_cap = _capacity(num_tokens, top_k, num_experts)
    chk.fits_int32(fn, "the buffer rows get_contiguous_layout_capacity(T, k, E)", m_cap)
    if not zero_padding and _kernels.enabled(source.rows.device):
        return _route_unpadded(source, ids, num_experts, m_cap)
    return _route_padded(source, ids, num_experts, m_cap)


def _route_unpadded(source: TokenSource, ids: torch.Tensor, num_experts: int, m_cap: int) -> ContiguousLayout:
    # Four kernels, no padding written: counts per block of entries, their prefix and the segments, each
    # entry's row; then each token read once and written to its rows.
    grouped_layout, psum, inverse = _kernels.contiguous_route_index(ids, num_experts, m_cap)
    a, sfa = place_token_rows(source, inverse, 1, m_cap)
    return ContiguousLayout(a=a[0], sfa=None if sfa is None else sfa[0], grouped_layout=grouped_layout,
                            grouped_layout_psum=psum, inverse=inverse)


def _route_padded(source: TokenSource, ids: torch.Tensor, num_experts: int, m_cap: int) -> ContiguousLayout:
    num_tokens, top_k = ids.shape
    expert, rank, counts = expert_ranks(ids, num_experts)
    alignment = get_mk_alignment_for_contiguous_layout()
    padded = (counts + alignment - 1) // alignment * alignment
    starts = torch.cumsum(padded, 0) - padded
    routed = expert < num_experts
    # Entries not routed point one past the end, where rows_of_buffer drops them.
    dest = torch.where(routed, starts[expert.clamp(max=num_experts - 1)] + rank, m_cap)
    token = torch.arange(expert.numel(), device=ids.device) // max(top_k, 1)
    a, sfa = scatter_token_rows(source, rows_of_buffer(dest, token, m_cap).view(1, m_cap))

    return ContiguousLayout(
        a=a[0],
        sfa=None if sfa is None else sfa[0],
        grouped_layout=rows_of_buffer(dest, expert, m_cap).int(),
        grouped_layout_psum=(starts + counts).int(),
        inverse=torch.where(routed, dest, -1).view(num_tokens, top_k).int(),
    )
