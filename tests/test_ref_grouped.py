"""Grouped reference GEMMs (contiguous, masked, K-grouped) and the public grouped ops on CPU,
against per-group block oracles, with NaN-poisoned outputs to catch stray or missing writes."""

from __future__ import annotations

import math

import pytest
import torch

import dg_moe.ops as ops
import dg_moe.reference as R

from .test_ref_explicit import assert_rounded_from, explicit_bf16_gemm, explicit_fp8_gemm, pack, quant

NAN = float("nan")


def align128(x: int) -> int:
    return 128 * math.ceil(x / 128)


def layouts(counts: list[int], tail: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row layout (each segment padded to 128 rows with -1, plus ``tail`` padding rows) and the
    equivalent prefix-sum ends."""
    rows, ends, start = [], [], 0
    for g, count in enumerate(counts):
        rows += [g] * count + [-1] * (align128(count) - count)
        ends.append(start + count)
        start += align128(count)
    rows += [-1] * tail
    return torch.tensor(rows, dtype=torch.int32), torch.tensor(ends, dtype=torch.int32)


def mn_major_3d(sf: torch.Tensor) -> torch.Tensor:
    """``[G, MN, kb]`` with MN contiguous (DeepEP low-latency style ``empty(G, kb, MN).transpose(1, 2)``)."""
    return sf.transpose(1, 2).contiguous().transpose(1, 2)


def assert_poisoned_rows(d: torch.Tensor, expected: torch.Tensor) -> None:
    """Rows the op must not write are still NaN in d; every other element is written and finite."""
    skip = expected.isnan()
    assert torch.equal(d.isnan(), skip)
    assert_rounded_from(d[~skip], expected[~skip])


def assert_same_bits(x: torch.Tensor, y: torch.Tensor) -> None:
    assert torch.equal(x.view(torch.int16), y.view(torch.int16))


# ---- contiguous -----------------------------------------------------------------------------------

COUNT_CASES = {
    "one_group_one_row": [1],
    "empty_groups": [0, 5, 0, 0, 3],
    "unaligned": [130, 1, 0, 127, 256],
}


def contiguous_case(counts, n, k, sf_fmt="row", tail=0, seed=0):
    torch.manual_seed(seed)
    per_row, ends = layouts(counts, tail)
    m_sum, g = per_row.shape[0], len(counts)
    packed = sf_fmt == "packed"
    a_q, sfa = quant(torch.randn(m_sum, k), 1, 128, pow2=packed)
    b_q, sfb = quant(torch.randn(g, n, k) * 0.5, 128, 128, pow2=packed)
    if packed:
        sfa, sfb = pack(sfa), pack(sfb)
    elif sf_fmt == "mn":
        sfa = mn_major_3d(sfa.unsqueeze(0))[0]
    expected = torch.full((m_sum, n), NAN, dtype=torch.float64)
    for grp in range(g):
        rows = (per_row == grp).nonzero().flatten()
        if rows.numel():
            expected[rows] = explicit_fp8_gemm(a_q[rows], sfa[rows], b_q[grp], sfb[grp], 128)
    return (a_q, sfa), (b_q, sfb), per_row, ends, expected


@pytest.mark.parametrize("variant", ["nt", "nn"])
@pytest.mark.parametrize("case", list(COUNT_CASES))
def test_fp8_contiguous_per_row_and_psum_agree_with_oracle(case, variant):
    a, b, per_row, ends, expected = contiguous_case(COUNT_CASES[case], 576, 384, tail=5, seed=len(case))
    if variant == "nn":
        b = (b[0].transpose(1, 2).contiguous(), b[1].transpose(1, 2).contiguous())
    op = getattr(ops, f"m_grouped_fp8_gemm_{variant}_contiguous")
    ref = getattr(R, f"ref_m_grouped_fp8_gemm_{variant}_contiguous")
    outs = []
    for psum, layout in ((False, per_row), (True, ends)):
        torch.testing.assert_close(ref(a, b, layout, use_psum_layout=psum), expected, rtol=1e-12, atol=1e-10,
                                   equal_nan=True)
        d = torch.full(expected.shape, NAN, dtype=torch.bfloat16)
        op(a, b, d, layout, use_psum_layout=psum)
        assert_poisoned_rows(d, expected)
        outs.append(d)
    assert_same_bits(outs[0], outs[1])


@pytest.mark.parametrize("sf_fmt", ["mn", "packed"])
def test_fp8_contiguous_scale_formats(sf_fmt):
    a, b, per_row, ends, expected = contiguous_case([3, 129, 0, 64], 100, 640, sf_fmt=sf_fmt, seed=5)
    d = torch.full(expected.shape, NAN, dtype=torch.bfloat16)
    ops.m_grouped_fp8_gemm_nt_contiguous(a, b, d, ends, use_psum_layout=True, expected_m_for_psum_layout=64)
    assert_poisoned_rows(d, expected)


def test_fp8_contiguous_288_groups():
    torch.manual_seed(6)
    counts = torch.randint(0, 3, (288,)).tolist()
    counts[0], counts[-1] = 1, 2
    a, b, per_row, ends, expected = contiguous_case(counts, 64, 128, seed=6)
    for psum, layout in ((False, per_row), (True, ends)):
        d = torch.full(expected.shape, NAN, dtype=torch.bfloat16)
        ops.m_grouped_fp8_gemm_nt_contiguous(a, b, d, layout, use_psum_layout=psum)
        assert_poisoned_rows(d, expected)


def test_psum_empty_group_may_end_at_previous_end():
    # An empty group may repeat the previous (unaligned) end or sit at its own aligned start.
    _, aligned_ends = layouts([5, 0, 3])
    repeated_ends = torch.tensor([5, 5, 131], dtype=torch.int32)
    assert aligned_ends.tolist() == [5, 128, 131]
    for ends in (aligned_ends, repeated_ends):
        rows = R.group_rows(ends, 3, use_psum_layout=True)
        assert [r.tolist() for r in rows] == [list(range(5)), [], list(range(128, 131))]


@pytest.mark.parametrize("variant", ["nt", "nn"])
def test_bf16_contiguous(variant):
    torch.manual_seed(7)
    counts = [2, 0, 129, 1]
    per_row, ends = layouts(counts, tail=3)
    m_sum, n, k = per_row.shape[0], 65, 96
    a = torch.randn(m_sum, k).to(torch.bfloat16)
    b_nt = torch.randn(len(counts), n, k).to(torch.bfloat16)
    expected = torch.full((m_sum, n), NAN, dtype=torch.float64)
    for grp in range(len(counts)):
        rows = (per_row == grp).nonzero().flatten()
        expected[rows] = explicit_bf16_gemm(a[rows], b_nt[grp])
    b = b_nt.transpose(1, 2).contiguous() if variant == "nn" else b_nt
    op = getattr(ops, f"m_grouped_bf16_gemm_{variant}_contiguous")
    outs = []
    for psum, layout in ((False, per_row), (True, ends)):
        d = torch.full((m_sum, n), NAN, dtype=torch.bfloat16)
        op(a, b, d, layout, use_psum_layout=psum)
        assert_poisoned_rows(d, expected)
        outs.append(d)
    assert_same_bits(outs[0], outs[1])
    ref = getattr(R, f"ref_m_grouped_bf16_gemm_{variant}_contiguous")(a, b, per_row)
    torch.testing.assert_close(ref, expected, rtol=1e-12, atol=1e-10, equal_nan=True)


# ---- masked ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sf_fmt", ["mn", "row", "packed"])
@pytest.mark.parametrize("max_m", [5, 130])
def test_fp8_masked(max_m, sf_fmt):
    torch.manual_seed(max_m)
    masked = [0, 1, max_m, max_m + 7, -3]  # empty, one row, full, clamped, negative
    g, n, k = len(masked), 100, 384
    packed = sf_fmt == "packed"
    a_q, sfa = quant(torch.randn(g, max_m, k), 1, 128, pow2=packed)
    b_q, sfb = quant(torch.randn(g, n, k), 128, 128, pow2=packed)
    expected = torch.full((g, max_m, n), NAN, dtype=torch.float64)
    for grp, m in enumerate(masked):
        m = min(max(m, 0), max_m)
        expected[grp, :m] = explicit_fp8_gemm(a_q[grp, :m], sfa[grp, :m], b_q[grp], sfb[grp], 128)
    if packed:
        sfa, sfb = pack(sfa), pack(sfb)
    elif sf_fmt == "mn":
        sfa = mn_major_3d(sfa)
    masked_m = torch.tensor(masked, dtype=torch.int32)
    ref = R.ref_m_grouped_fp8_gemm_nt_masked((a_q, sfa), (b_q, sfb), masked_m)
    torch.testing.assert_close(ref, expected, rtol=1e-12, atol=1e-10, equal_nan=True)
    d = torch.full((g, max_m, n), NAN, dtype=torch.bfloat16)
    ops.m_grouped_fp8_gemm_nt_masked((a_q, sfa), (b_q, sfb), d, masked_m, expected_m=max_m)
    assert_poisoned_rows(d, expected)


def test_bf16_masked():
    torch.manual_seed(8)
    masked = [3, 0, 9, 4]
    g, max_m, n, k = len(masked), 4, 33, 80
    a = torch.randn(g, max_m, k).to(torch.bfloat16)
    b = torch.randn(g, n, k).to(torch.bfloat16)
    expected = torch.full((g, max_m, n), NAN, dtype=torch.float64)
    for grp, m in enumerate(masked):
        m = min(m, max_m)
        expected[grp, :m] = explicit_bf16_gemm(a[grp, :m], b[grp])
    d = torch.full((g, max_m, n), NAN, dtype=torch.bfloat16)
    ops.m_grouped_bf16_gemm_nt_masked(a, b, d, torch.tensor(masked, dtype=torch.int32), expected_m=2)
    assert_poisoned_rows(d, expected)


# ---- K-grouped ------------------------------------------------------------------------------------


def k_grouped_case(ks, m, n, seed):
    torch.manual_seed(seed)
    sum_k = sum(ks)
    a_nt, sfa_nt = quant(torch.randn(m, sum_k), 1, 128)  # [M, sum_K]: per-channel 1x128 blocks
    b_nt, sfb_nt = quant(torch.randn(n, sum_k), 1, 128)
    product = torch.zeros(len(ks), m, n, dtype=torch.float64)
    start = 0
    for g, k in enumerate(ks):
        if k:
            cols, blocks = slice(start, start + k), slice(start // 128, (start + k) // 128)
            product[g] = explicit_fp8_gemm(a_nt[:, cols], sfa_nt[:, blocks], b_nt[:, cols], sfb_nt[:, blocks], 1)
        start += k
    a = (a_nt.T.contiguous(), sfa_nt.T.contiguous())  # [sum_K, M], [sum_K/128, M]
    b = (b_nt.T.contiguous(), sfb_nt.T.contiguous())
    return a, b, product


@pytest.mark.parametrize("psum", [False, True])
@pytest.mark.parametrize("acc", ["none", "c", "alias"])
def test_fp8_k_grouped(acc, psum):
    ks, m, n = [0, 128, 384, 256], 7, 65
    a, b, product = k_grouped_case(ks, m, n, seed=9)
    layout = torch.tensor(list(torch.tensor(ks).cumsum(0)) if psum else ks, dtype=torch.int32)
    c = None if acc == "none" else torch.randn(len(ks), m, n)
    want = product if c is None else product + c.double()
    torch.testing.assert_close(R.ref_k_grouped_fp8_gemm_tn_contiguous(a, b, ks, c), want, rtol=1e-12, atol=1e-10)
    d = c if acc == "alias" else torch.full((len(ks), m, n), NAN)
    ops.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks, layout, c=c, use_psum_layout=psum)
    assert_rounded_from(d, want)


def test_bf16_k_grouped():
    torch.manual_seed(10)
    ks, m, n = [256, 0, 128], 5, 33
    a = torch.randn(sum(ks), m).to(torch.bfloat16)
    b = torch.randn(sum(ks), n).to(torch.bfloat16)
    c = torch.randn(len(ks), m, n)
    want = c.double().clone()
    want[0] += explicit_bf16_gemm(a[:256].T, b[:256].T)
    want[2] += explicit_bf16_gemm(a[256:].T, b[256:].T)
    d = torch.full((len(ks), m, n), NAN)
    ops.k_grouped_bf16_gemm_tn_contiguous(a, b, d, ks, torch.tensor(ks, dtype=torch.int32), c=c)
    assert_rounded_from(d, want)
