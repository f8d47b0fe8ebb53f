"""Routing to the masked (decode) layout: a fixed ``[E, max_m, H]`` buffer plus a device count.

Shapes depend on (E, max_m, H) only and nothing is read on the host, so the op can be captured in
a CUDA graph. Overflow policy: an expert that receives more than ``max_m`` (token, slot) entries
keeps the first ``max_m`` of them in (token, slot) order and drops the rest. A dropped entry has
-1 in the inverse map, so it contributes nothing to the weighted reduce, and is counted in
``overflow[e]``; ``masked_m`` is clamped to ``max_m``. Nothing is written out of bounds.

Padding rows (at or past ``masked_m[e]``) are zero with scale 1.0 by default; ``zero_padding=False``
leaves them unwritten where the Triton kernels run, for callers that, like the masked GEMM, never read
them: at decode shapes the zero fill is most of the op's memory traffic.
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


class MaskedLayout(NamedTuple):
    """Inputs of ``m_grouped_fp8_gemm_nt_masked`` and the map back to the tokens.

    a: float8_e4m3fn [E, max_m, H] contiguous; rows at or past ``masked_m[e]`` are zero, or
        uninitialised memory when routed with ``zero_padding=False``. bfloat16 [E, max_m, H] for the
        BF16 layer's routing (``route_to_masked_unchecked(..., bf16=True)``), for
        ``m_grouped_bf16_gemm_nt_masked``.
    sfa: float32 [E, max_m, H/128], MN-major and TMA-aligned: strides ``(H/128 * A, 1, A)`` with
        ``A = align(max_m, 4)``; rows at or past ``masked_m[e]`` and the storage's alignment columns
        past ``max_m`` hold 1.0, or uninitialised memory when routed with ``zero_padding=False``. None
        for BF16 rows.
    masked_m: int32 [E], the rows of each expert, at most ``max_m``.
    inverse: int32 [T, k], ``e * max_m + r`` for the (token, slot) held in row r of expert e (a row
        of ``y.view(E * max_m, N)``), -1 where the expert is not local or the entry was dropped.
    overflow: int32 [E], entries dropped per expert (0 everywhere unless an expert received more
        than ``max_m``); check ``overflow.any()`` when convenient, it needs no synchronisation here.
    """

    a: torch.Tensor
    sfa: torch.Tensor | None
    masked_m: torch.Tensor
    inverse: torch.Tensor
    overflow: torch.Tensor


def route_to_masked(
    hidden: TokenRows, topk_ids: torch.Tensor, num_experts: int, max_m: int, *, use_ue8m0: bool = False,
    zero_padding: bool = True,
) -> MaskedLayout:
    """Scatter tokens into per-expert buffers of ``max_m`` rows, quantising BF16 input on the way.

    hidden: bf16 (or fp16/fp32) [T, H], quantised 1x128 exactly as ``per_token_cast_to_fp8``
        (``use_ue8m0`` rounds scales up to powers of two); or an FP8 pair (e4m3 [T, H],
        float32 [T, H/128] in any strides). H must be a multiple of 128.
    topk_ids: int32 or int64 [T, k], expert of each slot in [0, num_experts), -1 for an expert that
        is not local (ignored). Ids are range-checked on CPU; on CUDA an out-of-range id is treated
        as -1.
    max_m: rows per expert (> 0). Within an expert, rows follow increasing (token, slot) order;
        entries past ``max_m`` are dropped and counted in ``overflow`` (module docstring).
    zero_padding: True, rows at or past ``masked_m[e]`` come out zero with scale 1.0 (as do the scale
        storage's alignment columns). False, the Triton path leaves them, their scales and the alignment
        columns unwritten (uninitialised memory) and skips the sort-based ranking; for consumers that
        read only rows below ``masked_m``. The PyTorch path (CPU, or ``DG_MOE_LAYOUT_KERNELS=torch``)
        may still write them: their contents are unspecified either way.
    Returns a :class:`MaskedLayout`; ``masked_m``, ``inverse``, ``overflow`` and the rows below
    ``masked_m`` are the same whatever ``zero_padding``.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        rows, scales = split_token_rows(hidden)
        return MaskedLayout(*torch.ops.dg_moe.route_to_masked(rows, scales, topk_ids, num_experts, max_m, use_ue8m0,
                                                               zero_padding))
    return route_masked(hidden, topk_ids, num_experts, max_m, use_ue8m0, zero_padding)


def route_masked(hidden: object, topk_ids: object, num_experts: object, max_m: object, use_ue8m0: object,
                 zero_padding: object) -> MaskedLayout:
    """:func:`route_to_masked` itself, checks included, without the torch.compile branch."""
    fn = "route_to_masked"
    chk.positive_int(fn, "num_experts", num_experts)
    chk.positive_int(fn, "max_m", max_m)
    chk.flag(fn, "zero_padding", zero_padding)
    source = token_source(fn, "hidden", hidden, use_ue8m0)
    x = source.rows
    ids = topk_ids_of(fn, "topk_ids", topk_ids, x.shape[0], num_experts, "hidden", x)
    return _route(fn, source, ids, num_experts, max_m, zero_padding)


def route_to_masked_unchecked(fn: str, hidden: TokenRows, topk_ids: torch.Tensor, num_experts: int, max_m: int,
                              *, zero_padding: bool, bf16: bool = False) -> MaskedLayout:
    """:func:`route_to_masked` (``use_ue8m0=False``) on arguments the caller has already validated to its rules
    (``fused_moe`` does); only the buffer-size check runs, naming ``fn``. ``bf16``: hidden is bfloat16 [T, H]
    and its rows land unquantised (``a`` bfloat16, ``sfa`` None), for ``fused_moe_bf16``."""
    return _route(fn, unchecked_source(hidden, bf16), topk_ids, num_experts, max_m, zero_padding)


def _route(fn: str, source: TokenSource, ids: torch.Tensor, num_experts: int, max_m: int,
           zero_padding: bool) -> MaskedLayout:
    chk.fits_int32(fn, "num_experts * max_m", num_experts * max_m)
    if not zero_padding and _kernels.enabled(source.rows.device):
        return _route_unpadded(source, ids, num_experts, max_m)
    return _route_padded(source, ids, num_experts, max_m)


def _route_unpadded(source: TokenSource, ids: torch.Tensor, num_experts: int, max_m: int) -> MaskedLayout:
    # Two kernels, no padding written: the ranks straight from the ids, then each token read once and
    # written to its destinations.
    inverse, masked_m, overflow = _kernels.masked_route_index(ids, num_experts, max_m)
    a, sfa = place_token_rows(source, inverse, num_experts, max_m)
    return MaskedLayout(a=a, sfa=sfa, masked_m=masked_m, inverse=inverse, overflow=overflow)


def _route_padded(source: TokenSource, ids: torch.Tensor, num_experts: int, max_m: int) -> MaskedLayout:
    num_tokens, top_k = ids.shape
    num_rows = num_experts * max_m
    expert, rank, counts = expert_ranks(ids, num_experts)
    kept = (expert < num_experts) & (rank < max_m)
    # Entries not kept point one past the end, where rows_of_buffer drops them.
    dest = torch.where(kept, expert * max_m + rank, num_rows)
    token = torch.arange(expert.numel(), device=ids.device) // max(top_k, 1)
    row_token = rows_of_buffer(dest, token, num_rows).view(num_experts, max_m)
    masked_m = counts.clamp(max=max_m)
    a, sfa = scatter_token_rows(source, row_token)

    return MaskedLayout(
        a=a,
        sfa=sfa,
        masked_m=masked_m.int(),
        inverse=torch.where(kept, dest, -1).view(num_tokens, top_k).int(),
        overflow=(counts - masked_m).int(),
    )
