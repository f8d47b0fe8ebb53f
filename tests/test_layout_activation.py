"""SiLU(gate) * up + 1x128 FP8 quantisation between the expert GEMMs, bit-exact against a row loop."""

from __future__ import annotations

import math

import pytest
import torch

from dg_moe import layout

from .layout_loops import assert_fp8_equal, assert_mn_major, gen, hidden_states, loop_silu_quant, topk_ids


def gate_up(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return (torch.randn(shape, generator=gen(seed)) * 4).to(torch.bfloat16)


def psum_valid_rows(ends: list[int], num_rows: int) -> list[bool]:
    valid, prev = [False] * num_rows, 0
    for end in ends:
        for r in range(128 * math.ceil(prev / 128), end):
            valid[r] = True
        prev = end
    return valid


# (T, k, E, drop)
ROUTINGS = {"random": (23, 2, 4, 0.2), "no_tokens": (0, 2, 3, 0.0), "one_expert": (40, 1, 1, 0.0),
            "k8": (9, 8, 10, 0.3)}


@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.parametrize("use_psum_layout", [False, True])
@pytest.mark.parametrize("inter", [128, 256])
def test_silu_and_mul_contiguous_matches_loop(name, use_psum_layout, inter):
    num_tokens, top_k, num_experts, drop = ROUTINGS[name]
    ids = topk_ids(num_tokens, top_k, num_experts, seed=inter, drop=drop)
    routed = layout.route_to_contiguous(hidden_states(num_tokens, 128, 1), ids, num_experts)
    m_cap = routed.a.shape[0]
    x = gate_up((m_cap, 2 * inter), seed=len(name))
    # Rows of no expert hold garbage (NaN here): they must come out as zeros with scale 1.0.
    x[routed.grouped_layout < 0] = float("nan")
    grouped = routed.grouped_layout_psum if use_psum_layout else routed.grouped_layout
    q, sf = layout.silu_and_mul_to_fp8_contiguous(x, grouped, use_psum_layout=use_psum_layout)
    valid = (routed.grouped_layout >= 0).tolist()
    if use_psum_layout:
        assert psum_valid_rows(routed.grouped_layout_psum.tolist(), m_cap) == valid
    want_q, want_sf = loop_silu_quant(x, valid)
    assert_fp8_equal(q, want_q)
    assert q.is_contiguous() and torch.equal(sf, want_sf)
    assert sf.shape == (m_cap, inter // 128)
    assert_mn_major(sf)


def test_silu_and_mul_contiguous_hand_written_psum():
    # Ends [3, 3, 130, 300]: group 1 empty, group 2 starts at 128, group 3 at 256; 384 rows.
    ends = torch.tensor([3, 3, 130, 300], dtype=torch.int32)
    valid = psum_valid_rows(ends.tolist(), 384)
    assert sum(valid) == 3 + 2 + 44
    x = gate_up((384, 256), seed=2)
    q, sf = layout.silu_and_mul_to_fp8_contiguous(x, ends, use_psum_layout=True)
    want_q, want_sf = loop_silu_quant(x, valid)
    assert_fp8_equal(q, want_q)
    assert torch.equal(sf, want_sf)


def test_silu_and_mul_contiguous_ue8m0():
    x = gate_up((256, 512), seed=3)
    per_row = torch.tensor([0] * 100 + [-1] * 28 + [1] * 128, dtype=torch.int32)
    q, sf = layout.silu_and_mul_to_fp8_contiguous(x, per_row, use_ue8m0=True)
    act = torch.nn.functional.silu(x[:, :256].float()) * x[:, 256:].float()
    want_q, want_sf = layout.per_token_cast_to_fp8(act, use_ue8m0=True)
    keep = per_row >= 0
    assert torch.equal(q[keep].view(torch.uint8), want_q[keep].view(torch.uint8))
    assert torch.equal(sf[keep], want_sf[keep]) and bool((sf[~keep] == 1.0).all())
    assert bool((sf.view(torch.int32) & 0x7FFFFF == 0).all())


@pytest.mark.parametrize("max_m", [1, 6, 32])
@pytest.mark.parametrize("inter", [128, 256])
def test_silu_and_mul_masked_matches_loop(max_m, inter):
    num_experts = 5
    x = gate_up((num_experts, max_m, 2 * inter), seed=max_m + inter)
    # 0, max_m, above max_m (clamped), negative (counts as 0), and one in between.
    masked_m = torch.tensor([0, max_m, max_m + 3, -2, max_m // 2], dtype=torch.int32)
    counts = [0, max_m, max_m, 0, max_m // 2]
    valid = [[r < counts[e] for r in range(max_m)] for e in range(num_experts)]
    x[~torch.tensor(valid)] = float("nan")
    q, sf = layout.silu_and_mul_to_fp8_masked(x, masked_m)
    want_q, want_sf = loop_silu_quant(x.view(-1, 2 * inter), sum(valid, []))
    assert q.shape == (num_experts, max_m, inter) and q.is_contiguous()
    assert_fp8_equal(q.view(-1, inter), want_q)
    assert torch.equal(sf.reshape(-1, inter // 128), want_sf)
    assert sf.shape == (num_experts, max_m, inter // 128)
    assert_mn_major(sf)


def test_activation_argument_errors():
    x = gate_up((128, 256), seed=0)
    per_row = torch.zeros(128, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"silu_and_mul_to_fp8_contiguous: x \[M_cap, 2I\] has 2I = 200 .*"
                                         r"I = 100, not a positive multiple of 128"):
        layout.silu_and_mul_to_fp8_contiguous(gate_up((128, 200), seed=0), per_row)
    with pytest.raises(ValueError, match="must be even"):
        layout.silu_and_mul_to_fp8_contiguous(gate_up((128, 257), seed=0), per_row)
    with pytest.raises(ValueError, match=r"grouped_layout has shape \(127,\) but x of 128 rows"):
        layout.silu_and_mul_to_fp8_contiguous(x, per_row[:127])
    with pytest.raises(TypeError, match="grouped_layout must have dtype int32"):
        layout.silu_and_mul_to_fp8_contiguous(x, per_row.long())
    with pytest.raises(ValueError, match=r"grouped_layout\[5\] = -3"):
        layout.silu_and_mul_to_fp8_contiguous(x, torch.where(torch.arange(128) == 5, -3, per_row).int())
    with pytest.raises(ValueError, match=r"grouped_layout\[1\] = 100 falls in the alignment gap 5\.\.127.*"
                                         r"align\(5, 128\) = 128"):
        layout.silu_and_mul_to_fp8_contiguous(x, torch.tensor([5, 100], dtype=torch.int32), use_psum_layout=True)
    with pytest.raises(ValueError, match=r"grouped_layout\[1\] = 2 is below the previous end 5"):
        layout.silu_and_mul_to_fp8_contiguous(x, torch.tensor([5, 2], dtype=torch.int32), use_psum_layout=True)
    with pytest.raises(ValueError, match=r"grouped_layout\[0\] = 129 exceeds the 128 rows of x"):
        layout.silu_and_mul_to_fp8_contiguous(x, torch.tensor([129], dtype=torch.int32), use_psum_layout=True)
    with pytest.raises(TypeError, match="use_psum_layout must be a bool"):
        layout.silu_and_mul_to_fp8_contiguous(x, per_row, use_psum_layout=1)
    with pytest.raises(ValueError, match="grouped_layout is on meta but x is on cpu"):
        layout.silu_and_mul_to_fp8_contiguous(x, per_row.to("meta"))
    x3 = gate_up((2, 4, 256), seed=0)
    with pytest.raises(ValueError, match=r"masked_m has shape \(3,\) but x \[E, max_m, 2I\] with E=2"):
        layout.silu_and_mul_to_fp8_masked(x3, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="masked_m must have dtype int32"):
        layout.silu_and_mul_to_fp8_masked(x3, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must be 3-D"):
        layout.silu_and_mul_to_fp8_masked(x, torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"2I = 128 \[gate \| up\], so I = 64, not a positive multiple"):
        layout.silu_and_mul_to_fp8_masked(gate_up((2, 4, 128), seed=0), torch.zeros(2, dtype=torch.int32))
