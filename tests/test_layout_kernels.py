"""The Triton layout kernels against the PyTorch formulation of the same ops.

Routing, the moves and the reduce must agree bit for bit; the activation may differ where its ``exp``
does (one ulp), which the test bounds. Where no GPU is present the kernels run in Triton's interpreter
(conftest.py sets TRITON_INTERPRET=1 before anything imports them). On a GPU machine the cuda cases run
the compiled kernels against the PyTorch path on CPU.
"""

from __future__ import annotations

import os

import pytest
import torch
import triton  # noqa: F401  (a missing Triton must fail this module, not skip it)

from dg_moe import layout
from dg_moe.layout import _kernels
from dg_moe.layout._kernels import BACKEND_ENV, enabled

from .layout_loops import assert_activation_close, assert_fp8_equal, hidden_states, topk_ids
from .test_layout_routing import CASES, case_inputs

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = [
    pytest.param("cpu", id="interpreter",
                 marks=pytest.mark.skipif(not INTERPRETED, reason="a GPU is present: the cuda cases run the kernels")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


def to(value: object, device: str) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to(v, device) for v in value)
    return value


def both(monkeypatch: pytest.MonkeyPatch, device: str, op, *args, **kwargs) -> tuple[object, object]:
    """(PyTorch formulation on CPU, Triton kernels on ``device``) of ``op(*args, **kwargs)``."""
    monkeypatch.setenv(BACKEND_ENV, "torch")
    want = op(*to(args, "cpu"), **kwargs)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert enabled(torch.device(device))
    got = op(*to(args, device), **kwargs)
    return want, got


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype, shape, strides and bits."""
    # Strides before .cpu(): a copy of a view with gaps (MN-major scales) comes back dense.
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    got = got.cpu()
    if got.dtype == torch.float8_e4m3fn:
        assert_fp8_equal(got, want)
    else:
        assert torch.equal(bits(got), bits(want))


def assert_layouts_same(got: tuple, want: tuple) -> None:
    for name, g, w in zip(want._fields, got, want, strict=True):
        try:
            assert_same(g, w)
        except AssertionError as e:
            raise AssertionError(f"field {name} differs") from e


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_route_to_contiguous_kernel_matches_torch(monkeypatch, device, name):
    hidden, ids, num_experts = case_inputs(name, seed=3 * len(name))
    want, got = both(monkeypatch, device, layout.route_to_contiguous, hidden, ids, num_experts)
    assert_layouts_same(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["random", "minus_one_entries", "all_on_one_expert", "no_tokens", "k8"])
@pytest.mark.parametrize("max_m", [1, 6, 130])
def test_route_to_masked_kernel_matches_torch(monkeypatch, device, name, max_m):
    hidden, ids, num_experts = case_inputs(name, seed=5 * len(name) + max_m)
    want, got = both(monkeypatch, device, layout.route_to_masked, hidden, ids, num_experts, max_m)
    assert_layouts_same(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_routing_kernel_quantises_like_per_token_cast(monkeypatch, device, dtype):
    # H = 1152: nine 128-column blocks, so the kernel's 8-block loop runs a full and a partial step.
    hidden = (hidden_states(45, 1152, seed=7) * 3).to(dtype)
    ids = topk_ids(45, 3, 5, seed=8, drop=0.2)
    for use_ue8m0 in (False, True):
        want, got = both(monkeypatch, device, layout.route_to_masked, hidden, ids, 5, 40, use_ue8m0=use_ue8m0)
        assert_layouts_same(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_routing_kernel_moves_fp8_input_with_strided_scales(monkeypatch, device):
    x, sf = layout.per_token_cast_to_fp8(hidden_states(33, 512, seed=9))
    sf_mn_major = layout.get_mn_major_tma_aligned_tensor(sf)
    assert sf_mn_major.stride(0) == 1
    ids = topk_ids(33, 2, 4, seed=10, drop=0.3)
    want, got = both(monkeypatch, device, layout.route_to_contiguous, (x, sf_mn_major), ids, 4)
    assert_layouts_same(got, want)


def e4m3_rounding_edges() -> torch.Tensor:
    """float32 values at and around every rounding boundary of e4m3 (|x| <= 448), both signs."""
    grid = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    mid = (grid[:-1] + grid[1:]) / 2
    up = torch.nextafter(mid, torch.tensor(float("inf")))
    down = torch.nextafter(mid, torch.tensor(0.0))
    tiny = torch.tensor([2.0**-10, 2.0**-11, 3 * 2.0**-11, 1e-30, 0.0])
    values = torch.cat([grid, mid, up, down, tiny])
    return torch.cat([values, -values])


@pytest.mark.parametrize("device", DEVICES)
def test_routing_kernel_rounds_to_nearest_even_at_every_e4m3_boundary(monkeypatch, device):
    # 448 in every block makes the scale exactly 1.0, so the kernel rounds these very values.
    edges = e4m3_rounding_edges()
    blocks = -(-edges.numel() // 127)
    padded = torch.zeros(blocks * 127)
    padded[: edges.numel()] = edges
    hidden = torch.cat([padded.view(blocks, 127), torch.full((blocks, 1), 448.0)], dim=1)  # [T, 128]
    ids = torch.zeros(blocks, 1, dtype=torch.int64)
    want, got = both(monkeypatch, device, layout.route_to_contiguous, hidden, ids, 1)
    assert_layouts_same(got, want)
    assert torch.equal(want.sfa[:blocks], torch.ones(blocks, 1))


def reduce_inputs(rows: int, tokens: int, top_k: int, width: int, y_dtype: torch.dtype, w_dtype: torch.dtype,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(rows, width, generator=g).to(y_dtype)
    inverse = torch.randint(-1, rows, (tokens, top_k), generator=g, dtype=torch.int32)
    # Rows nothing points at hold NaN and inf: the reduce must never read them.
    unread = torch.ones(rows, dtype=torch.bool)
    unread[inverse[inverse >= 0].long()] = False
    y[unread] = float("nan")
    y[unread.nonzero()[::2, 0]] = float("inf")
    weights = torch.rand(top_k, tokens, generator=g).to(w_dtype).t()  # column-major on purpose
    return y, inverse, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("y_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_reduce_kernel_matches_torch(monkeypatch, device, y_dtype, w_dtype):
    # 1280 columns: one full and one partial 1024-column block per token.
    y, inverse, weights = reduce_inputs(300, 57, 4, 1280, y_dtype, w_dtype, seed=11)
    want, got = both(monkeypatch, device, layout.unpermute_reduce_contiguous, y, inverse, weights)
    assert_same(got, want)
    assert not torch.isnan(want).any()
    y3 = y[:296].view(8, 37, 1280)
    inverse3 = torch.where(inverse < 296, inverse, -1)
    want, got = both(monkeypatch, device, layout.unpermute_reduce_masked, y3, inverse3, weights)
    assert_same(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_kernel_rounds_bf16_to_nearest_even(monkeypatch, device):
    # One slot of weight 1: the output is y rounded to bf16, ties and all.
    g = torch.Generator().manual_seed(12)
    base = torch.randn(512, generator=g).to(torch.bfloat16).float()
    half_ulp = base.abs().view(torch.int32).bitwise_and(0x7F800000).view(torch.float32) * 2.0**-8
    ties = base + half_ulp
    values = torch.cat([ties, torch.nextafter(ties, ties * 2), torch.nextafter(ties, base), -ties,
                        torch.tensor([float("inf"), -float("inf"), 3.0e38, 1e-40] * 32)])
    y = values.view(-1, 128)
    inverse = torch.arange(y.shape[0], dtype=torch.int32).view(-1, 1)
    weights = torch.ones(y.shape[0], 1)
    want, got = both(monkeypatch, device, layout.unpermute_reduce_contiguous, y, inverse, weights)
    assert_same(got, want)


def silu_inputs(rows: int, inter: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 2 * inter, generator=g) * 4).to(torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_silu_kernel_contiguous_close_to_torch(monkeypatch, device, use_ue8m0):
    x = silu_inputs(260, 1152, seed=13)
    per_row = torch.randint(-1, 3, (260,), generator=torch.Generator().manual_seed(14), dtype=torch.int32)
    x[per_row < 0] = float("nan")  # padding rows: never read
    want, got = both(monkeypatch, device, layout.silu_and_mul_to_fp8_contiguous, x, per_row, use_ue8m0=use_ue8m0)
    assert_activation_close(got, want)
    padding = per_row < 0
    assert not want[0][padding].view(torch.uint8).any() and torch.equal(want[1][padding], torch.ones(1, 9).expand(
        int(padding.sum()), 9))
    ends = torch.tensor([100, 100, 250], dtype=torch.int32)
    want, got = both(monkeypatch, device, layout.silu_and_mul_to_fp8_contiguous, x.nan_to_num(), ends,
                     use_psum_layout=True, use_ue8m0=use_ue8m0)
    assert_activation_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_silu_kernel_masked_close_to_torch(monkeypatch, device):
    x = silu_inputs(5 * 24, 256, seed=15).view(5, 24, 512)
    masked_m = torch.tensor([0, 24, 7, -3, 99], dtype=torch.int32)
    rows = torch.arange(24)
    x[rows.unsqueeze(0) >= masked_m.clamp(0, 24).unsqueeze(1)] = float("nan")
    want, got = both(monkeypatch, device, layout.silu_and_mul_to_fp8_masked, x, masked_m)
    assert_activation_close(got, want)


def valid_rows(masked_m: torch.Tensor, max_m: int) -> torch.Tensor:
    """bool [E, max_m]: the rows below ``clamp(masked_m[e], 0, max_m)``."""
    return torch.arange(max_m).unsqueeze(0) < masked_m.cpu().long().clamp(0, max_m).unsqueeze(1)


def scale_storage(sfa: torch.Tensor) -> torch.Tensor:
    """The whole MN-major storage [E, Kb, A] under ``sfa`` [E, max_m, Kb] (strides ``(Kb*A, 1, A)``)."""
    groups, _, num_blocks = sfa.shape
    aligned = sfa.stride(2)
    # Strided on the tensor's own device: a copy to the CPU keeps only the logical elements.
    return sfa.as_strided((groups, num_blocks, aligned), (num_blocks * aligned, aligned, 1)).cpu()


def assert_rows_same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor],
                     valid: torch.Tensor) -> None:
    """(e4m3 [G, R, H], float32 [G, R, H/128]) agree in layout, and in bits on the rows where ``valid``
    (bool [G, R]) holds."""
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and g.stride() == w.stride()
    assert torch.equal(got[0].cpu().view(torch.uint8)[valid], want[0].cpu().view(torch.uint8)[valid])
    assert torch.equal(got[1].cpu().view(torch.int32)[valid], want[1].cpu().view(torch.int32)[valid])


def assert_padding_unwritten(a: torch.Tensor, sfa: torch.Tensor, valid: torch.Tensor, poison: int) -> None:
    """Rows of a [G, R, H] where ``valid`` (bool [G, R]) is False, their scales (sfa [G, R, H/128] MN-major)
    and the storage's alignment columns all still hold the ``poisoned_empty`` byte."""
    max_m = a.shape[1]
    if max_m == 0:
        return  # no rows, and no scale storage either
    padding = ~valid
    assert bool((a.cpu().view(torch.uint8)[padding] == poison).all())
    storage = scale_storage(sfa).view(torch.int32)
    padding_columns = torch.cat([padding, padding.new_ones(padding.shape[0], storage.shape[2] - max_m)], dim=1)
    assert bool((storage.transpose(1, 2)[padding_columns] == poison * 0x01010101).all())


def assert_unpadded_route_same(got: layout.MaskedLayout, want: layout.MaskedLayout, poison: int) -> None:
    for name in ("masked_m", "inverse", "overflow"):
        try:
            assert_same(getattr(got, name), getattr(want, name))
        except AssertionError as e:
            raise AssertionError(f"field {name} differs") from e
    valid = valid_rows(want.masked_m, want.a.shape[1])
    assert_rows_same((got.a, got.sfa), (want.a, want.sfa), valid)
    assert_padding_unwritten(got.a, got.sfa, valid, poison)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("max_m", [1, 6, 130])
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32])
def test_route_to_masked_unpadded_kernels_match_torch(monkeypatch, poisoned_empty, device, name, max_m, ids_dtype):
    hidden, ids, num_experts = case_inputs(name, seed=7 * len(name) + max_m, dtype=ids_dtype)
    want, got = both(monkeypatch, device, layout.route_to_masked, hidden, ids, num_experts, max_m,
                     zero_padding=False)
    assert_unpadded_route_same(got, want, poisoned_empty)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_unpadded_routing_quantises_like_per_token_cast(monkeypatch, poisoned_empty, device, dtype):
    # 300 entries: several chunks of the index kernel, the last partial; ~60 entries an expert overflow
    # max_m = 40. H = 1152: nine 128-column blocks, a full and a partial 8-block step.
    hidden = (hidden_states(100, 1152, seed=17) * 3).to(dtype)
    ids = topk_ids(100, 3, 5, seed=18, drop=0.1)
    for use_ue8m0 in (False, True):
        want, got = both(monkeypatch, device, layout.route_to_masked, hidden, ids, 5, 40, use_ue8m0=use_ue8m0,
                         zero_padding=False)
        assert bool(want.overflow.gt(0).any())
        assert ids.numel() > 2 * _kernels._INDEX_BLOCK and ids.numel() % _kernels._INDEX_BLOCK != 0
        assert_unpadded_route_same(got, want, poisoned_empty)


def out_of_range_ids(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [300, 8] for 10 experts with values in [-3, 12), and the same with every id outside [0, 10) as -1
    (what the kernels must make of them)."""
    ids = torch.randint(-3, 12, (300, 8), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if dtype == torch.int64:
        ids[0, 0] = 2**32 + 1  # would be expert 1 if truncated to int32 before the range check
    return ids, torch.where((ids >= 0) & (ids < 10), ids, -1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32])
def test_masked_index_kernel_treats_out_of_range_ids_as_not_routed(poisoned_empty, device, ids_dtype):
    # 2400 entries: chunk counts rounded up to a power of two leave chunks past the entries. The op's CPU
    # range check rejects such ids, so the launcher is called directly; the reference sees them as -1.
    ids, routed_ids = out_of_range_ids(ids_dtype, 21)
    want = layout.route_to_masked(hidden_states(300, 128, 22), routed_ids, 10, 150)
    inverse, masked_m, overflow = _kernels.masked_route_index(ids.to(device), 10, 150)
    assert_same(inverse, want.inverse)
    assert_same(masked_m, want.masked_m)
    assert_same(overflow, want.overflow)
    assert bool(want.overflow.gt(0).any())


@pytest.mark.parametrize("device", DEVICES)
def test_unpadded_routing_of_one_decode_token(monkeypatch, poisoned_empty, device):
    # DeepSeek-V3's decode routing in miniature: one token, top-8 of 256 experts, max_m = 1.
    ids = torch.randperm(256, generator=torch.Generator().manual_seed(23))[:8].view(1, 8)
    want, got = both(monkeypatch, device, layout.route_to_masked, hidden_states(1, 256, 24), ids, 256, 1,
                     zero_padding=False)
    assert_unpadded_route_same(got, want, poisoned_empty)
    assert int(want.masked_m.sum()) == 8


@pytest.mark.parametrize("device", DEVICES)
def test_padded_kernels_write_every_element(monkeypatch, poisoned_empty, device):
    hidden, ids, num_experts = case_inputs("random", seed=25)
    want, got = both(monkeypatch, device, layout.route_to_masked, hidden, ids, num_experts, 7)
    assert_layouts_same(got, want)
    assert bool((scale_storage(got.sfa)[:, :, 7:] == 1.0).all())
    x = silu_inputs(4 * 7, 256, seed=26).view(4, 7, 512)
    masked_m = torch.tensor([0, 7, 3, 12], dtype=torch.int32)
    want, got = both(monkeypatch, device, layout.silu_and_mul_to_fp8_masked, x, masked_m)
    assert_activation_close(got, want)
    assert bool((scale_storage(got[1])[:, :, 7:] == 1.0).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_m", [6, 24])
@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_silu_kernel_masked_unpadded_matches_padded(monkeypatch, poisoned_empty, device, max_m, use_ue8m0):
    # I = 1152: a full and a partial 8-block step. max_m = 6 leaves two alignment columns (A = 8).
    x = silu_inputs(5 * max_m, 1152, seed=27).view(5, max_m, 2304)
    masked_m = torch.tensor([0, max_m, 3, -3, 99], dtype=torch.int32)
    valid = valid_rows(masked_m, max_m)
    x[~valid] = float("nan")  # never read
    monkeypatch.setenv(BACKEND_ENV, "triton")
    x, masked_m = x.to(device), masked_m.to(device)
    padded = layout.silu_and_mul_to_fp8_masked(x, masked_m, use_ue8m0=use_ue8m0)
    unpadded = layout.silu_and_mul_to_fp8_masked(x, masked_m, use_ue8m0=use_ue8m0, zero_padding=False)
    assert_rows_same(unpadded, padded, valid)
    assert_padding_unwritten(*unpadded, valid, poisoned_empty)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert_activation_close(padded, layout.silu_and_mul_to_fp8_masked(x.cpu(), masked_m.cpu(), use_ue8m0=use_ue8m0))


def one_group(layout_pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The contiguous layout's (e4m3 [M, H], float32 [M, H/128] MN-major) as one group [1, M, ...]."""
    return tuple(t.unsqueeze(0) for t in layout_pair)


def assert_unpadded_contiguous_same(got: layout.ContiguousLayout, want: layout.ContiguousLayout,
                                    poison: int) -> None:
    for name in ("grouped_layout", "grouped_layout_psum", "inverse"):
        try:
            assert_same(getattr(got, name), getattr(want, name))
        except AssertionError as e:
            raise AssertionError(f"field {name} differs") from e
    valid = (want.grouped_layout >= 0).unsqueeze(0)
    assert_rows_same(one_group((got.a, got.sfa)), one_group((want.a, want.sfa)), valid)
    assert_padding_unwritten(*one_group((got.a, got.sfa)), valid, poison)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_route_to_contiguous_unpadded_kernels_match_torch(monkeypatch, poisoned_empty, device, name):
    hidden, ids, num_experts = case_inputs(name, seed=11 * len(name))
    want, got = both(monkeypatch, device, layout.route_to_contiguous, hidden, ids, num_experts, zero_padding=False)
    assert_unpadded_contiguous_same(got, want, poisoned_empty)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("num_experts", [37, 600])
def test_unpadded_contiguous_routing_over_several_blocks(monkeypatch, poisoned_empty, device, ids_dtype,
                                                         num_experts):
    # 560 entries: four full 128-entry blocks of the index kernels and a partial fifth. E = 37 pads to 64
    # lanes, every expert spans blocks; E = 600 pads to 1024, so the prefix over blocks takes two 4-block
    # steps. int32 ids also round scales to UE8M0, which only the quantisation sees.
    hidden = hidden_states(70, 128, seed=29)
    ids = topk_ids(70, 8, num_experts, seed=30, drop=0.1, dtype=ids_dtype)
    assert ids.numel() > 2 * _kernels._CONTIGUOUS_BLOCK and ids.numel() % _kernels._CONTIGUOUS_BLOCK != 0
    want, got = both(monkeypatch, device, layout.route_to_contiguous, hidden, ids, num_experts,
                     use_ue8m0=ids_dtype == torch.int32, zero_padding=False)
    assert_unpadded_contiguous_same(got, want, poisoned_empty)


def route_masked_unpadded(hidden, ids, num_experts):
    return layout.route_to_masked(hidden, ids, num_experts, 7, zero_padding=False)


def route_contiguous_unpadded(hidden, ids, num_experts):
    return layout.route_to_contiguous(hidden, ids, num_experts, zero_padding=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["masked", "contiguous"])
def test_unpadded_routing_moves_fp8_input_with_strided_scales(monkeypatch, poisoned_empty, device, route):
    x, sf = layout.per_token_cast_to_fp8(hidden_states(33, 512, seed=19))
    sf_mn_major = layout.get_mn_major_tma_aligned_tensor(sf)
    assert sf_mn_major.stride(0) == 1
    ids = topk_ids(33, 2, 4, seed=20, drop=0.3)
    op, check = ((route_masked_unpadded, assert_unpadded_route_same) if route == "masked"
                 else (route_contiguous_unpadded, assert_unpadded_contiguous_same))
    want, got = both(monkeypatch, device, op, (x, sf_mn_major), ids, 4)
    check(got, want, poisoned_empty)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32])
def test_contiguous_index_kernels_treat_out_of_range_ids_as_not_routed(poisoned_empty, device, ids_dtype):
    # 2400 entries in 19 blocks. The op's CPU range check rejects such ids, so the launcher is called
    # directly; the reference sees them as -1.
    ids, routed_ids = out_of_range_ids(ids_dtype, 33)
    want = layout.route_to_contiguous(hidden_states(300, 128, 34), routed_ids, 10)
    grouped_layout, psum, inverse = _kernels.contiguous_route_index(ids.to(device), 10, want.a.shape[0])
    assert_same(grouped_layout, want.grouped_layout)
    assert_same(psum, want.grouped_layout_psum)
    assert_same(inverse, want.inverse)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_psum_layout", [False, True])
def test_silu_kernel_contiguous_unpadded_matches_padded(monkeypatch, poisoned_empty, device, use_psum_layout):
    # 134 rows leave two alignment columns (A = 136). Expert 0 holds rows [0, 40), expert 1 none, expert 2
    # rows [128, 130), rows past 130 are unused: the same rows in either form of grouped_layout.
    x = silu_inputs(134, 256, seed=35)
    per_row = torch.full((134,), -1, dtype=torch.int32)
    per_row[:40], per_row[128:130] = 0, 2
    grouped_layout = torch.tensor([40, 40, 130], dtype=torch.int32) if use_psum_layout else per_row
    valid = per_row >= 0
    x[~valid] = float("nan")  # never read
    monkeypatch.setenv(BACKEND_ENV, "triton")
    x, grouped_layout = x.to(device), grouped_layout.to(device)
    padded = layout.silu_and_mul_to_fp8_contiguous(x, grouped_layout, use_psum_layout=use_psum_layout)
    unpadded = layout.silu_and_mul_to_fp8_contiguous(x, grouped_layout, use_psum_layout=use_psum_layout,
                                                     zero_padding=False)
    assert_rows_same(one_group(unpadded), one_group(padded), valid.unsqueeze(0))
    assert_padding_unwritten(*one_group(unpadded), valid.unsqueeze(0), poisoned_empty)
    assert bool((scale_storage(one_group(padded)[1])[:, :, 134:] == 1.0).all())
    monkeypatch.setenv(BACKEND_ENV, "torch")
    want = layout.silu_and_mul_to_fp8_contiguous(x.cpu(), grouped_layout.cpu(), use_psum_layout=use_psum_layout)
    assert_activation_close(padded, want)


@pytest.mark.gpu
@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_quantisers_on_cuda_are_the_cpu_bits(use_ue8m0):
    # The casts are PyTorch on every device. On CUDA, torch divides by a Python number as a multiplication
    # by its float32 reciprocal, which moved about half of all scales amax / 448 by one ulp (and their
    # codes with them) against the CPU and the Triton kernels (tools/sanitize_cases.py layout_quant
    # caught it on an H100); the division now takes a tensor divisor on every device.
    x = hidden_states(301, 1152, seed=41) * 3  # 301 rows of nine blocks each: 2709 scales
    want = layout.per_token_cast_to_fp8(x, use_ue8m0=use_ue8m0)
    got = layout.per_token_cast_to_fp8(x.cuda(), use_ue8m0=use_ue8m0)
    assert_fp8_equal(got[0].cpu(), want[0])
    assert torch.equal(bits(got[1].cpu()), bits(want[1]))
    if use_ue8m0:
        packed = layout.per_token_cast_to_fp8(x.cuda(), use_ue8m0=True, use_packed_ue8m0=True)[1]
        assert torch.equal(packed.cpu(), layout.per_token_cast_to_fp8(x, use_ue8m0=True, use_packed_ue8m0=True)[1])
    w = x[:300, :1024].float()  # per block: [N, K] with a partial 128 x 128 block in N; per channel: [K, N]
    for cast, weight in ((layout.per_block_cast_to_fp8, w), (layout.per_channel_cast_to_fp8, w[:256])):
        want = cast(weight, use_ue8m0=use_ue8m0)
        got = cast(weight.cuda(), use_ue8m0=use_ue8m0)
        assert_fp8_equal(got[0].cpu(), want[0])
        assert torch.equal(bits(got[1].cpu()), bits(want[1]))


def test_backend_env_selects_the_implementation(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert not enabled(torch.device("cpu"))
    monkeypatch.setenv(BACKEND_ENV, "auto")
    assert not enabled(torch.device("cpu"))
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="not a layout backend"):
        enabled(torch.device("cpu"))
    monkeypatch.setenv(BACKEND_ENV, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        enabled(torch.device("cpu"))


class _FakeCudaTensor:
    """What _launch_device reads of a CUDA tensor on GPU ``index`` (a CPU build has none to make)."""

    is_cuda = True

    def __init__(self, index: int) -> None:
        self.index = index

    def get_device(self) -> int:
        return self.index


@pytest.mark.parametrize("current,target", [(0, 0), (1, 1), (0, 1), (1, 0)])
def test_launch_device_switches_only_when_the_device_differs(monkeypatch, current, target):
    """A launch for a tensor on the current GPU enters no device context; one on another GPU makes that GPU
    current for the launch and restores the previous one after it."""
    selected = [current]
    exchanges = []

    def exchange(index: int) -> int:
        exchanges.append(index)
        previous, selected[0] = selected[0], index
        return previous

    monkeypatch.setattr(torch.cuda, "current_device", lambda: selected[0])
    monkeypatch.setattr(torch.cuda, "_exchange_device", exchange)
    monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", exchange)
    with _kernels._launch_device(_FakeCudaTensor(target)):
        assert selected[0] == target
    assert selected[0] == current
    assert exchanges == ([] if current == target else [target, current])


def test_launch_device_asks_nothing_of_cuda_for_cpu_tensors(cuda_untouchable):
    with _kernels._launch_device(torch.empty(1)):
        pass
