"""Random MoE layers and a per-token loop formulation of the MoE, for the fused MoE tests.

The loop walks tokens and slots in Python and applies one expert to one token at a time, in
float64 from the dequantised FP8 tokens and weights (the numeric contract's reference), so it
shares no code path with ``dg_moe.moe`` (layouts, grouped GEMMs, weighted reduce).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dg_moe.layout import per_block_cast_to_fp8, per_token_cast_to_fp8
from dg_moe.moe import SharedExpert
from dg_moe.reference import dequantize

FP8 = torch.float8_e4m3fn


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Layer(NamedTuple):
    """FP8 expert weights in fused_moe's layout, plus an optional shared expert."""

    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor
    shared: SharedExpert | None

    @property
    def routed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.w13, self.w13_scale, self.w2, self.w2_scale


def _quantise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [per_block_cast_to_fp8(x) for x in w]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])


def layer(num_experts: int, hidden: int, inter: int, seed: int, shared_inter: int | None = None) -> Layer:
    """Random FP8 experts w13 [E, 2I, H], w2 [E, H, I] with block scales (each block a different scale)."""
    g = gen(seed)
    # Per-expert magnitudes, so scales differ between experts as well as between blocks.
    mag = torch.rand(num_experts, 1, 1, generator=g) + 0.5
    w13, w13_sf = _quantise(torch.randn(num_experts, 2 * inter, hidden, generator=g) * mag / hidden**0.5)
    w2, w2_sf = _quantise(torch.randn(num_experts, hidden, inter, generator=g) * mag / inter**0.5)
    shared = None
    if shared_inter is not None:
        s13 = per_block_cast_to_fp8(torch.randn(2 * shared_inter, hidden, generator=g) / hidden**0.5)
        s2 = per_block_cast_to_fp8(torch.randn(hidden, shared_inter, generator=g) / shared_inter**0.5)
        shared = SharedExpert(*s13, *s2)
    return Layer(w13, w13_sf, w2, w2_sf, shared)


def bf16_layer(num_experts: int, hidden: int, inter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random BF16 experts (w13 [E, 2I, H], w2 [E, H, I]) for fused_moe_bf16, magnitudes differing per expert."""
    g = gen(seed)
    mag = torch.rand(num_experts, 1, 1, generator=g) + 0.5
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) * mag / hidden**0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) * mag / inter**0.5
    return w13.to(torch.bfloat16), w2.to(torch.bfloat16)


def hidden_states(num_tokens: int, hidden: int, seed: int) -> torch.Tensor:
    """bf16 [T, H] with rows of different magnitudes."""
    g = gen(seed)
    x = torch.randn(num_tokens, hidden, generator=g) * (torch.rand(num_tokens, 1, generator=g) * 4 + 0.1)
    return x.to(torch.bfloat16)


def routing(num_tokens: int, top_k: int, num_experts: int, seed: int, drop: float = 0.0,
            experts_used: int | None = None, dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [T, k] distinct per token, float32 weights [T, k]) as a top-k router gives them.

    Only the first ``experts_used`` experts receive tokens (the rest stay empty); each slot is -1
    with probability ``drop`` (an expert on another rank).
    """
    g = gen(seed)
    scores = torch.rand(num_tokens, num_experts, generator=g)
    if experts_used is not None:
        scores[:, experts_used:] = -1.0
    weights, ids = scores.softmax(-1).topk(top_k, dim=-1)
    ids = torch.where(torch.rand(ids.shape, generator=g) < drop, -1, ids)
    return ids.to(dtype), weights


def _swiglu_expert(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    inter = w13.shape[0] // 2
    gate_up = w13 @ x
    return w2 @ (F.silu(gate_up[:inter]) * gate_up[inter:])


def loop_moe(hidden: torch.Tensor, lay: Layer, ids: torch.Tensor, weights: torch.Tensor,
             routed_scaling_factor: float = 1.0, kept: list[list[bool]] | None = None) -> torch.Tensor:
    """float64 [T, H], token by token: rsf * sum over routed (and kept) slots of w * expert(x) + shared(x)."""
    x = dequantize(*per_token_cast_to_fp8(hidden), 1, 128)
    w13 = dequantize(lay.w13, lay.w13_scale, 128, 128)
    w2 = dequantize(lay.w2, lay.w2_scale, 128, 128)
    shared = None
    if lay.shared is not None:
        shared = (dequantize(lay.shared.w13, lay.shared.w13_scale, 128, 128),
                  dequantize(lay.shared.w2, lay.shared.w2_scale, 128, 128))
    out = torch.zeros(x.shape, dtype=torch.float64)
    ids_list = ids.tolist()
    for t in range(x.shape[0]):
        for s, e in enumerate(ids_list[t]):
            if e < 0 or (kept is not None and not kept[t][s]):
                continue
            out[t] += routed_scaling_factor * weights[t, s].double() * _swiglu_expert(x[t], w13[e], w2[e])
        if shared is not None:
            out[t] += _swiglu_expert(x[t], *shared)
    return out


def masked_policy(ids: torch.Tensor, num_experts: int, max_m: int) -> tuple[list[list[bool]], list[int]]:
    """The masked layout's overflow policy, spelt out: per expert, the first ``max_m`` entries in
    (token, slot) order are kept. Returns (kept [T][k], dropped per expert)."""
    seen = [0] * num_experts
    kept = []
    for row in ids.tolist():
        kept.append([])
        for e in row:
            kept[-1].append(e >= 0 and seen[e] < max_m)
            if e >= 0:
                seen[e] += 1
    return kept, [max(0, c - max_m) for c in seen]
