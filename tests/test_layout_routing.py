"""Routing to the contiguous and masked layouts, bit-exact (values, dtypes, strides) against loops."""

from __future__ import annotations

import pytest
import torch

from dg_moe import layout
from dg_moe.layout._permute import expert_ranks
from dg_moe.reference import group_rows

from .layout_loops import (
    assert_contiguous_equal,
    assert_fp8_equal,
    assert_mn_major,
    hidden_states,
    loop_contiguous,
    loop_masked,
    quantise_rows,
    topk_ids,
)

# name: (T, k, E, H, drop probability, restrict ids to these experts or None)
CASES = {
    "random": (37, 4, 6, 256, 0.2, None),
    "no_tokens": (0, 2, 4, 128, 0.0, None),
    "empty_experts": (29, 2, 7, 128, 0.0, [1, 4]),
    "all_on_one_expert": (200, 1, 3, 128, 0.0, [2]),
    "minus_one_entries": (23, 3, 5, 384, 0.6, None),
    "all_minus_one": (6, 2, 3, 128, 1.0, None),
    "k1": (50, 1, 4, 256, 0.1, None),
    "k8": (19, 8, 16, 128, 0.1, None),
    "over_one_tile": (150, 2, 3, 128, 0.0, None),
}


def case_inputs(name: str, seed: int, dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor, int]:
    num_tokens, top_k, num_experts, h, drop, only = CASES[name]
    hidden = hidden_states(num_tokens, h, seed)
    if only is None:
        ids = topk_ids(num_tokens, top_k, num_experts, seed + 1, drop, dtype)
    else:
        g = torch.Generator().manual_seed(seed + 1)
        pick = torch.tensor(only)[torch.randint(len(only), (num_tokens, top_k), generator=g)]
        ids = torch.where(torch.rand(pick.shape, generator=g) < drop, -1, pick).to(dtype)
    return hidden, ids, num_experts


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32])
def test_route_to_contiguous_matches_loop(name, ids_dtype):
    hidden, ids, num_experts = case_inputs(name, seed=len(name), dtype=ids_dtype)
    got = layout.route_to_contiguous(hidden, ids, num_experts)
    num_tokens, top_k = ids.shape
    assert got.a.shape[0] == layout.get_contiguous_layout_capacity(num_tokens, top_k, num_experts)
    assert_contiguous_equal(got, loop_contiguous(*quantise_rows(hidden), ids, num_experts))


@pytest.mark.parametrize("name", ["random", "empty_experts", "over_one_tile", "no_tokens"])
def test_contiguous_layout_forms_agree_with_the_reference_reader(name):
    hidden, ids, num_experts = case_inputs(name, seed=3)
    got = layout.route_to_contiguous(hidden, ids, num_experts)
    per_row = group_rows(got.grouped_layout, num_experts, use_psum_layout=False)
    psum = group_rows(got.grouped_layout_psum, num_experts, use_psum_layout=True)
    counts = [(ids == e).sum().item() for e in range(num_experts)]
    for e in range(num_experts):
        assert torch.equal(per_row[e], psum[e]) and per_row[e].numel() == counts[e]


def test_route_to_contiguous_fp8_input_keeps_bytes_and_scales():
    hidden, ids, num_experts = case_inputs("random", seed=5)
    x, sf = quantise_rows(hidden)
    # Scales in a column-major layout: the op accepts any strides.
    sf_strided = sf.t().contiguous().t()
    got = layout.route_to_contiguous((x, sf_strided), ids, num_experts)
    assert_contiguous_equal(got, loop_contiguous(x, sf, ids, num_experts))
    from_bf16 = layout.route_to_contiguous(hidden, ids, num_experts)
    assert_contiguous_equal(from_bf16, loop_contiguous(x, sf, ids, num_experts))


def test_route_to_contiguous_ue8m0_scales():
    hidden, ids, num_experts = case_inputs("random", seed=6)
    got = layout.route_to_contiguous(hidden, ids, num_experts, use_ue8m0=True)
    x, sf = layout.per_token_cast_to_fp8(hidden, use_ue8m0=True)
    assert_contiguous_equal(got, loop_contiguous(x, sf, ids, num_experts))
    assert bool((got.sfa.view(torch.int32) & 0x7FFFFF == 0).all())


def test_contiguous_capacity_bound():
    assert layout.get_contiguous_layout_capacity(0, 8, 4) == 0
    assert layout.get_contiguous_layout_capacity(1000, 8, 256) == 128 * -(-(8000 + 256 * 127) // 128)
    # One decode token over 256 experts: at most 8 segments, each padded by at most 127 rows.
    assert layout.get_contiguous_layout_capacity(1, 8, 256) == 128 * -(-(8 + 8 * 127) // 128)
    # Worst case: every expert gets a count of 1 mod 128.
    ids = torch.arange(4).repeat_interleave(129).view(-1, 1)
    got = layout.route_to_contiguous(hidden_states(ids.shape[0], 128, 0), ids, 4)
    assert got.grouped_layout_psum.tolist() == [129, 385, 641, 897]
    assert got.a.shape[0] == layout.get_contiguous_layout_capacity(ids.shape[0], 1, 4) >= 1024
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        layout.get_contiguous_layout_capacity(-1, 2, 4)
    with pytest.raises(TypeError, match="num_experts"):
        layout.get_contiguous_layout_capacity(1, 2, 4.0)


def assert_masked_equal(got: layout.MaskedLayout, want: dict) -> None:
    assert_fp8_equal(got.a, want["a"])
    assert got.a.is_contiguous()
    assert got.sfa.dtype == torch.float32 and torch.equal(got.sfa, want["sfa"])
    assert_mn_major(got.sfa)
    for key in ("masked_m", "inverse", "overflow"):
        value = getattr(got, key)
        assert value.dtype == torch.int32 and torch.equal(value, want[key]), key


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("max_m", [5, 64])
def test_route_to_masked_matches_loop(name, max_m):
    hidden, ids, num_experts = case_inputs(name, seed=len(name) + max_m)
    got = layout.route_to_masked(hidden, ids, num_experts, max_m)
    assert got.a.shape == (num_experts, max_m, hidden.shape[1])
    assert_masked_equal(got, loop_masked(*quantise_rows(hidden), ids, num_experts, max_m))


def test_route_to_masked_overflow_is_explicit():
    ids = torch.tensor([[0, 1], [0, 2], [1, 0], [0, -1], [2, 0]])
    got = layout.route_to_masked(hidden_states(5, 128, 1), ids, 3, max_m=2)
    # Expert 0 gets (0,0) (1,0) (2,1) (3,0) (4,1): the first two in (token, slot) order stay.
    assert got.masked_m.tolist() == [2, 2, 2]
    assert got.overflow.tolist() == [3, 0, 0]
    assert got.inverse.tolist() == [[0, 2], [1, 4], [3, -1], [-1, -1], [5, -1]]


def test_route_to_masked_fp8_input_and_unaligned_max_m():
    hidden, ids, num_experts = case_inputs("k8", seed=8)
    x, sf = quantise_rows(hidden)
    got = layout.route_to_masked((x, sf), ids, num_experts, max_m=7)
    assert got.sfa.stride() == (8, 1, 8)  # one K block of A = align(7, 4) = 8 rows per expert
    # The alignment rows past max_m in the storage hold 1.0 too: no uninitialised memory.
    storage = got.sfa.as_strided((num_experts, 8), (8, 1))
    assert bool((storage[:, 7:] == 1.0).all())
    assert_masked_equal(got, loop_masked(x, sf, ids, num_experts, 7))


def test_routing_is_deterministic():
    hidden, ids, num_experts = case_inputs("random", seed=9)
    first = layout.route_to_contiguous(hidden, ids, num_experts)
    second = layout.route_to_contiguous(hidden, ids, num_experts)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x,
                           y.view(torch.uint8) if y.dtype == torch.float8_e4m3fn else y)


@pytest.mark.parametrize("route", ["contiguous", "masked"])
def test_routing_argument_errors(route):
    def call(hidden, ids, num_experts=4, **kwargs):
        if route == "contiguous":
            return layout.route_to_contiguous(hidden, ids, num_experts, **kwargs)
        return layout.route_to_masked(hidden, ids, num_experts, 8, **kwargs)

    hidden = hidden_states(3, 256, 0)
    ids = torch.tensor([[0, 1], [2, -1], [3, 3]])
    fn = f"route_to_{route}"
    with pytest.raises(ValueError, match=rf"{fn}: hidden has H = 200, not a positive multiple of 128.*256"):
        call(hidden_states(3, 200, 0), ids)
    x, sf = quantise_rows(hidden)
    with pytest.raises(ValueError, match=r"hidden\[0\] has H = 200, not a positive multiple of 128"):
        call((x[:, :200], sf), ids)
    with pytest.raises(ValueError, match=r"hidden\[1\] \(scales\) has shape \(3, 3\)"):
        call((x, torch.ones(3, 3)), ids)
    with pytest.raises(TypeError, match=r"hidden\[1\] \(scales\) must have dtype float32"):
        call((x, sf.to(torch.float16)), ids)
    with pytest.raises(ValueError, match="use_ue8m0=True applies when quantising BF16"):
        call((x, sf), ids, use_ue8m0=True)
    with pytest.raises(TypeError, match="hidden must have dtype bfloat16"):
        call(hidden.to(torch.int32), ids)
    with pytest.raises(ValueError, match=r"topk_ids\[2, 0\] = 4 is not an expert id.*\[0, 4\)"):
        call(hidden, torch.tensor([[0, 1], [2, -1], [4, 3]]))
    with pytest.raises(ValueError, match=r"topk_ids\[1, 1\] = -2"):
        call(hidden, torch.tensor([[0, 1], [2, -2], [1, 3]]))
    with pytest.raises(TypeError, match="topk_ids must have dtype int32 or int64"):
        call(hidden, ids.float())
    with pytest.raises(ValueError, match="topk_ids has 2 rows but hidden has 3 tokens"):
        call(hidden, ids[:2])
    with pytest.raises(ValueError, match="topk_ids must be 2-D"):
        call(hidden, ids.flatten())
    with pytest.raises(ValueError, match="num_experts must be > 0"):
        call(hidden, ids, num_experts=0)
    with pytest.raises(ValueError, match="topk_ids is on meta but hidden is on cpu"):
        call(hidden, ids.to("meta"))
    if route == "masked":
        with pytest.raises(ValueError, match="max_m must be > 0"):
            layout.route_to_masked(hidden, ids, 4, 0)


def test_ids_out_of_range_are_not_routed_where_unchecked():
    # On CUDA the range check (a host read) is skipped; the ranking then treats such ids as -1.
    expert, rank, counts = expert_ranks(torch.tensor([[5, 0], [-3, 1], [0, 2]]), 2)
    assert expert.tolist() == [2, 0, 2, 1, 0, 2]
    assert rank.tolist()[:2] == [0, 0] and rank.tolist()[3:5] == [0, 1]
    assert counts.tolist() == [2, 1]
