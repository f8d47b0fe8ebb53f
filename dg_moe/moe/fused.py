"""``fused_moe``: one MoE layer's experts (routed, plus an optional shared one) on FP8 weights; and
``fused_moe_bf16``: the routed experts on BF16 weights, nothing quantised.

The routing itself (gate, top-k, softmax or sigmoid scores) stays with the caller, as in vLLM's
FusedMoE: the layer takes ``topk_ids`` and ``topk_weights``. Two layouts carry the routed tokens:

- "contiguous" (prefill): every expert's tokens in one buffer padded per expert to 128 rows;
  no entry is ever dropped.
- "masked" (decode): a fixed ``[E, max_m, H]`` buffer with per-expert counts on the device; every
  shape follows from (T, max_m), so the path can be captured in a CUDA graph.
- "auto": masked when ``T <= AUTO_MASKED_MAX_TOKENS``, contiguous above.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch.compiler import is_compiling

from ..layout import TokenRows
from ..layout.quant import per_token_cast_to_fp8_unchecked
from . import layer_checks
from ._gemms import DG_MOE_BF16_GEMMS, DG_MOE_GEMMS, GroupedGemms, Operand
from .contiguous import routed_experts_contiguous
from .masked import default_max_m, routed_experts_masked
from .shared import SharedExpert, shared_expert_forward

Mode = Literal["auto", "contiguous", "masked"]

AUTO_MASKED_MAX_TOKENS = 128
"""Largest batch "auto" runs through the masked layout.

The two layouts reserve rows from shapes alone: masked ``E * T`` (``max_m = T``), contiguous
``T*k + min(E, T*k) * 127`` (every segment may waste up to 127 padding rows). Masked is the smaller
up to ``T = 127 E / (E - k)``, which is at least 127 for every shape (DeepSeek-V3, E=256 k=8: 131;
E=8 k=2: 169), and 128 is also DeepEP's default low-latency batch per rank. The GPU benchmark
(``dg-moe bench moe``) is to confirm it against measured time.
"""


def select_mode(mode: Mode, num_tokens: int) -> Literal["contiguous", "masked"]:
    """The layout ``fused_moe`` (and ``fused_moe_bf16``) runs: ``mode`` itself, or for "auto" masked up to
    :data:`AUTO_MASKED_MAX_TOKENS` tokens and contiguous above."""
    if mode == "auto":
        return "masked" if num_tokens <= AUTO_MASKED_MAX_TOKENS else "contiguous"
    return mode


@overload
def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
              w2_scale: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, mode: Mode = ...,
              max_m: int | None = ..., routed_scaling_factor: float = ..., shared_expert: SharedExpert | None = ...,
              return_overflow: Literal[False] = ...) -> torch.Tensor: ...


@overload
def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
              w2_scale: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, mode: Mode = ...,
              max_m: int | None = ..., routed_scaling_factor: float = ..., shared_expert: SharedExpert | None = ...,
              return_overflow: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
              w2_scale: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *, mode: Mode = ...,
              max_m: int | None = ..., routed_scaling_factor: float = ..., shared_expert: SharedExpert | None = ...,
              return_overflow: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def fused_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    mode: Mode = "auto",
    max_m: int | None = None,
    routed_scaling_factor: float = 1.0,
    shared_expert: SharedExpert | None = None,
    return_overflow: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``out[t] = rsf * sum_s w[t, s] * expert_{ids[t, s]}(x[t]) + shared(x[t])`` in FP8.

    Each expert is ``(SiLU(x @ gate.T) * (x @ up.T)) @ down.T``. Tokens are quantised 1x128
    (``per_token_cast_to_fp8``), the intermediate activation likewise; GEMMs accumulate in FP32
    and write BF16; the top-k reduce accumulates in FP32 in slot order.

    hidden: bfloat16 [T, H], H a multiple of 128.
    w13: float8_e4m3fn [E, 2I, H], ``[gate | up]`` halves along 2I (vLLM's layout), I a multiple of
        128; w13_scale: float32 [E, 2I/128, H/128], one dequantisation scale per 128x128 block.
    w2: float8_e4m3fn [E, H, I]; w2_scale: float32 [E, H/128, I/128]. All four contiguous.
    topk_ids: int32/int64 [T, k], local expert ids in [0, E), -1 for a slot whose expert is not on
        this rank (skipped). On CPU the ids are range-checked; on CUDA an id outside [-1, E) counts
        as -1.
    topk_weights: bf16/fp16/fp32 [T, k], used as given (no renormalisation).
    mode: "contiguous", "masked" or "auto" (:func:`select_mode`, :data:`AUTO_MASKED_MAX_TOKENS`).
    max_m: rows per expert of the masked layout; ignored by the contiguous one. Default
        :func:`default_max_m` = T, which drops nothing when each token's experts are distinct (on
        CPU a repeated expert then raises; on CUDA it would be dropped and counted). A smaller
        ``max_m`` saves memory: an expert's entries past ``max_m`` are dropped, first come first
        kept in (token, slot) order, and counted in the overflow.
    routed_scaling_factor: multiplies the routed experts' sum (DeepSeek-V3: 2.5), not the shared
        expert; folded into the top-k weights in FP32.
    shared_expert: an FP8 expert applied to every token with weight 1 and added (see
        :class:`SharedExpert`); any other shared MLP is added by the caller.
    return_overflow: also return int32 [E] on the device, the entries dropped per expert (masked
        path; zeros for the contiguous one). ``overflow.any()`` is the flag; reading it synchronises,
        so check it when convenient.

    Returns bfloat16 [T, H] (and the overflow counts). Neither path reads a device value on the
    host. Output buffers are allocated per call.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        shared = (None,) * 4 if shared_expert is None else tuple(shared_expert)
        out, overflow = torch.ops.dg_moe.fused_moe(hidden, w13, w13_scale, w2, w2_scale, topk_ids, topk_weights, mode,
                                                   max_m, routed_scaling_factor, *shared)
        return (out, overflow) if return_overflow else out
    out, overflow = fused_moe_layer(hidden, w13, w13_scale, w2, w2_scale, topk_ids, topk_weights, mode, max_m,
                                    routed_scaling_factor, shared_expert)
    return _returned(out, overflow, return_overflow, w13.shape[0])


def counted_overflow(overflow: torch.Tensor | None, num_experts: int, device: torch.device) -> torch.Tensor:
    """int32 [E] on ``device``: the masked path's overflow counts, or zeros for the contiguous path (None)."""
    return torch.zeros(num_experts, dtype=torch.int32, device=device) if overflow is None else overflow


def _returned(out: torch.Tensor, overflow: torch.Tensor | None, return_overflow: bool,
              num_experts: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """What the public layers return: ``out``, or with ``return_overflow`` (out, :func:`counted_overflow`)."""
    return (out, counted_overflow(overflow, num_experts, out.device)) if return_overflow else out


def _routed_experts(fn: str, tokens: TokenRows, w13: Operand, w2: Operand, topk_ids: torch.Tensor,
                    topk_weights: torch.Tensor, num_tokens: int, mode: Mode, max_m: int | None,
                    routed_scaling_factor: float, gemms: GroupedGemms) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The routed experts on the layout ``mode`` selects, after the layer's checks: the output and the
    masked path's overflow counts (None on the contiguous path)."""
    weights = topk_weights if routed_scaling_factor == 1.0 else topk_weights.float() * routed_scaling_factor
    if select_mode(mode, num_tokens) == "masked":
        if max_m is None:
            layer_checks.distinct_experts(fn, topk_ids)
            max_m = default_max_m(num_tokens)
        return routed_experts_masked(tokens, w13, w2, topk_ids, weights, max_m, gemms)
    return routed_experts_contiguous(tokens, w13, w2, topk_ids, weights, gemms), None


def fused_moe_layer(hidden: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
                    w2_scale: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, mode: Mode,
                    max_m: int | None, routed_scaling_factor: float, shared_expert: SharedExpert | None,
                    gemms: GroupedGemms = DG_MOE_GEMMS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`fused_moe` itself, checks included, without the torch.compile branch: the output and the
    masked path's overflow counts (None on the contiguous path). ``gemms``: the routed experts' grouped
    GEMMs (``dg_moe.moe._gemms``; the benchmark's DeepGEMM layer peer passes DeepGEMM's), the shared
    expert's dense GEMMs stay dg_moe's."""
    fn = "fused_moe"
    dims = layer_checks.fused_moe_args(fn, hidden, w13, w13_scale, w2, w2_scale, topk_ids, topk_weights, mode, max_m,
                              routed_scaling_factor, shared_expert)
    # The routing kernels quantise each row where it lands; only the shared expert needs the FP8 copy of
    # every token, and then that one copy feeds the routing too. Its scales come MN-major, the layout the
    # shared expert's GEMM reads (the routing reads any strides), so no call converts them.
    tokens = hidden if shared_expert is None else per_token_cast_to_fp8_unchecked(hidden, mn_major_scales=True)
    out, overflow = _routed_experts(fn, tokens, (w13, w13_scale), (w2, w2_scale), topk_ids, topk_weights,
                                    dims.num_tokens, mode, max_m, routed_scaling_factor, gemms)
    if shared_expert is not None:
        out.add_(shared_expert_forward(tokens, shared_expert))
    return out, overflow


@overload
def fused_moe_bf16(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                   topk_weights: torch.Tensor, *, mode: Mode = ..., max_m: int | None = ...,
                   routed_scaling_factor: float = ..., return_overflow: Literal[False] = ...) -> torch.Tensor: ...


@overload
def fused_moe_bf16(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                   topk_weights: torch.Tensor, *, mode: Mode = ..., max_m: int | None = ...,
                   routed_scaling_factor: float = ..., return_overflow: Literal[True],
                   ) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def fused_moe_bf16(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                   topk_weights: torch.Tensor, *, mode: Mode = ..., max_m: int | None = ...,
                   routed_scaling_factor: float = ..., return_overflow: bool,
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def fused_moe_bf16(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    mode: Mode = "auto",
    max_m: int | None = None,
    routed_scaling_factor: float = 1.0,
    return_overflow: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``out[t] = rsf * sum_s w[t, s] * expert_{ids[t, s]}(x[t])`` on BF16 weights, nothing quantised.

    Each expert is ``(SiLU(x @ gate.T) * (x @ up.T)) @ down.T``, as in :func:`fused_moe`, with the
    same routing, layouts and overflow; only the arithmetic differs: token rows are copied into the
    layout as they are, the grouped BF16 GEMMs (``m_grouped_bf16_gemm_nt_contiguous`` / ``_masked``)
    accumulate in FP32 and write BF16, ``SiLU(gate) * up`` is computed in FP32 and rounded once to BF16,
    and the top-k reduce accumulates in FP32 in slot order. For BF16 checkpoints (Qwen3, Mixtral) that
    should run as trained rather than through an FP8 copy of their weights.

    hidden: bfloat16 [T, H], H a multiple of 128.
    w13: bfloat16 [E, 2I, H], ``[gate | up]`` halves along 2I (vLLM's layout), I a multiple of 128;
    w2: bfloat16 [E, H, I]. Both contiguous.
    topk_ids, topk_weights, mode, max_m, routed_scaling_factor, return_overflow: as :func:`fused_moe`
        (ids of -1 skipped; "auto" picks masked up to :data:`AUTO_MASKED_MAX_TOKENS` tokens; a masked
        expert keeps its first ``max_m`` entries and counts the rest in the overflow).
    There is no shared-expert argument: add a BF16 shared MLP's output to the result yourself.

    Returns bfloat16 [T, H] (and int32 [E] overflow counts on the device, zeros for the contiguous
    path). Neither path reads a device value on the host; the masked one can be captured in a CUDA
    graph for one (T, max_m) and replayed with new routing. Output buffers are allocated per call.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        out, overflow = torch.ops.dg_moe.fused_moe_bf16(hidden, w13, w2, topk_ids, topk_weights, mode, max_m,
                                                        routed_scaling_factor)
        return (out, overflow) if return_overflow else out
    out, overflow = fused_moe_bf16_layer(hidden, w13, w2, topk_ids, topk_weights, mode, max_m, routed_scaling_factor)
    return _returned(out, overflow, return_overflow, w13.shape[0])


def fused_moe_bf16_layer(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                         topk_weights: torch.Tensor, mode: Mode, max_m: int | None, routed_scaling_factor: float,
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`fused_moe_bf16` itself, checks included, without the torch.compile branch: the output and the
    masked path's overflow counts (None on the contiguous path)."""
    fn = "fused_moe_bf16"
    dims = layer_checks.fused_moe_bf16_args(fn, hidden, w13, w2, topk_ids, topk_weights, mode, max_m,
                                            routed_scaling_factor)
    return _routed_experts(fn, hidden, w13, w2, topk_ids, topk_weights, dims.num_tokens, mode, max_m,
                           routed_scaling_factor, DG_MOE_BF16_GEMMS)
