"""The MoE benchmark's BF16 peer computes the same MoE (CPU: torch._grouped_mm runs there too)."""

from __future__ import annotations

import torch

from dg_moe.bench.moe import grouped_mm_moe, hbm_bandwidth
from dg_moe.moe import reference_moe
from dg_moe.reference import calc_diff


def test_grouped_mm_peer_matches_the_float64_moe():
    g = torch.Generator().manual_seed(3)
    experts, hidden, inter, tokens, top_k = 6, 256, 128, 40, 2
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) / 16).bfloat16()
    w2 = (torch.randn(experts, hidden, inter, generator=g) / 11).bfloat16()
    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    # Expert 5 gets no token: an empty group must be handled.
    ids = torch.rand(tokens, experts - 1, generator=g).topk(top_k, dim=-1).indices.int()
    weights = torch.rand(tokens, top_k, generator=g)
    out = grouped_mm_moe(x, w13, w2, ids, weights)
    assert out.dtype == torch.bfloat16 and out.shape == (tokens, hidden)
    assert calc_diff(out.double(), reference_moe(x, w13, w2, ids.long(), weights)) < 1e-4


def test_floor_bandwidth_by_gpu_name():
    assert hbm_bandwidth("NVIDIA H200") == 4.8e12
    assert hbm_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert hbm_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert hbm_bandwidth("NVIDIA A100-SXM4-80GB") is None
