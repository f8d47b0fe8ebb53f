"""SM90 weight-gradient kernels (FP32 out) against the float64 reference: dense ``fp8_gemm_nt`` (recipe
(1, 1, 128)), K-grouped ``k_grouped_fp8_gemm_tn_contiguous`` and ``k_grouped_bf16_gemm_tn_contiguous``,
with and without ``c`` (separate or in place), NaN-poisoned outputs, empty and one-block groups, both
operand layouts, a CUDA graph replayed with new group sizes, and bitwise determinism."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dg_moe
from dg_moe import layout, reference
from dg_moe.kernels.sm90_fp8_wgrad.heuristic import BUILT_BLOCK_NS
from dg_moe.reference.common import RECIPE_1D1D

from .gpu_inputs import BF16_SIMILARITY_LIMIT, assert_matches

pytestmark = pytest.mark.gpu


def _poisoned(*shape: int) -> torch.Tensor:
    return torch.full(shape, float("nan"), device="cuda", dtype=torch.float32)


def _values(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """bf16 [rows, cols] with rows of different magnitude (so per-row scales differ)."""
    x = torch.randn(rows, cols, device="cuda", generator=gen)
    return (x * (torch.rand(rows, 1, device="cuda", generator=gen) * 4 + 0.25)).to(torch.bfloat16)


def _per_row(rows: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 [rows, k] with one FP32 scale per row per 128 columns: [rows, k/128]."""
    return layout.per_token_cast_to_fp8(_values(rows, k, gen))


def _per_channel(sum_k: int, cols: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 [sum_k, cols] (cols contiguous) with one FP32 scale per column per 128 rows: [sum_k/128, cols]."""
    return layout.per_channel_cast_to_fp8(_values(sum_k, cols, gen))


def _k_major(x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same operand with its data K-major: a .mT view of a [cols, sum_k] buffer."""
    return x[0].mT.contiguous().mT, x[1]


def _assert_bitwise(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    assert torch.equal(x.view(torch.int32), y.view(torch.int32)), what


DENSE_SHAPES = [(7168, 2112, 4096), (2112, 7168, 8192), (4096, 7168, 4096), (24576, 1536, 4096),
                (1000, 576, 8192), (129, 2112, 384), (257, 576, 256), (1, 576, 128)]


@pytest.mark.parametrize("m,n,k", DENSE_SHAPES)
def test_dense_wgrad(m, n, k, cuda_gen):
    a, b = _per_row(m, k, cuda_gen), _per_row(n, k, cuda_gen)
    ref = reference.ref_fp8_gemm_nt(a, b, None, RECIPE_1D1D)
    d = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(a, b, d, recipe=RECIPE_1D1D)
    assert_matches(d, ref)
    again = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(a, b, again)  # recipe inferred from the FP32 d
    _assert_bitwise(d, again, "second run differs bitwise")

    c = torch.randn(m, n, device="cuda", generator=cuda_gen)
    with_c = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(a, b, with_c, c=c, recipe=RECIPE_1D1D)
    assert_matches(with_c, ref + c.double())
    in_place = c.clone()
    dg_moe.fp8_gemm_nt(a, b, in_place, c=in_place, recipe=RECIPE_1D1D)
    _assert_bitwise(in_place, with_c, "accumulating in place differs from into a separate d")


def test_dense_wgrad_strided_c_and_packed_ue8m0_scales(cuda_gen):
    m, n, k = 300, 576, 1024
    xa, xb = _values(m, k, cuda_gen), _values(n, k, cuda_gen)
    a = layout.per_token_cast_to_fp8(xa, use_ue8m0=True)
    b = layout.per_token_cast_to_fp8(xb, use_ue8m0=True)
    packed_a = layout.per_token_cast_to_fp8(xa, use_ue8m0=True, use_packed_ue8m0=True)
    packed_b = layout.per_token_cast_to_fp8(xb, use_ue8m0=True, use_packed_ue8m0=True)
    c = torch.randn(m, n + 5, device="cuda", generator=cuda_gen)[:, 3:n + 3]  # rows 4 bytes off 8-byte alignment
    d = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(packed_a, packed_b, d, c=c, recipe=RECIPE_1D1D)
    assert_matches(d, reference.ref_fp8_gemm_nt(a, b, c, RECIPE_1D1D))


def _ks(total_blocks: int, groups: int, gen: torch.Generator) -> list[int]:
    """K of each group (multiples of 128) summing to total_blocks * 128: one empty group, one of a single
    block, the rest random."""
    left = total_blocks - 1
    weights = torch.rand(groups - 2, device="cuda", generator=gen).tolist()
    shares = [int(w / sum(weights) * left) for w in weights]
    shares[-1] += left - sum(shares)
    return [0, 128] + [blocks * 128 for blocks in shares]


def _layout(ks: list[int], psum: bool) -> torch.Tensor:
    values = torch.tensor(ks).cumsum(0) if psum else torch.tensor(ks)
    return values.to(device="cuda", dtype=torch.int32)


# DeepSeek-V3's expert weight gradients (gate/up: 4096 x 7168, down: 7168 x 2048) over 4096-8192 tokens, many
# small groups, and M and N that are no multiple of anything (an odd N: single-column stores).
K_GROUPED_SHAPES = [(4096, 7168, 4, 8192), (7168, 2048, 16, 8192), (7168, 2048, 8, 4096), (512, 2048, 32, 8192),
                    (100, 37, 5, 1280), (300, 7168, 3, 256)]


@pytest.mark.parametrize("m,n,groups,sum_k", K_GROUPED_SHAPES)
def test_k_grouped(m, n, groups, sum_k, cuda_gen):
    ks = _ks(sum_k // 128, groups, cuda_gen)
    a, b = _per_channel(sum_k, m, cuda_gen), _per_channel(sum_k, n, cuda_gen)
    ref = reference.ref_k_grouped_fp8_gemm_tn_contiguous(a, b, ks)
    outs = []
    for psum in (False, True):
        d = _poisoned(groups, m, n)
        dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks, _layout(ks, psum), use_psum_layout=psum)
        assert_matches(d, ref)
        assert not bool(d[0].any()), "an empty group without c must come out zero"
        outs.append(d)
    _assert_bitwise(outs[0], outs[1], "the sizes and running-sum layouts differ")

    # K-major operands (.mT views of [M, sum_K] and [N, sum_K] buffers) go in without a copy: same bits.
    d = _poisoned(groups, m, n)
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(_k_major(a), _k_major(b), d, ks, _layout(ks, False))
    _assert_bitwise(d, outs[0], "K-major operands differ from row-major ones")

    c = torch.randn(groups, m, n, device="cuda", generator=cuda_gen)
    with_c = _poisoned(groups, m, n)
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, with_c, ks, _layout(ks, True), c=c, use_psum_layout=True)
    assert_matches(with_c, ref + c.double())
    _assert_bitwise(with_c[0], c[0], "an empty group must come out as c")
    in_place = c.clone()
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, in_place, ks, _layout(ks, False), c=in_place)
    _assert_bitwise(in_place, with_c, "accumulating in place differs from into a separate d")
    # Each element takes one reduction per call, so a repeat is bitwise the same.
    again = c.clone()
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, again, ks, _layout(ks, False), c=again)
    _assert_bitwise(again, in_place, "a second in-place call differs bitwise")


def test_k_grouped_strided_output(cuda_gen):
    """d a slice of a larger buffer (rows and groups strided); nothing outside the slice is written."""
    m, n, groups, sum_k = 200, 37, 3, 768
    ks = [256, 0, 512]
    a, b = _per_channel(sum_k, m, cuda_gen), _per_channel(sum_k, n, cuda_gen)
    big = _poisoned(groups + 1, m + 2, n + 3)
    d = big[1:, 1:m + 1, 2:n + 2]
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks, _layout(ks, False))
    assert_matches(d, reference.ref_k_grouped_fp8_gemm_tn_contiguous(a, b, ks))
    assert bool(big[0].isnan().all()) and bool(big[1:, 0].isnan().all()) and bool(big[1:, :, :2].isnan().all())


def test_k_grouped_cuda_graph_replays_with_new_group_sizes(cuda_gen):
    m, n, groups, sum_k = 4096, 2048, 6, 4096
    a_data = torch.empty(m, sum_k, device="cuda", dtype=torch.float8_e4m3fn)  # K-major buffers: no copies
    b_data = torch.empty(n, sum_k, device="cuda", dtype=torch.float8_e4m3fn)
    sfa = torch.empty(sum_k // 128, m, device="cuda")
    sfb = torch.empty(sum_k // 128, n, device="cuda")
    sizes = torch.zeros(groups, dtype=torch.int32, device="cuda")
    c = torch.empty(groups, m, n, device="cuda")
    d = torch.empty(groups, m, n, device="cuda")
    a, b = (a_data.mT, sfa), (b_data.mT, sfb)
    ks_at_capture = [sum_k // groups // 128 * 128] * (groups - 1)
    ks_at_capture.append(sum_k - sum(ks_at_capture))

    def refill(round_: int) -> list[int]:
        ks = _ks(sum_k // 128 - round_, groups, cuda_gen)  # fewer rows than the buffers hold after round 0
        x, y = _per_channel(sum_k, m, cuda_gen), _per_channel(sum_k, n, cuda_gen)
        a_data.copy_(x[0].mT)
        b_data.copy_(y[0].mT)
        sfa.copy_(x[1])
        sfb.copy_(y[1])
        sizes.copy_(torch.tensor(ks, dtype=torch.int32))
        c.copy_(torch.randn(groups, m, n, device="cuda", generator=cuda_gen))
        d.fill_(float("nan"))
        return ks

    refill(0)
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks_at_capture, sizes, c=c)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks_at_capture, sizes, c=c)
    for round_ in range(4):
        ks = refill(round_)
        graph.replay()
        used = sum(ks)
        ref = reference.ref_k_grouped_fp8_gemm_tn_contiguous(
            (a[0][:used], sfa[:used // 128]), (b[0][:used], sfb[:used // 128]), ks, c)
        assert_matches(d, ref)


@pytest.mark.parametrize("block_n", BUILT_BLOCK_NS)
def test_forced_tile_widths(monkeypatch, block_n, cuda_gen):
    """Every tile width the kernel builds on both ops, whatever the cost model would pick, with partial tiles
    in M and N (N = 600: no width divides it)."""
    from dg_moe.kernels.sm90_fp8_wgrad import launcher
    from dg_moe.kernels.sm90_fp8_wgrad.heuristic import max_stages, smem_bytes

    chosen = launcher.config_for

    def forced(*args):
        stages = max_stages(128, block_n)
        return dataclasses.replace(chosen(*args), block_n=block_n, num_stages=stages,
                                   smem_bytes=smem_bytes(128, block_n, stages))

    monkeypatch.setattr(launcher, "config_for", forced)
    monkeypatch.setattr(launcher, "_entries", {})
    m, n, k = 520, 600, 1152
    a, b = _per_row(m, k, cuda_gen), _per_row(n, k, cuda_gen)
    d = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(a, b, d, recipe=RECIPE_1D1D)
    assert_matches(d, reference.ref_fp8_gemm_nt(a, b, None, RECIPE_1D1D))

    ks = [384, 0, 128, 640]
    a, b = _per_channel(k, m, cuda_gen), _per_channel(k, 37, cuda_gen)
    d = _poisoned(len(ks), m, 37)
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks, _layout(ks, True), use_psum_layout=True)
    assert_matches(d, reference.ref_k_grouped_fp8_gemm_tn_contiguous(a, b, ks))



# The BF16 op's shapes: the experts' gate/up and down gradients, many small groups, and M and N of no
# multiple (an odd N: single-column stores).
BF16_K_GROUPED_SHAPES = [(4096, 7168, 4, 4096), (7168, 2048, 16, 4096), (100, 37, 5, 1280), (300, 576, 3, 256)]


@pytest.mark.parametrize("m,n,groups,sum_k", BF16_K_GROUPED_SHAPES)
def test_bf16_k_grouped(m, n, groups, sum_k, cuda_gen):
    ks = _ks(sum_k // 128, groups, cuda_gen)
    a, b = _values(sum_k, m, cuda_gen), _values(sum_k, n, cuda_gen)  # row-major [sum_K, M], [sum_K, N]
    ref = reference.ref_k_grouped_bf16_gemm_tn_contiguous(a, b, ks)
    outs = []
    for psum in (False, True):
        d = _poisoned(groups, m, n)
        dg_moe.k_grouped_bf16_gemm_tn_contiguous(a, b, d, ks, _layout(ks, psum), use_psum_layout=psum)
        assert_matches(d, ref, BF16_SIMILARITY_LIMIT)
        assert not bool(d[0].any()), "an empty group without c must come out zero"
        outs.append(d)
    _assert_bitwise(outs[0], outs[1], "the sizes and running-sum layouts differ")

    # K-major operands (.mT views of [M, sum_K] and [N, sum_K] buffers) are copied into the row-major layout
    # the kernel reads: same bits. (Rows of M = 100 or N = 37 values are not 16-byte multiples: the row-major
    # ones above went through a padded copy too.)
    d = _poisoned(groups, m, n)
    dg_moe.k_grouped_bf16_gemm_tn_contiguous(a.mT.contiguous().mT, b.mT.contiguous().mT, d, ks, _layout(ks, False))
    _assert_bitwise(d, outs[0], "K-major operands differ from row-major ones")

    c = torch.randn(groups, m, n, device="cuda", generator=cuda_gen)
    with_c = _poisoned(groups, m, n)
    dg_moe.k_grouped_bf16_gemm_tn_contiguous(a, b, with_c, ks, _layout(ks, True), c=c, use_psum_layout=True)
    assert_matches(with_c, ref + c.double(), BF16_SIMILARITY_LIMIT)
    _assert_bitwise(with_c[0], c[0], "an empty group must come out as c")
    in_place = c.clone()
    dg_moe.k_grouped_bf16_gemm_tn_contiguous(a, b, in_place, ks, _layout(ks, False), c=in_place)
    _assert_bitwise(in_place, with_c, "accumulating in place differs from into a separate d")


@pytest.mark.parametrize("block_n", [64, 128, 144])
def test_forced_b_sharing_pairs(monkeypatch, block_n, cuda_gen):
    """2-CTA clusters sharing B on all three ops, partial tiles in M (1000 rows: 8 m-blocks, 4 pairs) and N
    (600 columns: the second CTA's half of the last B box lies past N), c accumulated in place."""
    from dg_moe.kernels.sm90_fp8_wgrad import launcher
    from dg_moe.kernels.sm90_fp8_wgrad.heuristic import max_stages, smem_bytes

    chosen = launcher.config_for

    def forced(*args):
        config = chosen(*args)
        stages = max_stages(128, block_n, config.bf16)
        return dataclasses.replace(config, block_n=block_n, num_stages=stages,
                                   smem_bytes=smem_bytes(128, block_n, stages, config.bf16), share_b=True)

    monkeypatch.setattr(launcher, "config_for", forced)
    monkeypatch.setattr(launcher, "_entries", {})
    m, n, k = 1000, 600, 1152
    a, b = _per_row(m, k, cuda_gen), _per_row(n, k, cuda_gen)
    c = torch.randn(m, n, device="cuda", generator=cuda_gen)
    d = c.clone()
    dg_moe.fp8_gemm_nt(a, b, d, c=d, recipe=RECIPE_1D1D)
    assert_matches(d, reference.ref_fp8_gemm_nt(a, b, None, RECIPE_1D1D) + c.double())

    ks = [384, 0, 128, 640]
    a, b = _per_channel(k, m, cuda_gen), _per_channel(k, n, cuda_gen)
    d = _poisoned(len(ks), m, n)
    dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks, _layout(ks, True), use_psum_layout=True)
    assert_matches(d, reference.ref_k_grouped_fp8_gemm_tn_contiguous(a, b, ks))

    if block_n == 128:  # the BF16 widths (64, 128) whose half is whole 64-wide MN-major chunks
        a, b = _values(k, m, cuda_gen), _values(k, n, cuda_gen)
        d = _poisoned(len(ks), m, n)
        dg_moe.k_grouped_bf16_gemm_tn_contiguous(a, b, d, ks, _layout(ks, False))
        assert_matches(d, reference.ref_k_grouped_bf16_gemm_tn_contiguous(a, b, ks), BF16_SIMILARITY_LIMIT)

