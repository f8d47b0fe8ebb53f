"""fused_moe_bf16 on CPU (its GEMMs run the float64 reference there) against the float64 MoE on the same
BF16 weights, in every mode; its overflow, checks and module; and its Triton layout kernels in the
interpreter.

Measured with these seeds (global similarity, ``calc_diff``, the same in every mode): against
``reference_moe(..., bf16_intermediates=True)``, which rounds gate_up, the activation and each expert's
output to BF16 where the path writes them, 1.29e-6 to 1.56e-6: the output's one BF16 rounding (a
relative error of about 1.6e-3 RMS, 1.3e-6 in this metric) and float32 accumulation. Against the
unrounded float64 MoE 5.9e-6 to 7.4e-6, the three intermediate BF16 roundings included.
ROUNDED_LIMIT keeps 3x over the first; FLOAT64_LIMIT is the BF16 kernels' own bound against float64
(``dg_moe.reference.calc_diff``), 1.35x over the second. An FP8 rounding anywhere (about 5e-4 each) or a
wrong weight, id or slot lands far outside both.
"""

from __future__ import annotations

import os

import pytest
import torch

from dg_moe.layout import _kernels
from dg_moe.layout._kernels import BACKEND_ENV
from dg_moe.layout.activation import (
    silu_and_mul_to_bf16_contiguous_unchecked,
    silu_and_mul_to_bf16_masked_unchecked,
)
from dg_moe.layout.routing_contiguous import route_to_contiguous_unchecked
from dg_moe.layout.routing_masked import route_to_masked_unchecked
from dg_moe.moe import AUTO_MASKED_MAX_TOKENS, FusedMoE, fused_moe_bf16, reference_moe
from dg_moe.reference import calc_diff

from .host_transfers import HostTransfers
from .moe_loops import bf16_layer, hidden_states, masked_policy, routing

H, INTER = 256, 128
ROUNDED_LIMIT = 5e-6  # against the reference that rounds where the path does
FLOAT64_LIMIT = 1e-5  # against the unrounded float64 MoE
MODES = ("contiguous", "masked", "auto")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# name: (T, k, E, drop, experts_used, routed_scaling_factor)
CASES = {
    "batch1_top1": (1, 1, 8, 0.0, None, 1.0),
    "batch1_top8_dropped": (1, 8, 16, 0.25, None, 2.5),
    "batch200_top8_dropped": (200, 8, 16, 0.1, None, 2.5),
    "batch150_top1_empty_experts": (150, 1, 8, 0.2, 3, 1.0),
    "batch96_top2_empty_experts": (96, 2, 8, 0.5, 4, 0.5),
}


def _case(name: str, seed: int):
    num_tokens, top_k, num_experts, drop, used, rsf = CASES[name]
    w13, w2 = bf16_layer(num_experts, H, INTER, seed)
    hidden = hidden_states(num_tokens, H, seed + 1)
    ids, weights = routing(num_tokens, top_k, num_experts, seed + 2, drop=drop, experts_used=used)
    return hidden, w13, w2, ids, weights, rsf


def _reference(hidden, w13, w2, ids, weights, rsf=1.0, rounded=True):
    return reference_moe(hidden, w13, w2, ids, weights, routed_scaling_factor=rsf, bf16_intermediates=rounded)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_moe(name, mode):
    hidden, w13, w2, ids, weights, rsf = _case(name, seed=len(name))
    if CASES[name][3] > 0:
        assert (ids == -1).any()  # some slots really are skipped
    out = fused_moe_bf16(hidden, w13, w2, ids, weights, mode=mode, routed_scaling_factor=rsf)
    assert out.dtype == torch.bfloat16 and out.shape == hidden.shape and out.is_contiguous()
    assert not out.isnan().any()
    assert calc_diff(out, _reference(hidden, w13, w2, ids, weights, rsf)) < ROUNDED_LIMIT
    assert calc_diff(out, _reference(hidden, w13, w2, ids, weights, rsf, rounded=False)) < FLOAT64_LIMIT


def test_reference_detects_a_missing_scaling_factor_or_fp8_rounding():
    """The bounds have teeth: no routed scaling, or the FP8 layer on the same weights, is far outside them."""
    hidden, w13, w2, ids, weights, rsf = _case("batch200_top8_dropped", seed=3)
    expected = _reference(hidden, w13, w2, ids, weights, rsf)
    assert calc_diff(fused_moe_bf16(hidden, w13, w2, ids, weights), expected) > 100 * FLOAT64_LIMIT
    fp8 = FusedMoE.from_bf16(w13, w2, ids.shape[1], routed_scaling_factor=rsf)
    assert calc_diff(fp8(hidden, ids, weights), expected) > 10 * FLOAT64_LIMIT


@pytest.mark.parametrize("name", ["batch200_top8_dropped", "batch96_top2_empty_experts"])
def test_contiguous_and_masked_agree(name):
    hidden, w13, w2, ids, weights, rsf = _case(name, seed=5)
    contiguous = fused_moe_bf16(hidden, w13, w2, ids, weights, mode="contiguous", routed_scaling_factor=rsf)
    masked = fused_moe_bf16(hidden, w13, w2, ids, weights, mode="masked", routed_scaling_factor=rsf)
    # On CPU both layouts feed each expert the same rows in the same order and reduce in slot order.
    assert torch.equal(contiguous, masked)


@pytest.mark.parametrize("num_tokens", [AUTO_MASKED_MAX_TOKENS, AUTO_MASKED_MAX_TOKENS + 1])
def test_auto_runs_masked_up_to_the_threshold(num_tokens):
    # With max_m=1 only the masked layout drops entries, so the overflow tells which layout "auto" ran.
    w13, w2 = bf16_layer(4, H, INTER, seed=11)
    hidden = hidden_states(num_tokens, H, seed=12)
    ids, weights = routing(num_tokens, 2, 4, seed=13)
    out, overflow = fused_moe_bf16(hidden, w13, w2, ids, weights, max_m=1, return_overflow=True)
    masked = num_tokens <= AUTO_MASKED_MAX_TOKENS
    assert bool(overflow.any()) == masked
    mode = "masked" if masked else "contiguous"
    assert torch.equal(out, fused_moe_bf16(hidden, w13, w2, ids, weights, max_m=1, mode=mode))


def test_masked_overflow_drops_the_late_entries_and_reports_them():
    w13, w2 = bf16_layer(4, H, INTER, seed=15)
    hidden = hidden_states(40, H, seed=16)
    ids, weights = routing(40, 2, 4, seed=17, drop=0.1)
    max_m = 6
    out, overflow = fused_moe_bf16(hidden, w13, w2, ids, weights, mode="masked", max_m=max_m, return_overflow=True)
    kept, dropped = masked_policy(ids, 4, max_m)
    assert overflow.dtype == torch.int32 and overflow.tolist() == dropped and sum(dropped) > 0
    kept_ids = torch.where(torch.tensor(kept), ids, -1)
    assert calc_diff(out, _reference(hidden, w13, w2, kept_ids, weights)) < ROUNDED_LIMIT
    assert calc_diff(out, _reference(hidden, w13, w2, ids, weights)) > 100 * FLOAT64_LIMIT
    # The contiguous layout never drops: zeros for overflow and the full MoE.
    full, none = fused_moe_bf16(hidden, w13, w2, ids, weights, mode="contiguous", max_m=max_m,
                                return_overflow=True)
    assert none.dtype == torch.int32 and none.tolist() == [0] * 4
    assert calc_diff(full, _reference(hidden, w13, w2, ids, weights)) < ROUNDED_LIMIT


def test_token_with_no_local_expert_is_zero_and_int32_ids_bf16_weights():
    hidden, w13, w2, ids, weights, rsf = _case("batch96_top2_empty_experts", seed=9)
    ids[:5] = -1
    for mode in ("contiguous", "masked"):
        out = fused_moe_bf16(hidden, w13, w2, ids.int(), weights.bfloat16(), mode=mode)
        assert torch.equal(out[:5], torch.zeros_like(out[:5]))
        assert calc_diff(out, _reference(hidden, w13, w2, ids, weights.bfloat16())) < ROUNDED_LIMIT


def test_repeated_expert_needs_max_m():
    w13, w2 = bf16_layer(4, H, INTER, seed=23)
    hidden = hidden_states(8, H, seed=24)
    ids = torch.tensor([[1, 1]] * 8)
    weights = torch.rand(8, 2, generator=torch.Generator().manual_seed(25))
    with pytest.raises(ValueError, match=r"fused_moe_bf16: topk_ids\[0\].*max_m=T\*k \(16\)"):
        fused_moe_bf16(hidden, w13, w2, ids, weights, mode="masked")
    expected = _reference(hidden, w13, w2, ids, weights)
    for mode, max_m in (("masked", 16), ("contiguous", None)):
        out = fused_moe_bf16(hidden, w13, w2, ids, weights, mode=mode, max_m=max_m)
        assert calc_diff(out, expected) < ROUNDED_LIMIT


@pytest.mark.parametrize("mode", MODES)
def test_no_tokens(mode):
    w13, w2 = bf16_layer(4, H, INTER, seed=27)
    out, overflow = fused_moe_bf16(torch.empty(0, H, dtype=torch.bfloat16), w13, w2,
                                   torch.empty(0, 2, dtype=torch.int64), torch.empty(0, 2), mode=mode,
                                   return_overflow=True)
    assert out.shape == (0, H) and out.dtype == torch.bfloat16 and overflow.tolist() == [0] * 4


@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_no_host_reads(mode):
    """Meta tensors carry no values: a whole layer running on them reads nothing on the host."""
    t, k, e = 24, 4, 8
    meta = torch.device("meta")

    def empty(*shape, dtype=torch.bfloat16):
        return torch.empty(shape, dtype=dtype, device=meta)

    # Nor does it build a tensor from host data on the device (a copy that syncs the stream), which meta allows.
    with HostTransfers() as seen:
        out, overflow = fused_moe_bf16(empty(t, H), empty(e, 2 * INTER, H), empty(e, H, INTER),
                                       empty(t, k, dtype=torch.int64), empty(t, k, dtype=torch.float32), mode=mode,
                                       routed_scaling_factor=2.5, return_overflow=True)
    assert seen.calls == []
    assert out.device == meta and out.shape == (t, H) and out.dtype == torch.bfloat16
    assert overflow.shape == (e,) and overflow.dtype == torch.int32


def _valid_args():
    w13, w2 = bf16_layer(4, H, INTER, seed=31)
    ids, weights = routing(3, 2, 4, seed=32)
    return {"hidden": hidden_states(3, H, seed=33), "w13": w13, "w2": w2, "topk_ids": ids, "topk_weights": weights}


@pytest.mark.parametrize("name,change,error,pattern", [
    ("w13", lambda t: t.to(torch.float8_e4m3fn), TypeError, r"fused_moe_bf16: w13 .*torch\.bfloat16.*fused_moe"),
    ("w2", lambda t: t.float(), TypeError, r"fused_moe_bf16: w2 .*\.to\(torch\.bfloat16\)"),
    ("w2", lambda t: t[:, :, :64], ValueError, r"fused_moe_bf16: w2 .*\[E, H, I\]"),
    ("w2", lambda t: t[:3], ValueError, r"fused_moe_bf16: w2 holds 3 experts"),
    ("w13", lambda t: t.transpose(1, 2).contiguous().transpose(1, 2), ValueError,
     r"fused_moe_bf16: w13 must be contiguous.*once"),
    ("w13", lambda t: t[:, :, :128], ValueError, r"fused_moe_bf16: w13 has H = 128 columns"),
    ("hidden", lambda t: t.float(), TypeError, r"fused_moe_bf16: hidden .*\.to\(torch\.bfloat16\)"),
    ("topk_ids", lambda t: t[:2], ValueError, r"fused_moe_bf16: topk_ids has 2 rows"),
    ("topk_weights", lambda t: t[:, :1], ValueError, r"fused_moe_bf16: topk_weights"),
])
def test_argument_errors(name, change, error, pattern):
    args = _valid_args()
    args[name] = change(args[name])
    with pytest.raises(error, match=pattern):
        fused_moe_bf16(**args)


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"mode": "decode"}, ValueError, r"fused_moe_bf16: mode must be one of"),
    ({"max_m": 0}, ValueError, r"fused_moe_bf16: max_m"),
    ({"routed_scaling_factor": float("inf")}, ValueError, r"fused_moe_bf16: routed_scaling_factor must be finite"),
])
def test_option_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        fused_moe_bf16(**_valid_args(), **kwargs)


def test_module_keeps_bf16_weights():
    hidden, w13, w2, ids, weights, rsf = _case("batch96_top2_empty_experts", seed=35)
    layer = FusedMoE.from_bf16(w13, w2, ids.shape[1], routed_scaling_factor=rsf, mode="masked", precision="bf16")
    assert layer.w13_weight.dtype == torch.bfloat16 and torch.equal(layer.w13_weight, w13)
    assert torch.equal(layer.w2_weight, w2) and not hasattr(layer, "w13_weight_scale_inv")
    assert "precision='bf16'" in repr(layer)
    out, overflow = layer(hidden, ids, weights, return_overflow=True)
    want = fused_moe_bf16(hidden, w13, w2, ids, weights, mode="masked", routed_scaling_factor=rsf)
    assert torch.equal(out, want) and overflow.tolist() == [0] * w13.shape[0]
    # A float32 source is cast to BF16 once, when the layer is built.
    assert torch.equal(FusedMoE.from_bf16(w13.float(), w2.float(), 2, precision="bf16").w2_weight, w2)


def test_module_precision_errors():
    w13, w2 = bf16_layer(4, H, INTER, seed=37)
    with pytest.raises(ValueError, match=r"FusedMoE.from_bf16: precision must be 'fp8' .* or 'bf16'"):
        FusedMoE.from_bf16(w13, w2, 2, precision="fp16")
    with pytest.raises(ValueError, match=r"FusedMoE.from_bf16: shared_w13/shared_w2 need precision='fp8'"):
        FusedMoE.from_bf16(w13, w2, 2, shared_w13=w13[0], shared_w2=w2[0], precision="bf16")
    with pytest.raises(ValueError, match=r"FusedMoE: a shared expert needs precision='fp8'"):
        FusedMoE(4, H, INTER, 2, shared_intermediate_size=128, precision="bf16")


# ---- the Triton layout kernels (interpreter on CPU), against the PyTorch formulation ----------------------

interpreter_only = pytest.mark.skipif(not INTERPRETED, reason="runs the layout kernels in Triton's interpreter")


def _with_backend(monkeypatch: pytest.MonkeyPatch, backend: str, fn, *args, **kwargs):
    monkeypatch.setenv(BACKEND_ENV, backend)
    return fn(*args, **kwargs)


@interpreter_only
@pytest.mark.parametrize("layout", ["contiguous", "masked"])
def test_row_copy_kernel_matches_the_gather(monkeypatch, poisoned_empty, layout):
    """The rows that hold an entry are the tokens' rows bit for bit (NaN and -0.0 included); the maps agree."""
    hidden = hidden_states(20, H, seed=41)
    hidden[0, :3] = torch.tensor([float("nan"), -0.0, float("inf")])
    ids, _ = routing(20, 3, 8, seed=42, drop=0.2, dtype=torch.int32)

    def route():
        if layout == "contiguous":
            return route_to_contiguous_unchecked("t", hidden, ids, 8, zero_padding=False, bf16=True)
        return route_to_masked_unchecked("t", hidden, ids, 8, 5, zero_padding=False, bf16=True)

    want = _with_backend(monkeypatch, "torch", route)
    got = _with_backend(monkeypatch, "triton", route)
    assert got.a.dtype == torch.bfloat16 and got.a.shape == want.a.shape and got.sfa is None
    assert torch.equal(got.inverse, want.inverse)
    rows = want.inverse[want.inverse >= 0].long()
    flat = (got.a, want.a) if layout == "contiguous" else (got.a.view(-1, H), want.a.view(-1, H))
    assert torch.equal(flat[0][rows].view(torch.int16), flat[1][rows].view(torch.int16))
    assert torch.equal(flat[1][rows].view(torch.int16)[0, :3], hidden[0, :3].view(torch.int16))


@interpreter_only
def test_bf16_silu_kernels_match_and_leave_padding_unwritten(monkeypatch, poisoned_empty):
    g = torch.Generator().manual_seed(43)
    x = (torch.randn(3, 6, 2 * INTER, generator=g) * 3).bfloat16()
    masked_m = torch.tensor([6, 0, 2], dtype=torch.int32)
    want = _with_backend(monkeypatch, "torch", silu_and_mul_to_bf16_masked_unchecked, x, masked_m)
    got = _with_backend(monkeypatch, "triton", silu_and_mul_to_bf16_masked_unchecked, x, masked_m)
    assert got.dtype == torch.bfloat16 and got.shape == (3, 6, INTER)
    for e, m in enumerate(masked_m.tolist()):
        # exp may differ from PyTorch's in the last bit, so one BF16 ulp at most.
        torch.testing.assert_close(got[e, :m], want[e, :m], rtol=2**-7, atol=0)
        assert (got[e, m:].view(torch.uint8) == poisoned_empty).all()  # never written
    layout = torch.tensor([0, 0, -1, 1, -1, 2], dtype=torch.int32)
    flat = x.view(-1, 2 * INTER)[:6]
    want = _with_backend(monkeypatch, "torch", silu_and_mul_to_bf16_contiguous_unchecked, flat, layout)
    got = _with_backend(monkeypatch, "triton", silu_and_mul_to_bf16_contiguous_unchecked, flat, layout)
    rows = layout >= 0
    torch.testing.assert_close(got[rows], want[rows], rtol=2**-7, atol=0)
    assert (got[~rows].view(torch.uint8) == poisoned_empty).all()


@interpreter_only
def test_layer_on_the_layout_kernels_reads_no_padding(monkeypatch, poisoned_empty):
    """Both modes on the Triton layout kernels, every unwritten row full of poison (BF16 NaN): no stage reads
    one, so they agree with each other and with the float64 MoE."""
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert _kernels.enabled(torch.device("cpu"))
    hidden, w13, w2, ids, weights, rsf = _case("batch96_top2_empty_experts", seed=45)
    contiguous = fused_moe_bf16(hidden, w13, w2, ids, weights, mode="contiguous", routed_scaling_factor=rsf)
    masked = fused_moe_bf16(hidden, w13, w2, ids, weights, mode="masked", routed_scaling_factor=rsf)
    assert not masked.isnan().any()
    assert calc_diff(contiguous, masked) < 1e-7
    assert calc_diff(masked, _reference(hidden, w13, w2, ids, weights, rsf)) < ROUNDED_LIMIT
