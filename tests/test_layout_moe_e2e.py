"""End to end on CPU: route -> expert GEMM (reference) -> SiLU*up + FP8 -> expert GEMM -> weighted
reduce, against a float64 dense MoE computed token by token from the dequantised inputs (FP8 hidden
states and weights), as the numeric contract states. The only FP8 error left is the intermediate
activation's quantisation, which is what the layout ops add."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dg_moe
from dg_moe import layout
from dg_moe.reference import (
    calc_diff,
    dequantize,
    ref_m_grouped_fp8_gemm_nt_contiguous,
    ref_m_grouped_fp8_gemm_nt_masked,
    round_to_dtype,
)

from .layout_loops import gen, hidden_states, topk_ids

T, H, INTER, E, K = 40, 256, 128, 4, 2
FP8_SIMILARITY_LIMIT = 1e-3


def expert_weights(seed: int):
    """w13 (e4m3 [E, 2I, H], float32 [E, 2I/128, H/128]) and w2 (e4m3 [E, H, I], [E, H/128, I/128])."""
    g = gen(seed)
    w13 = [layout.per_block_cast_to_fp8(torch.randn(2 * INTER, H, generator=g) / 16) for _ in range(E)]
    w2 = [layout.per_block_cast_to_fp8(torch.randn(H, INTER, generator=g) / 11) for _ in range(E)]
    stack = lambda ws: (torch.stack([w for w, _ in ws]), torch.stack([s for _, s in ws]))  # noqa: E731
    return stack(w13), stack(w2)


def dense_moe(hidden, ids, weights, w13, w2, kept=None) -> torch.Tensor:
    """float64 [T, H]: per token, sum over its routed (and kept) slots of w * (SiLU(g) * u) @ W2.T."""
    x_f = dequantize(*layout.per_token_cast_to_fp8(hidden), 1, 128)
    w13_f = dequantize(w13[0], w13[1], 128, 128)
    w2_f = dequantize(w2[0], w2[1], 128, 128)
    out = torch.zeros(hidden.shape[0], H, dtype=torch.float64)
    for t in range(hidden.shape[0]):
        x = x_f[t]
        for s in range(ids.shape[1]):
            e = ids[t, s].item()
            if e < 0 or (kept is not None and not kept[t][s]):
                continue
            gu = w13_f[e] @ x
            out[t] += weights[t, s].double() * (w2_f[e] @ (F.silu(gu[:INTER]) * gu[INTER:]))
    return out


def inputs(seed: int):
    hidden = hidden_states(T, H, seed)
    ids = topk_ids(T, K, E, seed + 1, drop=0.15)
    weights = torch.rand(T, K, generator=gen(seed + 2))
    return hidden, ids, weights, *expert_weights(seed + 3)


@pytest.mark.parametrize("use_psum_layout", [True, False])
def test_contiguous_moe_matches_dense(use_psum_layout):
    hidden, ids, weights, w13, w2 = inputs(seed=10)
    routed = layout.route_to_contiguous(hidden, ids, E)
    grouped = routed.grouped_layout_psum if use_psum_layout else routed.grouped_layout
    # NaN on rows of no expert (the reference's marker of rows a kernel leaves unwritten) must not leak.
    gate_up = ref_m_grouped_fp8_gemm_nt_contiguous((routed.a, routed.sfa), w13, grouped,
                                                   use_psum_layout=use_psum_layout)
    assert gate_up.isnan().any()
    act = layout.silu_and_mul_to_fp8_contiguous(round_to_dtype(gate_up, torch.bfloat16), grouped,
                                                use_psum_layout=use_psum_layout)
    down = ref_m_grouped_fp8_gemm_nt_contiguous(act, w2, grouped, use_psum_layout=use_psum_layout)
    out = layout.unpermute_reduce_contiguous(round_to_dtype(down, torch.bfloat16), routed.inverse, weights)
    expected = dense_moe(hidden, ids, weights, w13, w2)
    diff = calc_diff(out, expected)
    assert 0 < diff < FP8_SIMILARITY_LIMIT, diff


def test_masked_moe_matches_dense():
    hidden, ids, weights, w13, w2 = inputs(seed=20)
    routed = layout.route_to_masked(hidden, ids, E, max_m=48)
    assert routed.overflow.sum().item() == 0
    gate_up = ref_m_grouped_fp8_gemm_nt_masked((routed.a, routed.sfa), w13, routed.masked_m)
    act = layout.silu_and_mul_to_fp8_masked(round_to_dtype(gate_up, torch.bfloat16), routed.masked_m)
    down = ref_m_grouped_fp8_gemm_nt_masked(act, w2, routed.masked_m)
    out = layout.unpermute_reduce_masked(round_to_dtype(down, torch.bfloat16), routed.inverse, weights)
    diff = calc_diff(out, dense_moe(hidden, ids, weights, w13, w2))
    assert 0 < diff < FP8_SIMILARITY_LIMIT, diff


def test_masked_moe_with_overflow_drops_exactly_the_late_entries():
    hidden, ids, weights, w13, w2 = inputs(seed=30)
    max_m = 6
    routed = layout.route_to_masked(hidden, ids, E, max_m=max_m)
    # The policy, spelt out: per expert, the first max_m entries in (token, slot) order are kept.
    seen, kept = [0] * E, [[False] * K for _ in range(T)]
    for t in range(T):
        for s in range(K):
            e = ids[t, s].item()
            if e >= 0:
                kept[t][s] = seen[e] < max_m
                seen[e] += 1
    assert routed.overflow.tolist() == [c - min(c, max_m) for c in seen] and routed.overflow.sum().item() > 0
    assert routed.masked_m.tolist() == [min(c, max_m) for c in seen]
    gate_up = ref_m_grouped_fp8_gemm_nt_masked((routed.a, routed.sfa), w13, routed.masked_m)
    act = layout.silu_and_mul_to_fp8_masked(round_to_dtype(gate_up, torch.bfloat16), routed.masked_m)
    down = ref_m_grouped_fp8_gemm_nt_masked(act, w2, routed.masked_m)
    out = layout.unpermute_reduce_masked(round_to_dtype(down, torch.bfloat16), routed.inverse, weights)
    assert calc_diff(out, dense_moe(hidden, ids, weights, w13, w2, kept)) < FP8_SIMILARITY_LIMIT
    # The dropped entries are really missing: against the full MoE the result is far off.
    assert calc_diff(out, dense_moe(hidden, ids, weights, w13, w2)) > 10 * FP8_SIMILARITY_LIMIT


def test_public_ops_accept_the_layouts():
    """The CPU public GEMM ops (which validate layouts tile by tile) take the routing outputs as they are."""
    hidden, ids, weights, w13, w2 = inputs(seed=40)
    routed = layout.route_to_contiguous(hidden, ids, E)
    m_cap = routed.a.shape[0]
    outs = []
    for grouped, psum in ((routed.grouped_layout, False), (routed.grouped_layout_psum, True)):
        gate_up = torch.zeros(m_cap, 2 * INTER, dtype=torch.bfloat16)
        dg_moe.m_grouped_fp8_gemm_nt_contiguous((routed.a, routed.sfa), w13, gate_up, grouped, use_psum_layout=psum)
        act = layout.silu_and_mul_to_fp8_contiguous(gate_up, grouped, use_psum_layout=psum)
        down = torch.zeros(m_cap, H, dtype=torch.bfloat16)
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(act, w2, down, grouped, use_psum_layout=psum)
        outs.append(layout.unpermute_reduce_contiguous(down, routed.inverse, weights))
    assert torch.equal(outs[0], outs[1])

    masked = layout.route_to_masked(hidden, ids, E, max_m=48)
    gate_up = torch.zeros(E, 48, 2 * INTER, dtype=torch.bfloat16)
    dg_moe.m_grouped_fp8_gemm_nt_masked((masked.a, masked.sfa), w13, gate_up, masked.masked_m, expected_m=T)
    act = layout.silu_and_mul_to_fp8_masked(gate_up, masked.masked_m)
    down = torch.zeros(E, 48, H, dtype=torch.bfloat16)
    dg_moe.m_grouped_fp8_gemm_nt_masked(act, w2, down, masked.masked_m, expected_m=T)
    # Same expert rows in both layouts, so the same bits after the reduce.
    assert torch.equal(layout.unpermute_reduce_masked(down, masked.inverse, weights), outs[0])
