"""Non-finite values through the FP8 casts and ``fp8_gemm_nt`` on CPU: what the README's "NaN, Inf and
overflow" section states. The ops check shapes and layouts, never values, so NaN and Inf follow the arithmetic."""

from __future__ import annotations

import pytest
import torch

import dg_moe

M, N, K = 4, 256, 256
E4M3_NAN = 0x7F  # e4m3fn has NaN (S.1111.111) and no Inf
# Halfway between BF16's largest finite value, (2 - 2**-7) * 2**127, and 2**128: ties go to even, i.e. to inf.
BF16_OVERFLOW = (2 - 2**-8) * 2.0**127


@pytest.fixture
def operands() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g).bfloat16()
    w = torch.randn(N, K, generator=g).bfloat16()
    return dg_moe.per_token_cast_to_fp8(x), dg_moe.per_block_cast_to_fp8(w)


def gemm(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    d = torch.zeros(M, N, dtype=torch.bfloat16)
    dg_moe.fp8_gemm_nt(a, b, d)
    return d.float()


def copy(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return pair[0].clone(), pair[1].clone()


def test_nan_element_of_a_or_b_poisons_its_row_or_column(operands) -> None:
    a, b = operands
    a_nan = copy(a)
    a_nan[0].view(torch.uint8)[1, 3] = E4M3_NAN
    d = gemm(a_nan, b)
    assert d[1].isnan().all() and d[[0, 2, 3]].isfinite().all()
    b_nan = copy(b)
    b_nan[0].view(torch.uint8)[5, 200] = E4M3_NAN
    d = gemm(a, b_nan)
    assert d[:, 5].isnan().all() and d[:, :5].isfinite().all() and d[:, 6:].isfinite().all()


def test_nan_scale_factor_poisons_what_it_scales(operands) -> None:
    a, b = operands
    a_nan = copy(a)
    a_nan[1][2, 1] = float("nan")  # row 2, K block 1: every column of row 2
    d = gemm(a_nan, b)
    assert d[2].isnan().all() and d[[0, 1, 3]].isfinite().all()
    b_nan = copy(b)
    b_nan[1][1, 0] = float("nan")  # columns 128..255, K block 0: every row
    d = gemm(a, b_nan)
    assert d[:, 128:].isnan().all() and d[:, :128].isfinite().all()


def test_infinite_scale_factor_makes_its_outputs_non_finite(operands) -> None:
    a, b = operands
    a_inf = copy(a)
    a_inf[1][0, 0] = float("inf")
    d = gemm(a_inf, b)
    assert not d[0].isfinite().any() and d[1:].isfinite().all()


def test_results_past_bf16_range_round_to_inf(operands) -> None:
    a, b = operands
    big = (a[0], a[1] * 1e37)  # results up to ~6e38 across BF16's largest finite value
    expected = dg_moe.reference.ref_fp8_gemm_nt(big, b)
    overflow = expected.abs() >= BF16_OVERFLOW
    assert overflow.any() and not overflow.all()
    d = gemm(big, b)
    assert torch.equal(d.isinf(), overflow)
    assert torch.equal(d[overflow].sign(), expected[overflow].sign().float())
    assert not d.isnan().any()


@pytest.mark.parametrize("cast, scale, block", [
    (dg_moe.per_token_cast_to_fp8, (1, 0), (1, slice(0, 128))),  # row 1's first 128 columns
    (dg_moe.per_block_cast_to_fp8, (0, 0), (slice(0, 128), slice(0, 128))),  # the first 128x128 block
])
def test_cast_of_nan_or_inf_input(cast, scale, block) -> None:
    x = torch.ones(128, 256, dtype=torch.bfloat16)
    x[1, 5] = float("nan")
    q, sf = cast(x)
    assert sf[scale].isnan() and q[block].float().isnan().all()
    assert q[:, 128:].float().eq(448).all()  # the other blocks are untouched
    x[1, 5] = float("inf")
    q, sf = cast(x)
    values = q[block].float()
    assert sf[scale].isinf() and q[1, 5].float().isnan()  # inf / inf
    assert values.nan_to_num(0.0).eq(0).all()  # the rest of the block: 1 / inf
