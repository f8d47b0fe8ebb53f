"""The public ops as torch library ops (dg_moe.custom_ops): torch.library.opcheck of every registered op on
small CPU inputs, and torch.compile(fullgraph=True) over small MoE blocks, equal to eager."""

from __future__ import annotations

import time

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import dg_moe
from dg_moe.custom_ops import registered_ops
from dg_moe.layout import route_to_contiguous, route_to_masked, silu_and_mul_to_fp8_masked, unpermute_reduce_masked
from dg_moe.moe import fused_moe, fused_moe_bf16
from dg_moe.reference.common import RECIPE_1D1D, RECIPE_1D2D

from .moe_loops import bf16_layer, hidden_states, layer, routing
from .test_ref_explicit import quant
from .test_ref_grouped import contiguous_case, k_grouped_case, layouts
from .test_reference import as_layout, fp8_case

BF16, I32 = torch.bfloat16, torch.int32
H, INTER, E, TOP_K = 128, 128, 4, 2  # the smallest MoE the ops take: one 128-block along H and I


def _flat(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return pair[0], pair[1]


def _dense_fp8(layout: str) -> tuple:
    a_q, sfa, b_q, sfb, _ = fp8_case(4, 130, 256, RECIPE_1D2D, "row", seed=1)
    a, b = as_layout(layout, a_q, sfa, b_q, sfb)
    return (*a, *b, torch.zeros(4, 130, dtype=BF16), None, None, "nk", False)


def _dense_fp8_accumulate() -> tuple:
    # Recipe (1, 1, 128) with c: FP32 d accumulated into.
    a_q, sfa, b_q, sfb, _ = fp8_case(3, 5, 128, RECIPE_1D1D, "row", seed=2)
    return a_q, sfa, b_q, sfb, torch.zeros(3, 5), torch.randn(3, 5), list(RECIPE_1D1D), "nk", False


def _dense_bf16(layout: str) -> tuple:
    m, n, k = 3, 5, 64
    a = torch.randn(k, m) if layout[0] == "t" else torch.randn(m, k)
    b = torch.randn(k, n) if layout[1] == "n" else torch.randn(n, k)
    return a.to(BF16), b.to(BF16), torch.zeros(m, n, dtype=BF16), torch.randn(m, n, dtype=BF16), "nk"


def _contiguous_fp8(variant: str, psum: bool) -> tuple:
    a, b, per_row, ends, _ = contiguous_case([3, 0, 2], 64, 128, seed=3)
    if variant == "nn":
        b = (b[0].transpose(1, 2).contiguous(), b[1].transpose(1, 2).contiguous())
    d = torch.zeros(a[0].shape[0], 64, dtype=BF16)
    extra = (None,) if variant == "nt" else ()
    return (*a, *b, d, ends if psum else per_row, None, "nk", False, psum, *extra)


def _contiguous_bf16(variant: str) -> tuple:
    per_row, _ = layouts([2, 0, 1])
    a = torch.randn(per_row.shape[0], 32).to(BF16)
    b = torch.randn(3, 32, 16) if variant == "nn" else torch.randn(3, 16, 32)
    extra = (None,) if variant == "nt" else ()
    return (a, b.to(BF16), torch.zeros(per_row.shape[0], 16, dtype=BF16), per_row, "nk", False, *extra)


def _masked_fp8() -> tuple:
    a_q, sfa = quant(torch.randn(3, 4, 128), 1, 128)
    b_q, sfb = quant(torch.randn(3, 64, 128), 128, 128)
    masked_m = torch.tensor([0, 4, 2], dtype=I32)
    return a_q, sfa, b_q, sfb, torch.zeros(3, 4, 64, dtype=BF16), masked_m, 4, None, "nk", False


def _masked_bf16() -> tuple:
    a, b = torch.randn(3, 4, 32).to(BF16), torch.randn(3, 16, 32).to(BF16)
    return a, b, torch.zeros(3, 4, 16, dtype=BF16), torch.tensor([1, 0, 4], dtype=I32), 2, "nk"


def _k_grouped_fp8() -> tuple:
    ks = [128, 0, 256]
    a, b, _ = k_grouped_case(ks, 5, 7, seed=4)
    return (*a, *b, torch.zeros(3, 5, 7), ks, torch.tensor(ks, dtype=I32), torch.randn(3, 5, 7), list(RECIPE_1D1D),
            "mn", False)


def _k_grouped_bf16() -> tuple:
    ks = [128, 0]
    a, b = torch.randn(128, 5).to(BF16), torch.randn(128, 7).to(BF16)
    return a, b, torch.zeros(2, 5, 7), ks, torch.tensor(ks, dtype=I32).cumsum(0).int(), None, "mn", True


def _tokens(num_tokens: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, weights = routing(num_tokens, TOP_K, E, seed=5, drop=0.2, dtype=torch.int32)
    return hidden_states(num_tokens, H, seed=6), ids, weights


def _route_contiguous(fp8: bool) -> tuple:
    hidden, ids, _ = _tokens()
    rows = dg_moe.per_token_cast_to_fp8(hidden) if fp8 else (hidden, None)
    return *rows, ids, E, False, True


def _route_masked() -> tuple:
    hidden, ids, _ = _tokens()
    return hidden, None, ids, E, 5, False, True


def _silu_contiguous(psum: bool) -> tuple:
    per_row, ends = layouts([3, 0, 2])
    return torch.randn(per_row.shape[0], 2 * INTER).to(BF16), ends if psum else per_row, psum, False, True


def _silu_masked() -> tuple:
    return torch.randn(E, 5, 2 * INTER).to(BF16), torch.tensor([0, 5, 2, 9], dtype=I32), False, True


def _reduce(masked: bool) -> tuple:
    hidden, ids, weights = _tokens()
    lay = route_to_masked(hidden, ids, E, 6) if masked else route_to_contiguous(hidden, ids, E)
    rows = lay.a.shape[0] * (lay.a.shape[1] if masked else 1)
    y = torch.randn(rows, H).to(BF16)
    return (y.view(E, -1, H) if masked else y), lay.inverse, weights


def _fused(mode: str, shared: bool) -> tuple:
    hidden, ids, weights = _tokens()
    lay = layer(E, H, INTER, seed=7, shared_inter=INTER if shared else None)
    shared_weights = tuple(lay.shared) if shared else (None,) * 4
    return hidden, *lay.routed, ids, weights, mode, None, 2.5, *shared_weights


def _fused_bf16(mode: str) -> tuple:
    hidden, ids, weights = _tokens()
    return hidden, *bf16_layer(E, H, INTER, seed=7), ids, weights, mode, None, 2.5


# op name -> argument builders (each a small valid call of the op's CPU path, flattened as the schema takes it)
CASES: dict[str, list] = {
    **{f"fp8_gemm_{lay}": [lambda lay=lay: _dense_fp8(lay)] for lay in ("nt", "nn", "tn", "tt")},
    **{f"bf16_gemm_{lay}": [lambda lay=lay: _dense_bf16(lay)] for lay in ("nt", "nn", "tn", "tt")},
    **{f"m_grouped_fp8_gemm_{v}_contiguous": [lambda v=v: _contiguous_fp8(v, False),
                                              lambda v=v: _contiguous_fp8(v, True)] for v in ("nt", "nn")},
    **{f"m_grouped_bf16_gemm_{v}_contiguous": [lambda v=v: _contiguous_bf16(v)] for v in ("nt", "nn")},
    "m_grouped_fp8_gemm_nt_masked": [_masked_fp8],
    "m_grouped_bf16_gemm_nt_masked": [_masked_bf16],
    "k_grouped_fp8_gemm_tn_contiguous": [_k_grouped_fp8],
    "k_grouped_bf16_gemm_tn_contiguous": [_k_grouped_bf16],
    "route_to_contiguous": [lambda: _route_contiguous(False), lambda: _route_contiguous(True)],
    "deepep_normal_to_contiguous": [lambda: _route_contiguous(True)[:-1]],
    "route_to_masked": [_route_masked],
    "silu_and_mul_to_fp8_contiguous": [lambda: _silu_contiguous(False), lambda: _silu_contiguous(True)],
    "silu_and_mul_to_fp8_masked": [_silu_masked],
    "unpermute_reduce_contiguous": [lambda: _reduce(False)],
    "deepep_normal_reduce": [lambda: _reduce(False)],
    "unpermute_reduce_masked": [lambda: _reduce(True)],
    "fused_moe": [lambda: _fused("contiguous", True), lambda: _fused("masked", False)],
    "fused_moe_bf16": [lambda: _fused_bf16("contiguous"), lambda: _fused_bf16("masked")],
}
CASES["fp8_gemm_nt"].append(_dense_fp8_accumulate)


def test_every_registered_op_has_a_case():
    assert sorted(CASES) == sorted(registered_ops())
    assert all(hasattr(torch.ops.dg_moe, name) for name in registered_ops())


@pytest.fixture
def fp8_allclose(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.allclose on float8 CPU tensors compared bytewise.

    opcheck's schema test (SchemaCheckMode) detects a mutated input with torch.allclose(before, after), which
    CPU torch does not implement for float8 (no float8 multiply); equal bytes are what it means to ask.
    """
    real = torch.allclose

    def allclose(lhs: torch.Tensor, rhs: torch.Tensor, *args, **kwargs) -> bool:
        if lhs.dtype == rhs.dtype == torch.float8_e4m3fn:
            return torch.equal(lhs.view(torch.uint8), rhs.view(torch.uint8))
        return real(lhs, rhs, *args, **kwargs)

    monkeypatch.setattr(torch, "allclose", allclose)


@pytest.mark.parametrize("name,index", [(n, i) for n, builders in CASES.items() for i in range(len(builders))])
def test_opcheck(name, index, fp8_allclose):
    torch.library.opcheck(getattr(torch.ops.dg_moe, name), CASES[name][index]())


def test_gemm_schemas_mutate_d_only():
    for name in registered_ops():
        schema = getattr(torch.ops.dg_moe, name).default._schema
        mutated = [arg.name for arg in schema.arguments if arg.alias_info is not None and arg.alias_info.is_write]
        assert mutated == (["d"] if "gemm" in name else []), name


def test_fake_outputs_match_the_real_ones_in_strides():
    # opcheck compares shapes and dtypes; the MN-major scales must also keep their strides.
    real = route_to_masked(*_tokens()[:2], E, 5)
    with FakeTensorMode() as mode:
        hidden, ids, _ = (mode.from_tensor(t) for t in _tokens())
        fake = torch.ops.dg_moe.route_to_masked(hidden, None, ids, E, 5, False, True)
    for r, f in zip(real, fake, strict=True):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)


class MaskedMoE(torch.nn.Module):
    """One MoE layer spelled out with the layout ops and masked grouped GEMMs (the decode path)."""

    def __init__(self, lay, max_m: int) -> None:
        super().__init__()
        self.lay, self.max_m = lay, max_m

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        w13, w13_scale, w2, w2_scale = self.lay.routed
        routed = route_to_masked(hidden, ids, E, self.max_m)
        gate_up = hidden.new_empty(E, self.max_m, w13.shape[1])
        dg_moe.m_grouped_fp8_gemm_nt_masked((routed.a, routed.sfa), (w13, w13_scale), gate_up, routed.masked_m,
                                            self.max_m)
        act = silu_and_mul_to_fp8_masked(gate_up, routed.masked_m)
        down = hidden.new_empty(E, self.max_m, w2.shape[1])
        dg_moe.m_grouped_fp8_gemm_nt_masked(act, (w2, w2_scale), down, routed.masked_m, self.max_m)
        return unpermute_reduce_masked(down, routed.inverse, weights)


class FusedBlock(torch.nn.Module):
    """fused_moe (contiguous layout, shared expert) plus a residual around it."""

    def __init__(self, lay) -> None:
        super().__init__()
        self.lay = lay

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = fused_moe(hidden, *self.lay.routed, ids, weights, mode="contiguous", shared_expert=self.lay.shared)
        return hidden + out


class FusedBF16Block(torch.nn.Module):
    """fused_moe_bf16 (masked layout, overflow returned) plus a residual around it."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor) -> None:
        super().__init__()
        self.w13, self.w2 = w13, w2

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out, overflow = fused_moe_bf16(hidden, self.w13, self.w2, ids, weights, mode="masked", max_m=2,
                                       return_overflow=True)
        return hidden + out + overflow.sum()


@pytest.mark.parametrize("block", ["masked_ops", "fused_moe", "fused_moe_bf16"])
def test_compile_fullgraph_matches_eager(block):
    torch._dynamo.reset()
    hidden, ids, weights = _tokens(num_tokens=5)
    lay = layer(E, H, INTER, seed=8, shared_inter=INTER)
    blocks = {"masked_ops": lambda: MaskedMoE(lay, max_m=5), "fused_moe": lambda: FusedBlock(lay),
              "fused_moe_bf16": lambda: FusedBF16Block(*bf16_layer(E, H, INTER, seed=8))}
    module = blocks[block]()
    eager = module(hidden, ids, weights)
    start = time.perf_counter()
    compiled = torch.compile(module, fullgraph=True)(hidden, ids, weights)
    print(f"compile + first call: {time.perf_counter() - start:.1f} s")
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_compiled_gemm_with_c_aliasing_d():
    # d = d + a @ b.T, c passed as d itself: functionalisation must keep the read of c before the write.
    a, sfa, b, sfb, d, _, recipe, _, _ = _dense_fp8_accumulate()
    d = torch.randn_like(d)

    def accumulate(d: torch.Tensor) -> torch.Tensor:
        dg_moe.fp8_gemm_nt((a, sfa), (b, sfb), d, c=d, recipe=tuple(recipe))
        return d

    want = accumulate(d.clone())
    got = torch.compile(accumulate, fullgraph=True, backend="aot_eager")(d)
    assert got.data_ptr() == d.data_ptr()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("helper", ["per_token_cast_to_fp8", "per_block_cast_to_fp8", "per_channel_cast_to_fp8",
                                    "get_mn_major_tma_aligned_tensor", "transform_sf_into_required_layout"])
def test_unregistered_helpers_trace_as_plain_pytorch(helper):
    # Not registered (dg_moe.custom_ops): plain PyTorch with metadata-only checks, which Dynamo traces whole.
    x = torch.randn(8, 256)
    calls = {
        "per_token_cast_to_fp8": lambda x: dg_moe.per_token_cast_to_fp8(x)[1],
        "per_block_cast_to_fp8": lambda x: dg_moe.per_block_cast_to_fp8(x)[1],
        "per_channel_cast_to_fp8": lambda x: dg_moe.per_channel_cast_to_fp8(x.T.contiguous())[1],
        "get_mn_major_tma_aligned_tensor": lambda x: dg_moe.get_mn_major_tma_aligned_tensor(x[:, :2].contiguous()),
        "transform_sf_into_required_layout": lambda x: dg_moe.transform_sf_into_required_layout(
            x[:, :2].contiguous(), 8, 256, RECIPE_1D2D, is_sfa=True),
    }
    torch._dynamo.reset()
    got = torch.compile(calls[helper], fullgraph=True, backend="eager")(x)
    want = calls[helper](x)
    assert got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
