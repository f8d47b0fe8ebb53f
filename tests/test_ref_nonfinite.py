"""Non-finite values through the FP8 casts, ``fp8_gemm_nt``, the grouped GEMMs and ``fused_moe`` on CPU (the
reference path): what the README's "NaN, Inf and overflow" section states. The ops check shapes and layouts, never
values, so NaN and Inf follow the arithmetic; a row the op skips is never read into any output. The same policy on
the SM90 kernels: tests/test_nonfinite_gpu.py."""

from __future__ import annotations

import pytest
import torch

import dg_moe
from dg_moe.layout._kernels import BACKEND_ENV
from dg_moe.moe import fused_moe

from .moe_loops import hidden_states, layer, routing
from .test_ref_grouped import layouts

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


@pytest.mark.parametrize(
    "cast, scale, block",
    [
        (dg_moe.per_token_cast_to_fp8, (1, 0), (1, slice(0, 128))),  # row 1's first 128 columns
        (dg_moe.per_block_cast_to_fp8, (0, 0), (slice(0, 128), slice(0, 128))),  # the first 128x128 block
    ],
)
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


# ---- grouped GEMMs and fused_moe ----------------------------------------------------------------------------------
# Each case runs the call clean and with one non-finite value planted, on the same operands, and compares bitwise: an
# element the value may not reach keeps the clean run's bits, including the NaN poison of rows the op does not write.

FP8Pair = tuple[torch.Tensor, torch.Tensor]
GROUPS = 3
COUNTS = [3, 0, 130]  # an empty group, and one over two 128-row tiles
MAX_M = 8
MASKED_M = [5, 0, MAX_M]  # rows past the count, a group with none, a full group


def bits(d: torch.Tensor) -> torch.Tensor:
    return d.view(torch.int16)


def assert_nan_exactly_at(out: torch.Tensor, clean: torch.Tensor, where: torch.Tensor) -> None:
    """``out`` is NaN on ``where``, which the clean run has finite, and bitwise ``clean`` elsewhere."""
    assert where.any() and clean[where].isfinite().all()
    assert out[where].isnan().all()
    assert torch.equal(bits(out)[~where], bits(clean)[~where])


def with_nan(pair: FP8Pair, data_index: tuple | None = None, sf_index: tuple | None = None) -> FP8Pair:
    """A copy of an FP8 pair with e4m3 NaN at ``data_index`` and NaN scales at ``sf_index``."""
    data, sf = copy(pair)
    if data_index is not None:
        data.view(torch.uint8)[data_index] = E4M3_NAN
    if sf_index is not None:
        sf[sf_index] = float("nan")
    return data, sf


def grouped_operands(rows: int) -> tuple[FP8Pair, FP8Pair]:
    g = torch.Generator().manual_seed(1)
    a = dg_moe.per_token_cast_to_fp8(torch.randn(rows, K, generator=g).bfloat16())
    pairs = [dg_moe.per_block_cast_to_fp8(torch.randn(N, K, generator=g).bfloat16()) for _ in range(GROUPS)]
    return a, (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))


def contiguous(a: FP8Pair, b: FP8Pair, grouped_layout: torch.Tensor, use_psum_layout: bool) -> torch.Tensor:
    d = torch.full((a[0].shape[0], N), float("nan"), dtype=torch.bfloat16)
    dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, grouped_layout, use_psum_layout=use_psum_layout)
    return d


def masked(a: FP8Pair, b: FP8Pair) -> torch.Tensor:
    d = torch.full((GROUPS, MAX_M, N), float("nan"), dtype=torch.bfloat16)
    a = (a[0].view(GROUPS, MAX_M, K), a[1].view(GROUPS, MAX_M, K // 128))
    dg_moe.m_grouped_fp8_gemm_nt_masked(a, b, d, torch.tensor(MASKED_M, dtype=torch.int32), expected_m=MAX_M)
    return d.view(GROUPS * MAX_M, N)


def masked_row_groups() -> torch.Tensor:
    """The group of each of the GROUPS * MAX_M rows, -1 at or past its masked_m."""
    rows = torch.arange(MAX_M)
    return torch.where(rows < torch.tensor(MASKED_M).unsqueeze(1), torch.arange(GROUPS).unsqueeze(1), -1).flatten()


@pytest.mark.parametrize("use_psum_layout", [False, True])
def test_contiguous_padding_rows_full_of_nan_change_nothing(use_psum_layout: bool) -> None:
    per_row, ends = layouts(COUNTS, tail=128)  # the tail: rows past the last segment
    a, b = grouped_operands(per_row.numel())
    grouped_layout = ends if use_psum_layout else per_row
    clean = contiguous(a, b, grouped_layout, use_psum_layout)
    padding = per_row < 0
    d = contiguous(with_nan(a, (padding,), (padding,)), b, grouped_layout, use_psum_layout)
    assert torch.equal(bits(d), bits(clean))
    assert d[padding].isnan().all() and d[~padding].isfinite().all()  # padding rows keep the poison


def test_masked_rows_past_masked_m_full_of_nan_change_nothing() -> None:
    row_groups = masked_row_groups()
    a, b = grouped_operands(row_groups.numel())
    clean = masked(a, b)
    past = row_groups < 0
    d = masked(with_nan(a, (past,), (past,)), b)
    assert torch.equal(bits(d), bits(clean))
    assert d[past].isnan().all() and d[~past].isfinite().all()  # rows past masked_m keep the poison


@pytest.mark.parametrize("what", ["a", "sfa", "b", "sfb"])
@pytest.mark.parametrize("op", ["contiguous", "masked"])
def test_grouped_nan_stays_in_its_row_or_group(op: str, what: str) -> None:
    """An e4m3 NaN or a NaN sfa entry in one row of A: that output row. An e4m3 NaN in row 5 of group 2's weight:
    column 5 of group 2's rows; a NaN sfb entry of group 2: its 128 columns of group 2's rows. The other groups'
    rows never see a weight's NaN."""
    per_row, _ = layouts(COUNTS)
    row_groups = per_row.long() if op == "contiguous" else masked_row_groups()
    a, b = grouped_operands(row_groups.numel())

    def run(a: FP8Pair, b: FP8Pair) -> torch.Tensor:
        return contiguous(a, b, per_row, use_psum_layout=False) if op == "contiguous" else masked(a, b)

    clean = run(a, b)
    row = 130 if op == "contiguous" else 2 * MAX_M + 3  # a row of group 2
    assert row_groups[row] == 2
    rows, columns = torch.arange(row_groups.numel()).unsqueeze(1), torch.arange(N)
    rows_of_2 = (row_groups == 2).unsqueeze(1)
    if what == "a":
        d, where = run(with_nan(a, data_index=(row, 200)), b), (rows == row).expand(-1, N)
    elif what == "sfa":
        d, where = run(with_nan(a, sf_index=(row, 1)), b), (rows == row).expand(-1, N)
    elif what == "b":
        d, where = run(a, with_nan(b, data_index=(2, 5, 200))), rows_of_2 & (columns == 5)
    else:
        d, where = run(a, with_nan(b, sf_index=(2, 1, 0))), rows_of_2 & (columns >= 128)
    assert_nan_exactly_at(d, clean, where)


MOE_E, MOE_H, MOE_INTER, MOE_TOP_K, MOE_T = 4, 256, 128, 2, 24


@pytest.fixture(params=["torch", "triton"])
def layout_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both implementations of the layout ops (the Triton one in its CPU interpreter): Triton's max reductions drop
    NaN, so its quantisation must put the NaN back itself to keep this policy."""
    if request.param == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv(BACKEND_ENV, request.param)
    return request.param


def moe_inputs() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    weights = list(layer(MOE_E, MOE_H, MOE_INTER, seed=3).routed)
    ids, topk_weights = routing(MOE_T, MOE_TOP_K, MOE_E, seed=5)
    return weights, hidden_states(MOE_T, MOE_H, seed=4), ids, topk_weights


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_fused_moe_nonfinite_token_stays_in_its_row(mode: str, value: float, layout_backend: str) -> None:
    """NaN or Inf in one token's hidden state: its 1x128 block quantises to NaN (an Inf makes the scale infinite and
    its own element NaN), every GEMM column sums it, so the token's whole output row is NaN, and nothing else."""
    weights, hidden, ids, topk_weights = moe_inputs()
    clean = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    planted = hidden.clone()
    planted[7, 130] = value
    out = fused_moe(planted, *weights, ids, topk_weights, mode=mode)
    assert_nan_exactly_at(out, clean, (torch.arange(MOE_T) == 7).unsqueeze(1).expand(-1, MOE_H))


@pytest.mark.parametrize("weight", ["w13", "w2"])
@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_fused_moe_nan_expert_weight_reaches_only_its_tokens(mode: str, weight: str, layout_backend: str) -> None:
    """An e4m3 NaN in expert 1's w13: the whole output row of each token routed to expert 1 (the activation's NaN
    enters every column of the w2 GEMM); in its w2 row 40: column 40 of those rows. Other tokens keep their bits."""
    weights, hidden, ids, topk_weights = moe_inputs()
    clean = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    routed = (ids == 1).any(1)
    assert routed.any() and not routed.all()
    planted = list(weights)
    if weight == "w13":
        planted[0] = with_nan((weights[0], weights[1]), data_index=(1, 150, 9))[0]  # an up row: I = 128
        where = routed.unsqueeze(1).expand(-1, MOE_H)
    else:
        planted[2] = with_nan((weights[2], weights[3]), data_index=(1, 40, 9))[0]
        where = routed.unsqueeze(1) & (torch.arange(MOE_H) == 40)
    out = fused_moe(hidden, *planted, ids, topk_weights, mode=mode)
    assert_nan_exactly_at(out, clean, where)


def fill_empty_with_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, floating tensors from torch.empty are full of 0xFF bytes, NaN in e4m3, BF16 and FP32 alike: the
    rows a call leaves unwritten hold NaN, and a result that read one would show it."""
    real_empty = torch.empty

    def empty(*args, **kwargs) -> torch.Tensor:
        out = real_empty(*args, **kwargs)
        if out.is_floating_point() and out.is_contiguous():
            out.reshape(-1).view(torch.uint8).fill_(0xFF)
        return out

    monkeypatch.setattr(torch, "empty", empty)


@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_fused_moe_nan_in_unwritten_buffer_rows_reaches_no_output(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows outside every expert's segment, or past masked_m, hold NaN in the layer's buffers (on CPU the GEMM
    outputs' rows; the PyTorch routing and activation zero theirs): no output bit changes."""
    weights, hidden, ids, topk_weights = moe_inputs()
    clean = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    fill_empty_with_nan(monkeypatch)
    out = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    assert torch.equal(bits(out), bits(clean))
