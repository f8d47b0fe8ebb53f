"""Adapters from DeepEP's dispatch outputs to the grouped GEMM inputs, and back before combine.

deep_ep is never imported: the adapters take the tensors its dispatch returns, in its documented
formats.

- Normal dispatch (prefill) gives tokens grouped by source rank: ``recv_x`` (an e4m3 [R, H] plus
  float32 [R, H/128] pair, or bf16 [R, H]), ``recv_topk_idx`` [R, k] (local expert, -1 for other
  ranks' experts) and ``recv_topk_weights`` [R, k]. :func:`deepep_normal_to_contiguous` builds the
  contiguous layout from exact counts in ``recv_topk_idx``; :func:`deepep_normal_reduce` folds
  the second GEMM's output back to [R, H] for ``Buffer.combine``.
- Low-latency dispatch (decode) already gives the masked layout; :func:`deepep_low_latency_to_masked`
  checks it and hands the same tensors to the masked GEMM, copying nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.compiler import is_compiling

from .. import checks as chk
from ._permute import TokenRows, split_token_rows
from .math import ceil_div
from .routing_contiguous import ContiguousLayout, route_contiguous
from .scale_factors import TMA_ALIGNMENT_BYTES, get_tma_aligned_size
from .unpermute import reduce_contiguous


class MaskedGemmInput(NamedTuple):
    """``(a, sfa)`` and ``masked_m`` of ``m_grouped_fp8_gemm_nt_masked``, views of DeepEP's tensors.

    a: float8_e4m3fn [E, M, H]; sfa: float32 [E, M, H/128] or int32 packed UE8M0
    [E, M, ceil(H/512)], MN-major (stride 1 along M, TMA-aligned); masked_m: int32 [E].
    """

    a: torch.Tensor
    sfa: torch.Tensor
    masked_m: torch.Tensor


def deepep_normal_to_contiguous(
    recv_x: TokenRows, recv_topk_idx: torch.Tensor, num_local_experts: int, *, use_ue8m0: bool = False
) -> ContiguousLayout:
    """The contiguous layout of :func:`route_to_contiguous` from DeepEP's normal-dispatch outputs.

    recv_x: (e4m3 [R, H], float32 [R, H/128]) as dispatched with FP8, or bf16 [R, H] (quantised
        here, ``use_ue8m0`` rounding scales to powers of two); H a multiple of 128.
    recv_topk_idx: int64 (DeepEP's) or int32 [R, k], the local expert of each slot in
        [0, num_local_experts), -1 for slots routed to other ranks (ignored).
    Counts come from ``recv_topk_idx`` itself, so DeepEP's host-side
    ``num_recv_tokens_per_expert_list`` is not needed. The ``inverse`` map of the result goes to
    :func:`deepep_normal_reduce`.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        rows, scales = split_token_rows(recv_x)
        return ContiguousLayout(*torch.ops.dg_moe.deepep_normal_to_contiguous(rows, scales, recv_topk_idx,
                                                                               num_local_experts, use_ue8m0))
    return route_contiguous("deepep_normal_to_contiguous", recv_x, recv_topk_idx, num_local_experts, use_ue8m0,
                            names=("recv_x", "recv_topk_idx", "num_local_experts"))


def deepep_normal_reduce(y: torch.Tensor, inverse: torch.Tensor, recv_topk_weights: torch.Tensor) -> torch.Tensor:
    """Top-k weighted reduce of the expert outputs, per received token, before ``Buffer.combine``.

    y: bf16 [M_cap, H], the second GEMM's output over the layout of
    :func:`deepep_normal_to_contiguous`; inverse: that layout's int32 [R, k] map;
    recv_topk_weights: float32 [R, k]. Returns bfloat16 [R, H]: for each received token the sum, in
    slot order with FP32 accumulation, of its weight times its expert's row over the local slots
    (slots of other ranks are summed by the combine).
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.deepep_normal_reduce(y, inverse, recv_topk_weights)
    return reduce_contiguous("deepep_normal_reduce", y, inverse, recv_topk_weights, "recv_topk_weights")


def _check_ll_scales(fn: str, sf: torch.Tensor, num_experts: int, max_m: int, hidden: int) -> None:
    kb = hidden // chk.BLOCK_K
    cols = ceil_div(kb, 4) if sf.dtype == torch.int32 else kb
    what = "int32 packed UE8M0, four scales per int" if sf.dtype == torch.int32 else "float32"
    name = "packed_recv_x[1] (scales)"
    why = f"packed_recv_x[0] [E, M, H] = {(num_experts, max_m, hidden)} ({what})"
    chk.shape(fn, name, sf, (num_experts, max_m, cols), why)
    aligned = get_tma_aligned_size(max_m, sf.element_size())
    allocation = f"torch.empty({num_experts}, {cols}, {max_m}, dtype={sf.dtype}).transpose(1, 2)"
    if max_m > 1 and sf.stride(1) != 1:
        raise ValueError(
            f"{fn}: {name} must be MN-major (stride 1 along the token dim 1), got strides {sf.stride()}; DeepEP "
            f"allocates it as {allocation}. A row-major tensor must be converted (a copy) with "
            "get_mn_major_tma_aligned_tensor"
        )
    if cols > 1 and sf.stride(2) != aligned:
        raise ValueError(
            f"{fn}: {name} has stride {sf.stride(2)} between scale columns but the TMA needs "
            f"align(M, 4) = {aligned} (16-byte aligned columns, contiguous storage); M = num_ranks * "
            f"num_max_dispatch_tokens_per_rank = {max_m} must be a multiple of 4 for the no-copy path, or "
            "convert with get_mn_major_tma_aligned_tensor (a copy)"
        )
    if num_experts > 1 and sf.stride(0) != aligned * cols:
        raise ValueError(
            f"{fn}: {name} has expert stride {sf.stride(0)}, expected {aligned * cols} (the experts' scale "
            f"blocks packed back to back, as in {allocation})"
        )
    if sf.storage_offset() % (TMA_ALIGNMENT_BYTES // sf.element_size()) != 0:
        raise ValueError(
            f"{fn}: {name} starts {sf.storage_offset()} elements into its storage, not on a 16-byte boundary; "
            "pass the tensor DeepEP returned, not a slice of it"
        )


def deepep_low_latency_to_masked(
    packed_recv_x: tuple[torch.Tensor, torch.Tensor], packed_recv_count: torch.Tensor
) -> MaskedGemmInput:
    """Check DeepEP's low-latency dispatch outputs and return them as the masked GEMM's inputs, no copy.

    packed_recv_x: (e4m3 [E, M, H] with unit stride along H, scales) where M = num_ranks *
        num_max_dispatch_tokens_per_rank and the scales are float32 [E, M, H/128] allocated as
        ``torch.empty(E, H/128, M).transpose(1, 2)``, or with ``use_ue8m0`` int32 packed UE8M0
        [E, M, ceil(H/512)] with the same transpose; H a multiple of 128, M a multiple of 4 (so the
        scale columns are 16-byte aligned).
    packed_recv_count: int32 [E], tokens received per local expert (the masked GEMM's masked_m).
    Returns :class:`MaskedGemmInput` holding the given tensors themselves; raises ValueError or
    TypeError naming the argument and the fix when a layout does not fit.
    """
    fn = "deepep_low_latency_to_masked"
    if isinstance(packed_recv_x, torch.Tensor):
        raise TypeError(
            f"{fn}: packed_recv_x is a single {packed_recv_x.dtype} tensor; this adapter takes the FP8 "
            "dispatch output, an (e4m3 [E, M, H], scales) tuple (low_latency_dispatch(..., use_fp8=True)). "
            "BF16 dispatch output goes to m_grouped_bf16_gemm_nt_masked as it is"
        )
    if not isinstance(packed_recv_x, (tuple, list)) or len(packed_recv_x) != 2:
        raise TypeError(
            f"{fn}: packed_recv_x must be an (e4m3 tensor, scales) tuple, got {type(packed_recv_x).__name__}"
        )
    x = chk.tensor(fn, "packed_recv_x[0]", packed_recv_x[0], (chk.FP8,), 3, "[E, M, H]",
                   "dispatch with use_fp8=True")
    sf = chk.tensor(fn, "packed_recv_x[1] (scales)", packed_recv_x[1], (torch.float32, torch.int32), 3,
                    "[E, M, H/128] (float32) or [E, M, ceil(H/512)] (int32 packed UE8M0)")
    count = chk.tensor(fn, "packed_recv_count", packed_recv_count, (torch.int32,), 1, "[E]",
                       "convert it with .to(torch.int32)")
    num_experts, max_m, hidden = x.shape
    chk.k_aligned(fn, "packed_recv_x[0] has H", hidden)
    chk.same_device(fn, "packed_recv_x[0]", x, {"packed_recv_x[1] (scales)": sf, "packed_recv_count": count})
    if (x.stride(2) != 1 or x.stride(1) % TMA_ALIGNMENT_BYTES != 0 or x.stride(0) % TMA_ALIGNMENT_BYTES != 0
            or x.storage_offset() % TMA_ALIGNMENT_BYTES != 0):
        raise ValueError(
            f"{fn}: packed_recv_x[0] must have unit stride along H, 16-byte aligned row and expert strides and a "
            f"16-byte aligned start for the TMA, got strides {x.stride()} at storage offset {x.storage_offset()}; "
            "pass the contiguous tensor DeepEP returned"
        )
    _check_ll_scales(fn, sf, num_experts, max_m, hidden)
    chk.shape(fn, "packed_recv_count", count, (num_experts,), f"packed_recv_x[0] with E = {num_experts}")
    if not count.is_contiguous():
        raise ValueError(f"{fn}: packed_recv_count must be contiguous; call .contiguous() on it")
    return MaskedGemmInput(a=x, sfa=sf, masked_m=count)
