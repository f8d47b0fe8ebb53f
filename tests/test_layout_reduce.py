"""Unpermute + top-k weighted reduce, bit-exact against a per-token loop, for both layouts."""

from __future__ import annotations

import pytest
import torch

from dg_moe import layout

from .layout_loops import gen, hidden_states, loop_reduce, topk_ids


def weights(num_tokens: int, top_k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(num_tokens, top_k, generator=gen(seed)).to(dtype)


def expert_output(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return (torch.randn(shape, generator=gen(seed)) * 3).to(torch.bfloat16)


# (T, k, E, drop)
SHAPES = {"random": (33, 4, 6, 0.2), "no_tokens": (0, 2, 3, 0.0), "k1": (21, 1, 3, 0.3), "k8": (17, 8, 12, 0.4)}


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_reduce_contiguous_matches_loop(name, weight_dtype):
    num_tokens, top_k, num_experts, drop = SHAPES[name]
    ids = topk_ids(num_tokens, top_k, num_experts, seed=1, drop=drop)
    routed = layout.route_to_contiguous(hidden_states(num_tokens, 128, 2), ids, num_experts)
    y = expert_output((routed.a.shape[0], 256), seed=3)
    # Rows that hold no token must never be read.
    y[routed.grouped_layout < 0] = float("nan")
    w = weights(num_tokens, top_k, seed=4, dtype=weight_dtype)
    out = layout.unpermute_reduce_contiguous(y, routed.inverse, w)
    assert out.dtype == torch.bfloat16 and out.shape == (num_tokens, 256) and out.is_contiguous()
    assert torch.equal(out, loop_reduce(y, routed.inverse, w))
    assert not out.isnan().any()


@pytest.mark.parametrize("name", SHAPES)
def test_reduce_masked_matches_loop(name):
    num_tokens, top_k, num_experts, drop = SHAPES[name]
    ids = topk_ids(num_tokens, top_k, num_experts, seed=5, drop=drop)
    routed = layout.route_to_masked(hidden_states(num_tokens, 128, 6), ids, num_experts, max_m=16)
    y = expert_output((num_experts, 16, 128), seed=7)
    y[torch.arange(16) >= routed.masked_m.unsqueeze(1)] = float("nan")
    w = weights(num_tokens, top_k, seed=8)
    out = layout.unpermute_reduce_masked(y, routed.inverse, w)
    assert torch.equal(out, loop_reduce(y.view(-1, 128), routed.inverse, w))
    assert not out.isnan().any()


def test_reduce_tokens_without_valid_slot_are_zero_and_valid_nan_propagates():
    inverse = torch.tensor([[0, -1], [-1, -1], [1, 0], [2, -1]], dtype=torch.int32)
    y = torch.full((3, 128), float("inf"), dtype=torch.bfloat16)
    y[2] = float("nan")
    w = torch.tensor([[0.5, float("nan")], [float("nan"), float("nan")], [0.25, 0.25], [1.0, 1.0]])
    out = layout.unpermute_reduce_contiguous(y, inverse, w)
    assert torch.equal(out[1], torch.zeros(128, dtype=torch.bfloat16))
    assert bool((out[0] == float("inf")).all()) and bool((out[2] == float("inf")).all())
    assert bool(out[3].isnan().all())


def test_reduce_sums_in_slot_order_in_fp32():
    inverse = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    ones = torch.ones(3, 128, dtype=torch.bfloat16)
    # Slot order in FP32: (1 + 2**-8) + 2**-24 ties back to 1 + 2**-8, twice, and BF16 rounds that tie
    # to 1.0. Summing the small terms first (or in FP64) gives 1 + 2**-8 + 2**-23, which rounds up.
    w = torch.tensor([[1 + 2**-8, 2**-24, 2**-24]], dtype=torch.float32)
    assert layout.unpermute_reduce_contiguous(ones, inverse, w)[0, 0].item() == 1.0
    assert layout.unpermute_reduce_contiguous(ones, inverse, w.flip(1))[0, 0].item() == 1 + 2**-7
    # FP32, not BF16, accumulation: 256 + 1 + 1 stays 258 (a BF16 accumulator would stay at 256).
    y = torch.tensor([[256.0], [1.0], [1.0]], dtype=torch.bfloat16).expand(3, 128).contiguous()
    assert layout.unpermute_reduce_contiguous(y, inverse, torch.ones(1, 3))[0, 0].item() == 258.0


def test_reduce_masked_excludes_entries_dropped_on_overflow():
    ids = torch.tensor([[0, 1], [0, 1], [0, -1]])
    routed = layout.route_to_masked(hidden_states(3, 128, 0), ids, 2, max_m=1)
    assert routed.overflow.tolist() == [2, 1]
    y = torch.stack([torch.full((1, 128), 2.0), torch.full((1, 128), 3.0)]).to(torch.bfloat16)
    out = layout.unpermute_reduce_masked(y, routed.inverse, torch.ones(3, 2))
    assert out[:, 0].tolist() == [5.0, 0.0, 0.0]


def test_reduce_is_deterministic():
    ids = topk_ids(64, 8, 16, seed=1, drop=0.1)
    routed = layout.route_to_contiguous(hidden_states(64, 128, 2), ids, 16)
    y = expert_output((routed.a.shape[0], 128), seed=3)
    w = weights(64, 8, seed=4)
    assert torch.equal(layout.unpermute_reduce_contiguous(y, routed.inverse, w),
                       layout.unpermute_reduce_contiguous(y.clone(), routed.inverse.clone(), w.clone()))


def test_reduce_argument_errors():
    y = torch.zeros(8, 128, dtype=torch.bfloat16)
    inverse = torch.tensor([[0, 7], [-1, 3]], dtype=torch.int32)
    w = torch.ones(2, 2)
    fn = "unpermute_reduce_contiguous"
    with pytest.raises(ValueError, match=rf"{fn}: inverse\[0, 1\] = 8 is not a row of y \(8 rows\)"):
        layout.unpermute_reduce_contiguous(y, inverse + 1, w)
    with pytest.raises(ValueError, match=r"inverse\[1, 0\] = -2"):
        layout.unpermute_reduce_contiguous(y, inverse - 1, w)
    with pytest.raises(TypeError, match="inverse must have dtype int32"):
        layout.unpermute_reduce_contiguous(y, inverse.long(), w)
    with pytest.raises(ValueError, match=r"topk_weights has shape \(2, 3\) but inverse \[T, k\] needs \(2, 2\)"):
        layout.unpermute_reduce_contiguous(y, inverse, torch.ones(2, 3))
    with pytest.raises(TypeError, match="topk_weights must have dtype"):
        layout.unpermute_reduce_contiguous(y, inverse, torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="y must be 2-D"):
        layout.unpermute_reduce_contiguous(y.view(2, 4, 128), inverse, w)
    with pytest.raises(ValueError, match="unpermute_reduce_masked: y must be 3-D"):
        layout.unpermute_reduce_masked(y, inverse, w)
    with pytest.raises(ValueError, match=r"inverse\[0, 1\] = 8 is not a row of y \(8 rows\)"):
        layout.unpermute_reduce_masked(y.view(2, 4, 128), inverse + 1, w)
    with pytest.raises(ValueError, match="topk_weights is on meta but y is on cpu"):
        layout.unpermute_reduce_contiguous(y, inverse, w.to("meta"))
    with pytest.raises(ValueError, match=r"inverse\[0, 0\] = 0 is not a row of y \(0 rows\)"):
        layout.unpermute_reduce_contiguous(y[:0], inverse, w)
