"""FusedMoE: weights in vLLM's layout, quantised from BF16, forward equal to fused_moe on them."""

from __future__ import annotations

import pytest
import torch

from dg_moe import FusedMoE as TopLevelFusedMoE
from dg_moe import fused_moe as top_level_fused_moe
from dg_moe.layout import per_block_cast_to_fp8
from dg_moe.moe import FusedMoE, SharedExpert, fused_moe, quantize_expert_weights
from dg_moe.reference import calc_diff

from .moe_loops import Layer, gen, hidden_states, loop_moe, routing

E, H, INTER, SHARED, K = 6, 256, 128, 256, 3


def _bf16_weights(seed: int):
    g = gen(seed)
    return (
        (torch.randn(E, 2 * INTER, H, generator=g) / 16).bfloat16(),
        (torch.randn(E, H, INTER, generator=g) / 11).bfloat16(),
        (torch.randn(2 * SHARED, H, generator=g) / 16).bfloat16(),
        (torch.randn(H, SHARED, generator=g) / 16).bfloat16(),
    )


def _layer(seed: int = 0, **kwargs) -> FusedMoE:
    w13, w2, s13, s2 = _bf16_weights(seed)
    return FusedMoE.from_bf16(w13, w2, K, shared_w13=s13, shared_w2=s2, **kwargs)


def test_top_level_exports():
    assert TopLevelFusedMoE is FusedMoE and top_level_fused_moe is fused_moe


def test_from_bf16_quantises_each_expert_per_block():
    w13, w2, s13, s2 = _bf16_weights(1)
    moe = FusedMoE.from_bf16(w13, w2, K, shared_w13=s13, shared_w2=s2)
    for e in range(E):
        q, sf = per_block_cast_to_fp8(w13[e])
        assert torch.equal(moe.w13_weight[e].view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(moe.w13_weight_scale_inv[e], sf)
        q, sf = per_block_cast_to_fp8(w2[e])
        assert torch.equal(moe.w2_weight[e].view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(moe.w2_weight_scale_inv[e], sf)
    q, sf = per_block_cast_to_fp8(s2)
    assert torch.equal(moe.shared_w2_weight.view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(moe.shared_w2_weight_scale_inv, sf)
    # The experts differ, so a layer that stored one expert E times would fail above.
    assert not torch.equal(moe.w13_weight_scale_inv[0], moe.w13_weight_scale_inv[1])


def test_parameters_in_vllm_layout():
    moe = _layer()
    shapes = {name: (tuple(p.shape), p.dtype, p.requires_grad) for name, p in moe.named_parameters()}
    fp8, f32 = torch.float8_e4m3fn, torch.float32
    assert shapes == {
        "w13_weight": ((E, 2 * INTER, H), fp8, False),
        "w13_weight_scale_inv": ((E, 2 * INTER // 128, H // 128), f32, False),
        "w2_weight": ((E, H, INTER), fp8, False),
        "w2_weight_scale_inv": ((E, H // 128, INTER // 128), f32, False),
        "shared_w13_weight": ((2 * SHARED, H), fp8, False),
        "shared_w13_weight_scale_inv": ((2 * SHARED // 128, H // 128), f32, False),
        "shared_w2_weight": ((H, SHARED), fp8, False),
        "shared_w2_weight_scale_inv": ((H // 128, SHARED // 128), f32, False),
    }
    plain = FusedMoE(E, H, INTER, K)
    assert plain.shared_expert is None
    assert {name for name, _ in plain.named_parameters()} == {
        "w13_weight", "w13_weight_scale_inv", "w2_weight", "w2_weight_scale_inv"}


@pytest.mark.parametrize("mode", ["contiguous", "masked", "auto"])
def test_forward_equals_fused_moe_on_its_weights(mode):
    moe = _layer(2, routed_scaling_factor=2.5, mode=mode)
    hidden = hidden_states(70, H, seed=3)
    ids, weights = routing(70, K, E, seed=4, drop=0.2)
    out = moe(hidden, ids, weights)
    shared = SharedExpert(moe.shared_w13_weight, moe.shared_w13_weight_scale_inv, moe.shared_w2_weight,
                          moe.shared_w2_weight_scale_inv)
    expected = fused_moe(hidden, moe.w13_weight, moe.w13_weight_scale_inv, moe.w2_weight, moe.w2_weight_scale_inv,
                         ids, weights, mode=mode, routed_scaling_factor=2.5, shared_expert=shared)
    assert torch.equal(out, expected)
    # And the module computes the MoE itself, not just whatever fused_moe returns.
    lay = Layer(moe.w13_weight, moe.w13_weight_scale_inv, moe.w2_weight, moe.w2_weight_scale_inv, shared)
    assert calc_diff(out, loop_moe(hidden, lay, ids, weights, 2.5)) < 1e-3


def test_forward_passes_max_m_and_reports_overflow():
    moe = _layer(5, mode="masked", max_m=2)
    hidden = hidden_states(30, H, seed=6)
    ids, weights = routing(30, K, E, seed=7)
    out, overflow = moe(hidden, ids, weights, return_overflow=True)
    assert int(overflow.sum()) > 0
    assert torch.equal(out, fused_moe(hidden, *_params(moe), ids, weights, mode="masked", max_m=2,
                                      shared_expert=moe.shared_expert))


def _params(moe: FusedMoE):
    return moe.w13_weight, moe.w13_weight_scale_inv, moe.w2_weight, moe.w2_weight_scale_inv


def test_state_dict_round_trip():
    """A checkpoint loader fills an empty layer by name and gets the same layer."""
    source = _layer(8, routed_scaling_factor=2.5)
    target = FusedMoE(E, H, INTER, K, shared_intermediate_size=SHARED, routed_scaling_factor=2.5)
    hidden = hidden_states(10, H, seed=9)
    ids, weights = routing(10, K, E, seed=10)
    assert not torch.equal(target(hidden, ids, weights), source(hidden, ids, weights))
    target.load_state_dict(source.state_dict())
    assert torch.equal(target(hidden, ids, weights), source(hidden, ids, weights))


def test_quantize_expert_weights():
    w13, _, s13, _ = _bf16_weights(11)
    q, sf = quantize_expert_weights(w13)
    assert q.shape == w13.shape and sf.shape == (E, 2 * INTER // 128, H // 128)
    assert torch.equal(sf[4], per_block_cast_to_fp8(w13[4])[1])
    q2, sf2 = quantize_expert_weights(s13)
    assert torch.equal(sf2, per_block_cast_to_fp8(s13)[1]) and q2.dtype == torch.float8_e4m3fn
    with pytest.raises(ValueError, match="quantize_expert_weights: w must be"):
        quantize_expert_weights(torch.zeros(4))


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(hidden_size=200), ValueError,
     "FusedMoE: hidden_size = 200, not a positive multiple of 128.*pad the weights to 256"),
    (dict(intermediate_size=96), ValueError, "FusedMoE: intermediate_size = 96, not a positive multiple of 128"),
    (dict(num_experts=0), ValueError, "FusedMoE: num_experts must be > 0"),
    (dict(top_k=1.5), TypeError, "FusedMoE: top_k must be a positive int"),
    (dict(shared_intermediate_size=100), ValueError, "FusedMoE: shared_intermediate_size = 100"),
    (dict(mode="prefill"), ValueError, "FusedMoE: mode must be one of"),
    (dict(max_m=0), ValueError, "FusedMoE: max_m must be > 0"),
    (dict(routed_scaling_factor="2.5"), TypeError, "FusedMoE: routed_scaling_factor must be a Python float"),
])
def test_constructor_errors(kwargs, error, pattern):
    args = dict(num_experts=E, hidden_size=H, intermediate_size=INTER, top_k=K) | kwargs
    with pytest.raises(error, match=pattern):
        FusedMoE(**args)


def test_from_bf16_and_forward_errors():
    w13, w2, s13, s2 = _bf16_weights(12)
    with pytest.raises(ValueError, match=r"FusedMoE.from_bf16: w2 has shape \(6, 256, 64\)"):
        FusedMoE.from_bf16(w13, w2[..., :64], K)
    with pytest.raises(ValueError, match="FusedMoE.from_bf16: pass both shared_w13 and shared_w2"):
        FusedMoE.from_bf16(w13, w2, K, shared_w13=s13)
    with pytest.raises(TypeError, match="FusedMoE.from_bf16: w13 must have dtype"):
        FusedMoE.from_bf16(w13.to(torch.float8_e4m3fn), w2, K)
    moe = FusedMoE.from_bf16(w13, w2, K)
    ids, weights = routing(4, 2, E, seed=13)
    with pytest.raises(ValueError, match="FusedMoE.forward: topk_ids has 2 slots per token .* top_k = 3"):
        moe(hidden_states(4, H, seed=14), ids, weights)
