"""Argument checks of the fused MoE layer alone, on top of the shared ones in :mod:`dg_moe.checks`
(whose rules they follow: values such as expert ids are read on CPU tensors only).

``fused_moe`` checks every argument here once, then runs the unchecked cores of the layout ops and
GEMMs it calls: what it hands them is valid by construction.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import checks as chk
from .shared import SharedExpert

MODES = ("auto", "contiguous", "masked")
_QUANTISE_HINT = "quantise it per 128x128 block with dg_moe.per_block_cast_to_fp8 (or build FusedMoE.from_bf16)"
_SCALE_HINT = "pass the float32 dequantisation scales (expand packed UE8M0 with unpack_ue8m0_from_int)"
_IN_PLACE = "the expert GEMMs read weights and scales in place; a copy per call would cost a weight read"
_ONCE = "call .contiguous() on it once, when loading the weights"
_BF16_HINT = "cast it once with .to(torch.bfloat16) when loading the weights (or call fused_moe for FP8 weights)"


class MoEDims(NamedTuple):
    """Sizes of one validated call that pick its buffers: T tokens and E local experts."""

    num_tokens: int
    num_experts: int


def _w13_w2(fn: str, w13: object, w2: object, hidden: int, dtype: torch.dtype, hint: str,
            same_experts: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """w13 [E, 2I, H] and w2 [E, H, I] of ``dtype`` against each other and hidden's H; returns them and I."""
    w13 = chk.tensor(fn, "w13", w13, (dtype,), 3, "[E, 2I, H]", hint)
    num_experts, two_i, h = w13.shape
    if h != hidden:
        raise ValueError(
            f"{fn}: w13 has H = {h} columns (shape {tuple(w13.shape)}) but hidden has H = {hidden}; "
            "w13 is [E, 2I, H] with [gate | up] along 2I (vLLM's layout)"
        )
    if num_experts == 0:
        raise ValueError(f"{fn}: w13 holds no expert (shape {tuple(w13.shape)}); E must be >= 1")
    # I a multiple of 128 in both precisions: the GEMMs' K blocks and the activation's 128-column blocks.
    inter = chk.gate_up(fn, "w13", two_i, "[E, 2I, H]")
    w2 = chk.tensor(fn, "w2", w2, (dtype,), 3, "[E, H, I]", hint)
    if w2.shape[0] != num_experts:
        raise ValueError(
            f"{fn}: w2 holds {w2.shape[0]} experts (shape {tuple(w2.shape)}) but w13 holds {num_experts}; "
            f"dim 0 of {same_experts} is the same local expert"
        )
    chk.shape(fn, "w2", w2, (num_experts, h, inter),
              f"w13 of shape {tuple(w13.shape)} (E={num_experts}, 2I={two_i}, H={h}; w2 is [E, H, I])")
    return w13, w2, inter


def _expert_weights(fn: str, w13: object, w13_scale: object, w2: object, w2_scale: object, hidden: int) -> int:
    w13, w2, inter = _w13_w2(fn, w13, w2, hidden, chk.FP8, _QUANTISE_HINT, "w13, w13_scale, w2 and w2_scale")
    num_experts, two_i, h = w13.shape
    w13_scale = chk.tensor(fn, "w13_scale", w13_scale, (torch.float32,), 3, "[E, 2I/128, H/128]", _SCALE_HINT)
    chk.shape(fn, "w13_scale", w13_scale, (num_experts, two_i // chk.BLOCK_K, h // chk.BLOCK_K),
              f"w13 of shape {tuple(w13.shape)} (one scale per 128x128 block)")
    w2_scale = chk.tensor(fn, "w2_scale", w2_scale, (torch.float32,), 3, "[E, H/128, I/128]", _SCALE_HINT)
    chk.shape(fn, "w2_scale", w2_scale, (num_experts, h // chk.BLOCK_K, inter // chk.BLOCK_K),
              f"w2 of shape {tuple(w2.shape)} (one scale per 128x128 block)")
    for name, t in (("w13", w13), ("w13_scale", w13_scale), ("w2", w2), ("w2_scale", w2_scale)):
        chk.contiguous(fn, name, t, _IN_PLACE, _ONCE)
    return num_experts


def _shared_expert(fn: str, shared: object, hidden: int) -> dict[str, torch.Tensor]:
    if not isinstance(shared, SharedExpert):
        raise TypeError(
            f"{fn}: shared_expert must be a dg_moe.moe.SharedExpert(w13, w13_scale, w2, w2_scale) or None, "
            f"got {type(shared).__name__}; add any other shared MLP's output to the result yourself"
        )
    w13 = chk.tensor(fn, "shared_expert.w13", shared.w13, (chk.FP8,), 2, "[2Is, H]", _QUANTISE_HINT)
    two_i, h = w13.shape
    if h != hidden:
        raise ValueError(
            f"{fn}: shared_expert.w13 has H = {h} columns (shape {tuple(w13.shape)}) but hidden has H = {hidden}"
        )
    inter = chk.gate_up(fn, "shared_expert.w13", two_i, "[2Is, H]")
    named = {"shared_expert.w13": w13}
    specs = (
        ("shared_expert.w13_scale", shared.w13_scale, torch.float32, (two_i // chk.BLOCK_K, h // chk.BLOCK_K),
         "[2Is/128, H/128]"),
        ("shared_expert.w2", shared.w2, chk.FP8, (h, inter), "[H, Is]"),
        ("shared_expert.w2_scale", shared.w2_scale, torch.float32, (h // chk.BLOCK_K, inter // chk.BLOCK_K),
         "[H/128, Is/128]"),
    )
    for name, t, dtype, expected, layout in specs:
        hint = _QUANTISE_HINT if dtype == chk.FP8 else _SCALE_HINT
        named[name] = chk.tensor(fn, name, t, (dtype,), 2, layout, hint)
        chk.shape(fn, name, named[name], expected, f"shared_expert.w13 of shape {tuple(w13.shape)} {layout}")
    for name, t in named.items():
        chk.contiguous(fn, name, t, _IN_PLACE, _ONCE)
    return named


def layout_mode(fn: str, value: object) -> None:
    """``mode`` (the layout a forward runs) is one of :data:`MODES`."""
    if value not in MODES:
        raise ValueError(f"{fn}: mode must be one of {', '.join(map(repr, MODES))}, got {value!r}")


def scaling_factor(fn: str, value: object) -> float:
    """``routed_scaling_factor`` is a finite Python number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(
            f"{fn}: routed_scaling_factor must be a Python float (e.g. DeepSeek-V3's 2.5), got {value!r}"
        )
    if not math.isfinite(value):
        raise ValueError(f"{fn}: routed_scaling_factor must be finite, got {value}")
    return float(value)


def distinct_experts(fn: str, topk_ids: torch.Tensor) -> None:
    """On CPU: no token routes two of its slots to one expert (the premise of the default ``max_m``)."""
    if topk_ids.device.type != "cpu" or topk_ids.numel() == 0:
        return
    ordered = topk_ids.sort(dim=1).values
    repeated = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).nonzero()
    if repeated.numel() > 0:
        t, s = repeated[0].tolist()
        raise ValueError(
            f"{fn}: topk_ids[{t}] sends token {t} to expert {ordered[t, s + 1].item()} twice, but the masked "
            f"path's default max_m = T assumes each token's experts are distinct (as a top-k router picks "
            f"them); pass max_m=T*k ({topk_ids.numel()}) to keep every entry, or mode='contiguous'"
        )


def fused_moe_args(fn: str, hidden: object, w13: object, w13_scale: object, w2: object, w2_scale: object,
                   topk_ids: object, topk_weights: object, mode: object, max_m: object,
                   routed_scaling_factor: object, shared_expert: object) -> MoEDims:
    """Validate every argument of ``fused_moe``; returns the call's sizes."""
    hidden = _hidden(fn, hidden)
    h = hidden.shape[1]
    num_experts = _expert_weights(fn, w13, w13_scale, w2, w2_scale, h)
    devices = {"w13": w13, "w13_scale": w13_scale, "w2": w2, "w2_scale": w2_scale}
    if shared_expert is not None:
        devices.update(_shared_expert(fn, shared_expert, h))
    return _routing(fn, hidden, num_experts, devices, topk_ids, topk_weights, mode, max_m, routed_scaling_factor)


def fused_moe_bf16_args(fn: str, hidden: object, w13: object, w2: object, topk_ids: object, topk_weights: object,
                        mode: object, max_m: object, routed_scaling_factor: object) -> MoEDims:
    """Validate every argument of ``fused_moe_bf16``; returns the call's sizes."""
    hidden = _hidden(fn, hidden)
    num_experts = _bf16_expert_weights(fn, w13, w2, hidden.shape[1])
    return _routing(fn, hidden, num_experts, {"w13": w13, "w2": w2}, topk_ids, topk_weights, mode, max_m,
                    routed_scaling_factor)


def _hidden(fn: str, hidden: object) -> torch.Tensor:
    hidden = chk.tensor(fn, "hidden", hidden, (torch.bfloat16,), 2, "[T, H]", "cast it with .to(torch.bfloat16)")
    chk.k_aligned(fn, "hidden has H", hidden.shape[1])
    return hidden


def _bf16_expert_weights(fn: str, w13: object, w2: object, hidden: int) -> int:
    w13, w2, _ = _w13_w2(fn, w13, w2, hidden, torch.bfloat16, _BF16_HINT, "w13 and w2")
    for name, t in (("w13", w13), ("w2", w2)):
        chk.contiguous(fn, name, t, "the expert GEMMs read the weights in place; a copy per call would cost "
                       "a weight read", _ONCE)
    return w13.shape[0]


def _routing(fn: str, hidden: torch.Tensor, num_experts: int, devices: dict[str, object], topk_ids: object,
             topk_weights: object, mode: object, max_m: object, routed_scaling_factor: object) -> MoEDims:
    # The checks both layers share once their weights are validated: routing, devices, mode and scalars.
    num_tokens = hidden.shape[0]
    topk_ids = chk.tensor(fn, "topk_ids", topk_ids, chk.INDEX_DTYPES, 2, "[T, k]", "convert it with .to(torch.int32)")
    if topk_ids.shape[0] != num_tokens:
        raise ValueError(
            f"{fn}: topk_ids has {topk_ids.shape[0]} rows but hidden has {num_tokens} tokens; "
            "topk_ids is [T, k] with one row per token"
        )
    if topk_ids.shape[1] == 0:
        raise ValueError(f"{fn}: topk_ids has no slot (shape {tuple(topk_ids.shape)}); top-k must be >= 1")
    topk_weights = chk.tensor(fn, "topk_weights", topk_weights, chk.FLOAT_DTYPES, 2, "[T, k]")
    chk.shape(fn, "topk_weights", topk_weights, tuple(topk_ids.shape), "topk_ids [T, k] (one weight per slot)")
    chk.same_device(fn, "hidden", hidden, {**devices, "topk_ids": topk_ids, "topk_weights": topk_weights})
    chk.expert_ids(fn, "topk_ids", topk_ids, num_experts)
    layout_mode(fn, mode)
    if max_m is not None:
        chk.positive_int(fn, "max_m", max_m)
    scaling_factor(fn, routed_scaling_factor)
    return MoEDims(num_tokens, num_experts)
