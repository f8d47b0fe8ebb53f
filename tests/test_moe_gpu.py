"""The fused MoE layer on the GPU: every mode against the float64 MoE from dequantised weights, batch 1
to 4096, and the CUDA-graph decode runner replayed with new routing."""

from __future__ import annotations

import pytest
import torch

from dg_moe.layout import per_token_cast_to_fp8
from dg_moe.moe import FusedMoE, fused_moe, reference_moe
from dg_moe.moe.decode_graph import DecodeGraphRunner
from dg_moe.reference import calc_diff

from .gpu_inputs import FP8_SIMILARITY_LIMIT
from .moe_loops import hidden_states, layer, routing

pytestmark = pytest.mark.gpu

E, H, INTER, TOP_K = 16, 512, 256, 4


def cuda_layer(seed: int, shared_inter: int | None = None):
    lay = layer(E, H, INTER, seed, shared_inter)
    moved = [t.cuda() for t in lay.routed]
    shared = None
    if lay.shared is not None:
        shared = type(lay.shared)(*(t.cuda() for t in lay.shared))
    return lay, moved, shared


def reference(lay, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, rsf: float = 1.0) -> torch.Tensor:
    shared = None
    if lay.shared is not None:
        s = lay.shared
        shared = ((s.w13, s.w13_scale), (s.w2, s.w2_scale))
    return reference_moe(per_token_cast_to_fp8(hidden), (lay.w13, lay.w13_scale), (lay.w2, lay.w2_scale), ids,
                         weights, routed_scaling_factor=rsf, shared_expert=shared)


@pytest.mark.parametrize("mode", ["contiguous", "masked", "auto"])
@pytest.mark.parametrize("num_tokens", [1, 2, 7, 64, 128, 129, 300, 1000, 4096])
def test_fused_moe_matches_float64_moe(mode, num_tokens):
    seed = num_tokens + len(mode)
    lay, weights_cuda, _ = cuda_layer(seed)
    hidden = hidden_states(num_tokens, H, seed + 1)
    ids, weights = routing(num_tokens, TOP_K, E, seed + 2, drop=0.1, experts_used=E - 3)
    out = fused_moe(hidden.cuda(), *weights_cuda, ids.cuda(), weights.cuda(), mode=mode)
    assert out.dtype == torch.bfloat16 and out.shape == (num_tokens, H) and out.is_contiguous()
    want = reference(lay, hidden, ids, weights)
    diff = calc_diff(out.cpu().double(), want)
    assert 0 < diff < FP8_SIMILARITY_LIMIT, diff
    again = fused_moe(hidden.cuda(), *weights_cuda, ids.cuda(), weights.cuda(), mode=mode)
    assert torch.equal(again.view(torch.int16), out.view(torch.int16)), "a second run is not bitwise identical"


@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_fused_moe_with_shared_expert_and_scaling(mode):
    lay, weights_cuda, shared = cuda_layer(31, shared_inter=256)
    hidden = hidden_states(77, H, 32)
    ids, weights = routing(77, TOP_K, E, 33, drop=0.3)
    out = fused_moe(hidden.cuda(), *weights_cuda, ids.cuda(), weights.cuda(), mode=mode, routed_scaling_factor=2.5,
                    shared_expert=shared)
    diff = calc_diff(out.cpu().double(), reference(lay, hidden, ids, weights, 2.5))
    assert 0 < diff < FP8_SIMILARITY_LIMIT, diff


def test_masked_overflow_is_counted_on_the_device():
    lay, weights_cuda, _ = cuda_layer(41)
    hidden = hidden_states(40, H, 42)
    ids = torch.zeros(40, 1, dtype=torch.int64)  # all 40 tokens on expert 0, 16 rows kept
    weights = torch.ones(40, 1)
    out, overflow = fused_moe(hidden.cuda(), *weights_cuda, ids.cuda(), weights.cuda(), mode="masked", max_m=16,
                              return_overflow=True)
    assert overflow.cpu().tolist() == [24] + [0] * (E - 1)
    kept = torch.arange(40) < 16
    want = reference(lay, hidden, torch.where(kept.unsqueeze(1), ids, -1), weights)
    assert calc_diff(out.cpu().double(), want) < FP8_SIMILARITY_LIMIT
    assert not out[16:].any()  # dropped tokens have no other expert: zeros


def test_decode_graph_runner_replays_new_routing_100_times():
    lay, weights_cuda, _ = cuda_layer(51)
    module = FusedMoE(E, H, INTER, TOP_K, device="cuda")
    with torch.no_grad():
        for param, value in zip((module.w13_weight, module.w13_weight_scale_inv, module.w2_weight,
                                 module.w2_weight_scale_inv), weights_cuda, strict=True):
            param.copy_(value)
    runner = DecodeGraphRunner(module, batch_sizes=(1, 4, 16, 64))
    g = torch.Generator().manual_seed(52)
    for step in range(100):
        num_tokens = int(torch.randint(1, 65, (1,), generator=g))
        hidden = hidden_states(num_tokens, H, 1000 + step)
        ids, weights = routing(num_tokens, TOP_K, E, 2000 + step, drop=0.1)
        out = runner(hidden.cuda(), ids.cuda(), weights.cuda()).clone()
        size = runner.graph_for(num_tokens)
        # The same call eagerly, padded as the runner pads: the replay must be bitwise identical.
        padded_hidden = torch.zeros(size, H, dtype=torch.bfloat16)
        padded_hidden[:num_tokens] = hidden
        padded_ids = torch.full((size, TOP_K), -1, dtype=torch.int64)
        padded_ids[:num_tokens] = ids
        padded_weights = torch.zeros(size, TOP_K)
        padded_weights[:num_tokens] = weights
        eager = fused_moe(padded_hidden.cuda(), *weights_cuda, padded_ids.cuda(), padded_weights.cuda(),
                          mode="masked", max_m=size)[:num_tokens]
        assert torch.equal(out.view(torch.int16), eager.view(torch.int16)), f"replay {step} differs from eager"
        if step % 10 == 0:
            diff = calc_diff(out.cpu().double(), reference(lay, hidden, ids, weights))
            assert diff < FP8_SIMILARITY_LIMIT, (step, diff)
        assert not runner.overflow(num_tokens).any()
