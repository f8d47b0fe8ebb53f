"""Dense reference GEMMs (and the public dense ops on CPU) against independent float64 oracles."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import dg_moe.ops as ops
import dg_moe.reference as R

from .test_ref_explicit import (
    FP8,
    assert_rounded_from,
    explicit_bf16_gemm,
    explicit_fp8_gemm,
    pack,
    quant,
    unpack,
)

SHAPES = [(1, 576, 384), (7, 100, 640), (65, 256, 128), (129, 576, 256)]  # (M, N, K): K/128 = 3, 5, 1, 2
LAYOUTS = ["nt", "nn", "tn", "tt"]
RECIPES = [(1, 128, 128), (1, 1, 128)]
SF_FORMATS = ["row", "mn", "packed", "packed_mn"]


def mn_major(sf: torch.Tensor) -> torch.Tensor:
    """Same values, strides ``(1, align(rows, 4))`` (TMA-aligned MN-major), padding poisoned."""
    rows, cols = sf.shape
    fill = float("nan") if sf.dtype == torch.float32 else -1
    buf = torch.full((cols, 4 * math.ceil(rows / 4)), fill, dtype=sf.dtype)
    view = buf.T[:rows]
    view.copy_(sf)
    return view


def make_sf(sf: torch.Tensor, fmt: str) -> torch.Tensor:
    sf = pack(sf) if fmt.startswith("packed") else sf
    return mn_major(sf) if fmt.endswith("mn") else sf


def given(x: torch.Tensor, transposed: bool) -> torch.Tensor:
    """An nt-frame tensor as the caller passes it transposed (``[K, MN]``, row-major)."""
    return x.T.contiguous() if transposed else x


def fp8_case(m, n, k, recipe, fmt, seed):
    torch.manual_seed(seed)
    gran_n = recipe[1]
    a_q, sfa = quant(torch.randn(m, k) * 3, 1, 128, pow2=fmt.startswith("packed"))
    b_q, sfb = quant(torch.randn(n, k), gran_n, 128, pow2=fmt.startswith("packed"))
    sfa, sfb = make_sf(sfa, fmt), make_sf(sfb, fmt)
    return a_q, sfa, b_q, sfb, explicit_fp8_gemm(a_q, sfa, b_q, sfb, gran_n)


def as_layout(layout, a_q, sfa, b_q, sfb):
    ta, tb = layout[0] == "t", layout[1] == "n"  # B's letter is BLAS-style: "t" is [N, K]
    a = (given(a_q, ta), sfa.T if ta else sfa)
    b = (given(b_q, tb), sfb.T if tb else sfb)
    return a, b


@pytest.mark.parametrize("fmt", SF_FORMATS)
@pytest.mark.parametrize("recipe", RECIPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_fp8_dense_matches_block_oracle(m, n, k, layout, recipe, fmt):
    a_q, sfa, b_q, sfb, expected = fp8_case(m, n, k, recipe, fmt, seed=m * 1000 + k)
    a, b = as_layout(layout, a_q, sfa, b_q, sfb)
    out = getattr(R, f"ref_fp8_gemm_{layout}")(a, b, None, recipe)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-10)

    out_dtype = torch.bfloat16 if recipe == (1, 128, 128) else torch.float32
    d_ref = torch.full((m, n), float("nan"), dtype=out_dtype)
    getattr(R, f"fp8_gemm_{layout}")(a, b, d_ref, recipe=recipe)
    assert_rounded_from(d_ref, expected)
    assert torch.equal(d_ref, R.round_to_dtype(out, out_dtype))

    d_op = torch.full((m, n), float("nan"), dtype=out_dtype)
    getattr(ops, f"fp8_gemm_{layout}")(a, b, d_op)  # recipe inferred from d's dtype
    assert torch.equal(d_op, d_ref)


@pytest.mark.parametrize("alias", [False, True])
@pytest.mark.parametrize("recipe", RECIPES, ids=str)
@pytest.mark.parametrize("layout", ["nt", "tn"])
def test_fp8_dense_accumulates_c(layout, recipe, alias):
    m, n, k = 65, 576, 384
    a_q, sfa, b_q, sfb, expected = fp8_case(m, n, k, recipe, "row", seed=7)
    a, b = as_layout(layout, a_q, sfa, b_q, sfb)
    out_dtype = torch.bfloat16 if recipe == (1, 128, 128) else torch.float32
    c = (torch.randn(m, n) * 10).to(out_dtype)
    want = expected + c.double()
    d = c if alias else torch.full((m, n), float("nan"), dtype=out_dtype)
    getattr(ops, f"fp8_gemm_{layout}")(a, b, d, c=c, recipe=recipe)
    assert_rounded_from(d, want)


@pytest.mark.parametrize("layout", ["nn", "tn", "tt"])
def test_fp8_dense_c_on_row_slice_of_larger_buffer(layout):
    m, n, k = 7, 100, 256
    a_q, sfa, b_q, sfb, expected = fp8_case(m, n, k, (1, 128, 128), "row", seed=8)
    a, b = as_layout(layout, a_q, sfa, b_q, sfb)
    buf = torch.randn(m, n + 28).to(torch.bfloat16)
    d = buf[:, 14:14 + n]  # last dim contiguous, rows strided
    c = d.clone()
    outside = buf.clone()
    getattr(ops, f"fp8_gemm_{layout}")(a, b, d, c=d)
    assert_rounded_from(d, expected + c.double())
    assert torch.equal(buf[:, :14], outside[:, :14]) and torch.equal(buf[:, 14 + n:], outside[:, 14 + n:])


def test_fp8_gemm_nt_wants_the_kernels_contiguous_d_on_cpu_too():
    m, n, k = 7, 100, 256
    a_q, sfa, b_q, sfb, expected = fp8_case(m, n, k, (1, 128, 128), "row", seed=8)
    d = torch.randn(m, n + 28).to(torch.bfloat16)[:, 14:14 + n]
    c = d.clone()
    with pytest.raises(ValueError, match=r"fp8_gemm_nt: d must be contiguous .*strides \(128, 1\).*d\.contiguous\(\)"):
        ops.fp8_gemm_nt((a_q, sfa), (b_q, sfb), d, c=d)
    assert torch.equal(d, c)  # rejected before anything is written
    dense = d.contiguous()  # the fix the message gives
    ops.fp8_gemm_nt((a_q, sfa), (b_q, sfb), dense, c=dense)
    d.copy_(dense)
    assert_rounded_from(d, expected + c.double())


def test_fp8_dense_empty_m_and_zero_k():
    a0 = (torch.empty(0, 256, dtype=FP8), torch.empty(0, 2))
    b = quant(torch.randn(130, 256), 128, 128)
    d0 = torch.empty(0, 130, dtype=torch.bfloat16)
    ops.fp8_gemm_nt(a0, b, d0)  # M = 0: validated no-op
    ak = (torch.empty(3, 0, dtype=FP8), torch.empty(3, 0))
    bk = (torch.empty(130, 0, dtype=FP8), torch.empty(2, 0))
    d = torch.full((3, 130), float("nan"), dtype=torch.bfloat16)
    ops.fp8_gemm_nt(ak, bk, d)
    assert torch.equal(d, torch.zeros_like(d))
    c = torch.randn(3, 130).to(torch.bfloat16)
    ops.fp8_gemm_nt(ak, bk, d, c=c)
    assert torch.equal(d, c)


@pytest.mark.parametrize("alias", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m,n,k", [(1, 576, 64), (7, 100, 200), (129, 65, 48)])
def test_bf16_dense_matches_oracle(m, n, k, layout, out_dtype, alias):
    torch.manual_seed(m + n + k)
    a_nt = torch.randn(m, k).to(torch.bfloat16)
    b_nt = torch.randn(n, k).to(torch.bfloat16)
    c = torch.randn(m, n).to(out_dtype)
    expected = explicit_bf16_gemm(a_nt, b_nt)
    a, b = given(a_nt, layout[0] == "t"), given(b_nt, layout[1] == "n")
    torch.testing.assert_close(getattr(R, f"ref_bf16_gemm_{layout}")(a, b), expected, rtol=1e-12, atol=1e-10)
    d = c if alias else torch.full((m, n), float("nan"), dtype=out_dtype)
    want = expected + c.double()
    getattr(ops, f"bf16_gemm_{layout}")(a, b, d, c=c)
    assert_rounded_from(d, want)


# ---- single rounding ----------------------------------------------------------------------------


def _nearest_bf16(x: float) -> float:
    """Correctly rounded bfloat16 value of a finite double, by exact rational comparison."""
    lo = torch.tensor([x], dtype=torch.float64).to(torch.bfloat16)
    cands = {lo.item()}
    bits = lo.view(torch.int16)
    for step in (-1, 1):
        cands.add((bits + step).view(torch.bfloat16).item())
    cands = [c for c in cands if math.isfinite(c)]
    fx = Fraction(x)
    best = min(abs(Fraction(c) - fx) for c in cands)
    ties = [c for c in cands if abs(Fraction(c) - fx) == best]
    if len(ties) == 1:
        return ties[0]
    return next(c for c in ties if torch.tensor([c]).to(torch.bfloat16).view(torch.int16).item() % 2 == 0)


def test_round_to_dtype_bf16_is_single_rounding():
    torch.manual_seed(11)
    base = torch.randn(300, dtype=torch.float64) * torch.exp2(torch.randint(-30, 30, (300,)).double())
    # Values just above a bfloat16 midpoint by less than half a float32 ulp: torch's own
    # float64 -> float32 -> bfloat16 path rounds these the wrong way.
    mids = [1 + 2**-8 + 2**-30, -(3 + 2**-7 + 2**-29), 1 + 2**-8 - 2**-30]
    mids = torch.tensor(mids, dtype=torch.float64)
    xs = torch.cat([base, mids])
    got = R.round_to_dtype(xs, torch.bfloat16)
    want = torch.tensor([_nearest_bf16(v) for v in xs.tolist()], dtype=torch.float64)
    assert torch.equal(got.double(), want)
    assert got[-3].item() == 1 + 2**-7 and got[-2].item() == -(3 + 2**-6) and got[-1].item() == 1.0


def test_round_to_dtype_specials():
    xs = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e300, -1e-300, 1 + 2**-8],
                      dtype=torch.float64)
    got = R.round_to_dtype(xs, torch.bfloat16)
    assert got[0].isnan()
    assert got[1].item() == float("inf") and got[2].item() == -float("inf")
    assert got[5].item() == float("inf")
    assert got[6].item() == 0.0 and torch.signbit(got[6])
    assert got[7].item() == 1.0  # exact tie: to even
    as_f32 = R.round_to_dtype(xs, torch.float32)
    torch.testing.assert_close(as_f32, xs.float(), rtol=0, atol=0, equal_nan=True)


# ---- dequantisation, quantiser, metric -----------------------------------------------------------


@pytest.mark.parametrize("fmt", SF_FORMATS)
def test_dequantize_matches_elementwise(fmt):
    torch.manual_seed(12)
    q, sf = quant(torch.randn(130, 640), 128, 128, pow2=fmt.startswith("packed"))
    sf_given = make_sf(sf, fmt)
    got = R.dequantize(q, sf_given, 128, 128)
    want = torch.empty(130, 640, dtype=torch.float64)
    for i in range(130):
        for j in range(5):
            want[i, j * 128:(j + 1) * 128] = q[i, j * 128:(j + 1) * 128].double() * sf[i // 128, j].item()
    assert torch.equal(got, want)
    assert torch.equal(R.expand_sf(sf_given, 130, 640, 128, 128) * q.double(), want)


def test_dequantize_k_not_multiple_of_block():
    q = torch.randn(3, 200).to(FP8)
    sf = torch.tensor([[2.0, 0.5], [1.0, 4.0], [8.0, 0.25]])
    got = R.dequantize(q, sf, 1, 128)
    want = q.double() * torch.cat([sf[:, :1].expand(3, 128), sf[:, 1:].expand(3, 72)], 1).double()
    assert torch.equal(got, want)


@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("gran_mn,mn", [(1, 7), (128, 130), (128, 576)])
def test_quantize_blockwise_matches_block_loop(gran_mn, mn, ue8m0):
    torch.manual_seed(13)
    x = torch.randn(2, mn, 384) * 5
    q, sf = R.quantize_blockwise(x, gran_mn, 128, ue8m0=ue8m0)
    q_want, sf_want = quant(x, gran_mn, 128, pow2=ue8m0)
    assert torch.equal(sf, sf_want)
    assert torch.equal(q.view(torch.uint8), q_want.view(torch.uint8))
    if ue8m0:
        packed = R.pack_sf_ue8m0(sf)
        assert packed.dtype == torch.int32 and packed.shape == (*sf.shape[:-1], 1)
        assert torch.equal(unpack(packed, sf.shape[-1]), sf.double())


def test_calc_diff():
    torch.manual_seed(14)
    x = torch.randn(64, 32)
    y = torch.randn(64, 32)
    assert R.calc_diff(x, x) == pytest.approx(0.0, abs=1e-15)
    assert R.calc_diff(x, -x) == pytest.approx(2.0)
    assert R.calc_diff(x, 2 * x) == pytest.approx(0.2)
    want = 1 - 2 * (x.double() * y.double()).sum() / (x.double() ** 2 + y.double() ** 2).sum()
    assert R.calc_diff(x.to(torch.bfloat16), y) == pytest.approx(
        (1 - 2 * (x.bfloat16().double() * y.double()).sum()
         / (x.bfloat16().double() ** 2 + y.double() ** 2).sum()).item(), rel=1e-12)
    assert R.calc_diff(x, y) == pytest.approx(want.item(), rel=1e-12)
    assert R.calc_diff(torch.zeros(3), torch.zeros(3)) == 0.0
    assert math.isnan(R.calc_diff(torch.tensor([float("nan"), 1.0]), torch.ones(2)))
    with pytest.raises(ValueError, match="shape"):
        R.calc_diff(x, y.T)
