"""fused_moe's argument checks: each bad argument raises before any work, naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch

from dg_moe.moe import SharedExpert, fused_moe

from .moe_loops import hidden_states, layer, routing

T, H, INTER, E, K = 6, 256, 128, 4, 2
FP8 = torch.float8_e4m3fn


def _args():
    lay = layer(E, H, INTER, seed=0, shared_inter=128)
    ids, weights = routing(T, K, E, seed=1)
    args = dict(hidden=hidden_states(T, H, seed=2), w13=lay.w13, w13_scale=lay.w13_scale, w2=lay.w2,
                w2_scale=lay.w2_scale, topk_ids=ids, topk_weights=weights)
    return args, lay.shared


def _call(args, shared=None, **kwargs):
    return fused_moe(args["hidden"], args["w13"], args["w13_scale"], args["w2"], args["w2_scale"],
                     args["topk_ids"], args["topk_weights"], shared_expert=shared, **kwargs)


def test_valid_arguments_pass():
    args, shared = _args()
    assert _call(args, shared).shape == (T, H)


def _with_id(ids: torch.Tensor, value: int) -> torch.Tensor:
    ids = ids.clone()
    ids[2, 1] = value
    return ids


def _strided(w: torch.Tensor) -> torch.Tensor:
    # Same shape and values, every expert one stride apart in a twice-as-large buffer.
    return torch.stack([w, w], dim=1)[:, 0]


# name -> (argument replacement from the valid args, exception type, regex the message must match)
ARGUMENT_ERRORS = {
    "hidden_dtype": (lambda a: a["hidden"].float(), "hidden", TypeError,
                     r"fused_moe: hidden must have dtype bfloat16 .*cast it with .to\(torch.bfloat16\)"),
    "hidden_ndim": (lambda a: a["hidden"].view(T, 2, H // 2), "hidden", ValueError, "fused_moe: hidden must be 2-D"),
    "hidden_size_not_128": (lambda a: a["hidden"][:, :200], "hidden", ValueError,
                            "fused_moe: hidden has H = 200, not a positive multiple of 128.*pad it to 256"),
    "w13_bf16": (lambda a: a["w13"].bfloat16(), "w13", TypeError, "fused_moe: w13 must have dtype float8_e4m3fn.*"
                 "per_block_cast_to_fp8"),
    "w13_wrong_h": (lambda a: a["w13"][..., :128].contiguous(), "w13", ValueError,
                    "fused_moe: w13 has H = 128 columns .* but hidden has H = 256"),
    "w13_intermediate_not_128": (lambda a: a["w13"][:, :192].contiguous(), "w13", ValueError,
                                 "fused_moe: w13 .* 2I = 192 .*I = 96, not a positive multiple of 128.*pad each half"),
    "w13_not_contiguous": (lambda a: _strided(a["w13"]), "w13", ValueError,
                           r"fused_moe: w13 must be contiguous.*\.contiguous\(\)"),
    "w13_scale_shape": (lambda a: a["w13_scale"][:, :1], "w13_scale", ValueError,
                        r"fused_moe: w13_scale has shape \(4, 1, 2\) but w13 of shape .* needs \(4, 2, 2\)"),
    "w13_scale_ue8m0": (lambda a: a["w13_scale"].int(), "w13_scale", TypeError,
                        "fused_moe: w13_scale must have dtype float32.*unpack_ue8m0_from_int"),
    "w2_fewer_experts": (lambda a: a["w2"][:3], "w2", ValueError,
                         "fused_moe: w2 holds 3 experts .* but w13 holds 4; dim 0 of w13, w13_scale, w2 and w2_scale"),
    "w2_wrong_intermediate": (lambda a: torch.zeros(E, H, 256, dtype=FP8), "w2", ValueError,
                              r"fused_moe: w2 has shape \(4, 256, 256\) but w13 .* needs \(4, 256, 128\)"),
    "w2_scale_experts": (lambda a: a["w2_scale"][:2], "w2_scale", ValueError,
                         r"fused_moe: w2_scale has shape \(2, 2, 1\) but w2 of shape .* needs \(4, 2, 1\)"),
    "ids_float": (lambda a: a["topk_ids"].float(), "topk_ids", TypeError,
                  r"fused_moe: topk_ids must have dtype int32 or int64.*\.to\(torch.int32\)"),
    "ids_rows": (lambda a: a["topk_ids"][:4], "topk_ids", ValueError,
                 "fused_moe: topk_ids has 4 rows but hidden has 6 tokens"),
    "ids_out_of_range": (lambda a: _with_id(a["topk_ids"], E), "topk_ids", ValueError,
                         r"fused_moe: topk_ids\[2, 1\] = 4 is not an expert id.*map global ids to local ones"),
    "ids_below_minus_one": (lambda a: _with_id(a["topk_ids"], -2), "topk_ids", ValueError,
                            r"fused_moe: topk_ids\[2, 1\] = -2 is not an expert id"),
    "weights_shape": (lambda a: a["topk_weights"][:, :1], "topk_weights", ValueError,
                      r"fused_moe: topk_weights has shape \(6, 1\) but topk_ids \[T, k\]"),
    "weights_int": (lambda a: a["topk_ids"], "topk_weights", TypeError,
                    "fused_moe: topk_weights must have dtype bfloat16 or float16 or float32"),
    "weights_device": (lambda a: a["topk_weights"].to("meta"), "topk_weights", ValueError,
                       "fused_moe: topk_weights is on meta but hidden is on cpu; move every tensor to one device"),
    "w2_device": (lambda a: a["w2"].to("meta"), "w2", ValueError, "fused_moe: w2 is on meta but hidden is on cpu"),
}


@pytest.mark.parametrize("name", list(ARGUMENT_ERRORS))
def test_argument_errors(name):
    replace, argument, error, pattern = ARGUMENT_ERRORS[name]
    args, _ = _args()
    args[argument] = replace(args)
    with pytest.raises(error, match=pattern):
        _call(args)


def test_no_slots():
    args, _ = _args()
    args["topk_ids"], args["topk_weights"] = args["topk_ids"][:, :0], args["topk_weights"][:, :0]
    with pytest.raises(ValueError, match="fused_moe: topk_ids has no slot.*top-k must be >= 1"):
        _call(args)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(mode="decode"), ValueError, "fused_moe: mode must be one of 'auto', 'contiguous', 'masked', got 'decode'"),
    (dict(max_m=0), ValueError, "fused_moe: max_m must be > 0"),
    (dict(max_m=2.0), TypeError, "fused_moe: max_m must be a positive int"),
    (dict(routed_scaling_factor=float("nan")), ValueError, "fused_moe: routed_scaling_factor must be finite"),
    (dict(routed_scaling_factor=torch.tensor(2.5)), TypeError,
     "fused_moe: routed_scaling_factor must be a Python float"),
])
def test_option_errors(kwargs, error, pattern):
    args, _ = _args()
    with pytest.raises(error, match=pattern):
        _call(args, **kwargs)


@pytest.mark.parametrize("field, replace, error, pattern", [
    ("w13", lambda s: s.w13[:, :128].contiguous(), ValueError,
     "fused_moe: shared_expert.w13 has H = 128 columns"),
    ("w13", lambda s: s.w13[:192], ValueError, "fused_moe: shared_expert.w13 .* 2I = 192 "),
    ("w13_scale", lambda s: s.w13_scale[:1], ValueError,
     r"fused_moe: shared_expert.w13_scale has shape \(1, 2\) but shared_expert.w13 of shape .* needs \(2, 2\)"),
    ("w13_scale", lambda s: s.w13_scale.t(), ValueError,
     r"fused_moe: shared_expert.w13_scale must be contiguous.*\.contiguous\(\)"),
    ("w2", lambda s: s.w2.float(), TypeError, "fused_moe: shared_expert.w2 must have dtype float8_e4m3fn"),
    ("w2", lambda s: s.w2[:, :64], ValueError, r"fused_moe: shared_expert.w2 has shape \(256, 64\)"),
    ("w2_scale", lambda s: s.w2_scale.to("meta"), ValueError,
     "fused_moe: shared_expert.w2_scale is on meta but hidden is on cpu"),
])
def test_shared_expert_errors(field, replace, error, pattern):
    args, shared = _args()
    with pytest.raises(error, match=pattern):
        _call(args, shared._replace(**{field: replace(shared)}))


def test_shared_expert_must_be_the_named_tuple():
    args, shared = _args()
    with pytest.raises(TypeError, match="fused_moe: shared_expert must be a dg_moe.moe.SharedExpert"):
        _call(args, tuple(shared))
    assert isinstance(shared, SharedExpert)
