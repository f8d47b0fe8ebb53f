"""fused_moe on CPU against a float64 MoE computed token by token from the dequantised FP8 tokens
and weights (the numeric contract: global similarity error < 1e-3), in every mode."""

from __future__ import annotations

import os

import pytest
import torch

from dg_moe.layout import per_token_cast_to_fp8
from dg_moe.layout._kernels import BACKEND_ENV
from dg_moe.moe import (
    AUTO_MASKED_MAX_TOKENS,
    SharedExpert,
    default_max_m,
    fused_moe,
    reference_moe,
    select_mode,
)
from dg_moe.reference import calc_diff

from .host_transfers import HostTransfers
from .moe_loops import hidden_states, layer, loop_moe, masked_policy, routing

H, INTER = 256, 128
LIMIT = 1e-3
MODES = ("contiguous", "masked", "auto")

# name: (T, k, E, drop, experts_used, routed_scaling_factor, shared intermediate or None)
CASES = {
    "batch1_top1": (1, 1, 8, 0.0, None, 1.0, None),
    "batch1_top8_shared": (1, 8, 16, 0.25, None, 2.5, 256),
    "batch300_top8_shared": (300, 8, 16, 0.1, None, 2.5, 128),
    "batch200_top1_empty_experts": (200, 1, 8, 0.2, 3, 1.0, None),
    "batch96_top2_empty_experts_shared": (96, 2, 8, 0.5, 4, 0.5, 128),
}


def _case(name: str, seed: int):
    num_tokens, top_k, num_experts, drop, used, rsf, shared_inter = CASES[name]
    lay = layer(num_experts, H, INTER, seed, shared_inter)
    hidden = hidden_states(num_tokens, H, seed + 1)
    ids, weights = routing(num_tokens, top_k, num_experts, seed + 2, drop=drop, experts_used=used)
    return lay, hidden, ids, weights, rsf


def _run(lay, hidden, ids, weights, rsf, **kwargs):
    return fused_moe(hidden, *lay.routed, ids, weights, routed_scaling_factor=rsf, shared_expert=lay.shared,
                     **kwargs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_moe(name, mode):
    lay, hidden, ids, weights, rsf = _case(name, seed=len(name))
    if CASES[name][4] is not None:
        assert not (ids >= CASES[name][4]).any()  # the experts past experts_used really are empty
    if CASES[name][3] > 0:
        assert (ids == -1).any()
    out = _run(lay, hidden, ids, weights, rsf, mode=mode)
    assert out.dtype == torch.bfloat16 and out.shape == hidden.shape
    diff = calc_diff(out, loop_moe(hidden, lay, ids, weights, rsf))
    # > 0: the intermediate activation is quantised to FP8, so an exact match would mean no FP8 path.
    assert 0 < diff < LIMIT, diff


def test_reference_detects_a_missing_scaling_factor_or_shared_expert():
    """The comparison above has teeth: leaving out either DeepSeek ingredient is far outside the limit."""
    lay, hidden, ids, weights, rsf = _case("batch300_top8_shared", seed=3)
    expected = loop_moe(hidden, lay, ids, weights, rsf)
    no_scaling = fused_moe(hidden, *lay.routed, ids, weights, shared_expert=lay.shared)
    no_shared = fused_moe(hidden, *lay.routed, ids, weights, routed_scaling_factor=rsf)
    assert calc_diff(no_scaling, expected) > 10 * LIMIT
    assert calc_diff(no_shared, expected) > 10 * LIMIT


@pytest.mark.parametrize("name", ["batch300_top8_shared", "batch96_top2_empty_experts_shared"])
def test_contiguous_and_masked_agree(name):
    lay, hidden, ids, weights, rsf = _case(name, seed=5)
    contiguous = _run(lay, hidden, ids, weights, rsf, mode="contiguous")
    masked = _run(lay, hidden, ids, weights, rsf, mode="masked")
    # On CPU both layouts feed each expert the same rows in the same order and reduce in slot
    # order, so the bits agree; kernels on a GPU may differ by a rounding.
    assert torch.equal(contiguous, masked)
    assert torch.equal(contiguous, _run(lay, hidden, ids, weights, rsf, mode="contiguous"))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the layout kernels in the interpreter")
def test_layout_kernels_read_no_padding(monkeypatch, poisoned_empty):
    """On the Triton layout kernels both modes leave their buffers' padding rows unwritten (here full of
    poison, e4m3 NaN): no stage reads them, so they still agree bit for bit with each other and with the
    float64 MoE."""
    monkeypatch.setenv(BACKEND_ENV, "triton")
    lay, hidden, ids, weights, rsf = _case("batch96_top2_empty_experts_shared", seed=11)
    contiguous = _run(lay, hidden, ids, weights, rsf, mode="contiguous")
    masked = _run(lay, hidden, ids, weights, rsf, mode="masked")
    assert torch.equal(contiguous, masked)
    assert calc_diff(masked, loop_moe(hidden, lay, ids, weights, rsf)) < LIMIT


@pytest.mark.parametrize("backend", [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                    reason="runs the layout kernels in the interpreter")),
])
def test_shared_expert_tokens_with_mn_major_scales_change_no_bit(monkeypatch, backend):
    """fused_moe quantises the shared expert's tokens with MN-major scales (the GEMM's layout, so it copies
    nothing); the routing reads them in any strides. Row-major scales, as before, give the same bits."""
    from dg_moe.moe import fused as fused_module

    monkeypatch.setenv(BACKEND_ENV, backend)
    quantise = fused_module.per_token_cast_to_fp8_unchecked
    strides = []

    def row_major(x, *args, mn_major_scales=False):
        tokens = quantise(x, *args, mn_major_scales=mn_major_scales)
        strides.append(tokens[1].stride())
        return quantise(x, *args) if row_major.on else tokens

    monkeypatch.setattr(fused_module, "per_token_cast_to_fp8_unchecked", row_major)
    lay, hidden, ids, weights, rsf = _case("batch96_top2_empty_experts_shared", seed=13)
    for mode in ("contiguous", "masked"):
        row_major.on = False
        got = _run(lay, hidden, ids, weights, rsf, mode=mode)
        row_major.on = True
        assert torch.equal(got, _run(lay, hidden, ids, weights, rsf, mode=mode))
    assert strides == [(1, 96)] * 4


def test_weights_in_bf16_and_int32_ids():
    lay, hidden, ids, weights, rsf = _case("batch96_top2_empty_experts_shared", seed=7)
    out = _run(lay, hidden, ids.int(), weights.bfloat16(), rsf, mode="masked")
    assert calc_diff(out, loop_moe(hidden, lay, ids, weights.bfloat16(), rsf)) < LIMIT


def test_token_with_no_local_expert_gets_only_the_shared_expert():
    lay, hidden, ids, weights, rsf = _case("batch96_top2_empty_experts_shared", seed=9)
    ids[:5] = -1
    for mode in ("contiguous", "masked"):
        out = _run(lay, hidden, ids, weights, rsf, mode=mode)
        no_routed = fused_moe(hidden[:5], *lay.routed, ids[:5], weights[:5], shared_expert=lay.shared, mode=mode)
        assert torch.equal(out[:5], no_routed)
        assert calc_diff(out, loop_moe(hidden, lay, ids, weights, rsf)) < LIMIT
    no_shared = fused_moe(hidden[:5], *lay.routed, ids[:5], weights[:5])
    assert torch.equal(no_shared, torch.zeros_like(no_shared))


def test_select_mode():
    assert select_mode("auto", 0) == "masked"
    assert select_mode("auto", AUTO_MASKED_MAX_TOKENS) == "masked"
    assert select_mode("auto", AUTO_MASKED_MAX_TOKENS + 1) == "contiguous"
    assert select_mode("masked", 10_000) == "masked"
    assert select_mode("contiguous", 1) == "contiguous"


@pytest.mark.parametrize("num_tokens", [AUTO_MASKED_MAX_TOKENS, AUTO_MASKED_MAX_TOKENS + 1])
def test_auto_runs_masked_up_to_the_threshold(num_tokens):
    """Seen from outside: with max_m=1 only the masked layout drops entries, so the overflow
    tells which layout "auto" ran."""
    lay = layer(4, H, INTER, seed=11)
    hidden = hidden_states(num_tokens, H, seed=12)
    ids, weights = routing(num_tokens, 2, 4, seed=13)
    out, overflow = fused_moe(hidden, *lay.routed, ids, weights, max_m=1, return_overflow=True)
    masked = num_tokens <= AUTO_MASKED_MAX_TOKENS
    assert bool(overflow.any()) == masked
    expected_mode = "masked" if masked else "contiguous"
    assert torch.equal(out, fused_moe(hidden, *lay.routed, ids, weights, max_m=1, mode=expected_mode))


def test_masked_overflow_drops_the_late_entries_and_reports_them():
    lay = layer(4, H, INTER, seed=15, shared_inter=128)
    hidden = hidden_states(40, H, seed=16)
    ids, weights = routing(40, 2, 4, seed=17, drop=0.1)
    max_m = 6
    out, overflow = fused_moe(hidden, *lay.routed, ids, weights, mode="masked", max_m=max_m,
                              shared_expert=lay.shared, return_overflow=True)
    kept, dropped = masked_policy(ids, 4, max_m)
    assert overflow.dtype == torch.int32 and overflow.tolist() == dropped and sum(dropped) > 0
    assert calc_diff(out, loop_moe(hidden, lay, ids, weights, kept=kept)) < LIMIT
    assert calc_diff(out, loop_moe(hidden, lay, ids, weights)) > 10 * LIMIT
    # The contiguous layout never drops: its overflow is zeros and its result the full MoE.
    full, none = fused_moe(hidden, *lay.routed, ids, weights, mode="contiguous", max_m=max_m,
                           shared_expert=lay.shared, return_overflow=True)
    assert none.dtype == torch.int32 and none.tolist() == [0] * 4
    assert calc_diff(full, loop_moe(hidden, lay, ids, weights)) < LIMIT


def test_default_max_m_keeps_every_token_even_on_one_expert():
    lay = layer(4, H, INTER, seed=19)
    hidden = hidden_states(50, H, seed=20)
    ids, weights = routing(50, 2, 4, seed=21)
    ids[:, 0] = 0  # every token on expert 0: the most any expert can receive with distinct ids
    ids[:, 1] = torch.where(ids[:, 1] == 0, 1, ids[:, 1])
    assert default_max_m(50) == 50 and default_max_m(0) == 1
    out, overflow = fused_moe(hidden, *lay.routed, ids, weights, mode="masked", return_overflow=True)
    assert overflow.tolist() == [0] * 4
    assert calc_diff(out, loop_moe(hidden, lay, ids, weights)) < LIMIT


def test_repeated_expert_in_a_token():
    lay = layer(4, H, INTER, seed=23)
    hidden = hidden_states(8, H, seed=24)
    ids = torch.tensor([[1, 1]] * 8)
    weights = torch.rand(8, 2, generator=torch.Generator().manual_seed(25))
    # The default max_m = T cannot hold 16 entries of expert 1: refused on CPU, not silently dropped.
    with pytest.raises(ValueError, match=r"topk_ids\[0\].*max_m=T\*k \(16\)"):
        fused_moe(hidden, *lay.routed, ids, weights, mode="masked")
    expected = loop_moe(hidden, lay, ids, weights)
    for mode, max_m in (("masked", 16), ("contiguous", None)):
        out, overflow = fused_moe(hidden, *lay.routed, ids, weights, mode=mode, max_m=max_m, return_overflow=True)
        assert overflow.tolist() == [0] * 4
        assert calc_diff(out, expected) < LIMIT


@pytest.mark.parametrize("mode", MODES)
def test_no_tokens(mode):
    lay = layer(4, H, INTER, seed=27, shared_inter=128)
    hidden = torch.empty(0, H, dtype=torch.bfloat16)
    ids, weights = torch.empty(0, 2, dtype=torch.int64), torch.empty(0, 2)
    out, overflow = fused_moe(hidden, *lay.routed, ids, weights, mode=mode, shared_expert=lay.shared,
                              return_overflow=True)
    assert out.shape == (0, H) and out.dtype == torch.bfloat16 and overflow.tolist() == [0] * 4


@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_no_host_reads(mode):
    """Meta tensors carry no values: any .item(), .tolist(), boolean-mask index or value check on a
    device tensor raises there, so a whole layer running on them reads nothing on the host."""
    t, k, e, s = 24, 4, 8, 256
    meta = torch.device("meta")
    fp8 = torch.float8_e4m3fn

    def empty(*shape, dtype=torch.float32):
        return torch.empty(shape, dtype=dtype, device=meta)

    shared = SharedExpert(empty(2 * s, H, dtype=fp8), empty(2 * s // 128, H // 128), empty(H, s, dtype=fp8),
                          empty(H // 128, s // 128))
    # Nor does it build a tensor from host data on the device (a copy that syncs the stream), which meta allows.
    with HostTransfers() as seen:
        out, overflow = fused_moe(
            empty(t, H, dtype=torch.bfloat16), empty(e, 2 * INTER, H, dtype=fp8),
            empty(e, 2 * INTER // 128, H // 128), empty(e, H, INTER, dtype=fp8), empty(e, H // 128, INTER // 128),
            empty(t, k, dtype=torch.int64), empty(t, k), mode=mode, routed_scaling_factor=2.5, shared_expert=shared,
            return_overflow=True,
        )
    assert seen.calls == []
    assert out.device == meta and out.shape == (t, H) and out.dtype == torch.bfloat16
    assert overflow.shape == (e,) and overflow.dtype == torch.int32


def test_reference_moe_matches_the_loop():
    """The layer-level reference (used by the demo) against the token loop, on FP8 and on float inputs."""
    lay, hidden, ids, weights, rsf = _case("batch96_top2_empty_experts_shared", seed=29)
    ids[3] = torch.tensor([2, 2])  # a repeated expert counts twice
    shared = ((lay.shared.w13, lay.shared.w13_scale), (lay.shared.w2, lay.shared.w2_scale))
    got = reference_moe(per_token_cast_to_fp8(hidden), (lay.w13, lay.w13_scale), (lay.w2, lay.w2_scale), ids,
                        weights, routed_scaling_factor=rsf, shared_expert=shared)
    expected = loop_moe(hidden, lay, ids, weights, rsf)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # A float hidden is taken as it is, not quantised: the FP8 rounding of the tokens then shows.
    unquantised = reference_moe(hidden, (lay.w13, lay.w13_scale), (lay.w2, lay.w2_scale), ids, weights,
                                routed_scaling_factor=rsf, shared_expert=shared)
    assert 0 < calc_diff(unquantised, expected) < LIMIT
    assert not torch.equal(unquantised, expected)
