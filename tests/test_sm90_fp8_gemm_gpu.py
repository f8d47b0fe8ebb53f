"""SM90 FP8 GEMM kernels against the float64 reference: dense, contiguous, masked, CUDA graphs."""

from __future__ import annotations

import pytest
import torch

import dg_moe
from dg_moe import layout, reference

from .gpu_inputs import assert_matches, fp8_activations, fp8_weights

pytestmark = pytest.mark.gpu

DEEPSEEK_NK = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
EXTRA_NK = [(576, 7168), (7232, 2048), (1536, 640)]  # 640: an odd K-block count
MS = [0, 1, 7, 64, 65, 128, 129, 1000, 4096, 4097]


def _poisoned(*shape) -> torch.Tensor:
    return torch.full(shape, float("nan"), device="cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize("n,k", DEEPSEEK_NK + EXTRA_NK)
@pytest.mark.parametrize("m", MS)
def test_dense_nt(m, n, k, cuda_gen):
    a = fp8_activations(m, k, cuda_gen)
    b = fp8_weights(1, n, k, cuda_gen)
    b = (b[0][0], b[1][0])
    d = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(a, b, d)
    if m == 0:
        return
    assert_matches(d, reference.ref_fp8_gemm_nt(a, b))
    again = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(a, b, again)
    assert torch.equal(d.view(torch.int16), again.view(torch.int16)), "second run differs bitwise"


def test_dense_mn_major_sfa_is_used_as_is(cuda_gen):
    m, n, k = 129, 2112, 7168
    x, sfa = fp8_activations(m, k, cuda_gen)
    sfa_mn = layout.get_mn_major_tma_aligned_tensor(sfa)
    b = fp8_weights(1, n, k, cuda_gen)
    b = (b[0][0], b[1][0])
    d_row, d_mn = _poisoned(m, n), _poisoned(m, n)
    dg_moe.fp8_gemm_nt((x, sfa), b, d_row)
    dg_moe.fp8_gemm_nt((x, sfa_mn), b, d_mn)
    assert torch.equal(d_row.view(torch.int16), d_mn.view(torch.int16))


def test_dense_packed_ue8m0_scales(cuda_gen):
    m, n, k = 65, 576, 7168
    x = torch.randn(m, k, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    a = layout.per_token_cast_to_fp8(x, use_ue8m0=True)
    packed = layout.per_token_cast_to_fp8(x, use_ue8m0=True, use_packed_ue8m0=True)
    b = fp8_weights(1, n, k, cuda_gen)
    b = (b[0][0], b[1][0])
    d = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(packed, b, d)
    assert_matches(d, reference.ref_fp8_gemm_nt(a, b))


def _random_counts(groups: int, total_hint: int, cuda_gen: torch.Generator) -> list[int]:
    counts = torch.randint(0, max(2, 2 * total_hint // groups), (groups,), device="cuda", generator=cuda_gen).tolist()
    counts[0] = 0  # an empty expert
    if groups > 1:
        counts[1] = 1  # an expert with one token
    return counts


def _contiguous_inputs(counts: list[int], k: int, cuda_gen: torch.Generator):
    align = layout.get_mk_alignment_for_contiguous_layout()
    padded = [layout.align(c, align) for c in counts]
    m_sum = max(sum(padded), align)
    per_row = torch.full((m_sum,), -1, dtype=torch.int32, device="cuda")
    ends, row = [], 0
    for g, (c, p) in enumerate(zip(counts, padded, strict=True)):
        per_row[row:row + c] = g
        ends.append(row + c)
        row += p
    psum = torch.tensor(ends, dtype=torch.int32, device="cuda")
    return fp8_activations(m_sum, k, cuda_gen), per_row, psum


@pytest.mark.parametrize("groups,n,k,rows", [
    (1, 4096, 7168, 1000), (4, 4096, 7168, 2048), (8, 7168, 2048, 512), (32, 576, 7168, 64),
    (288, 256, 512, 8), (5, 7232, 2048, 300),
])
def test_contiguous(groups, n, k, rows, cuda_gen):
    counts = _random_counts(groups, rows * groups, cuda_gen)
    a, per_row, psum = _contiguous_inputs(counts, k, cuda_gen)
    b = fp8_weights(groups, n, k, cuda_gen)
    ref = reference.ref_m_grouped_fp8_gemm_nt_contiguous(a, b, per_row)
    outs = []
    for grouped_layout, psum_form in ((per_row, False), (psum, True)):
        d = _poisoned(a[0].shape[0], n)
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, grouped_layout, use_psum_layout=psum_form)
        assert_matches(d, ref)
        outs.append(d)
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16)), "per-row and psum forms differ"


@pytest.mark.parametrize("groups,max_m,n,k", [(1, 64, 4096, 7168), (8, 129, 4096, 7168), (32, 48, 7168, 2048),
                                              (16, 256, 576, 7168)])
def test_masked(groups, max_m, n, k, cuda_gen):
    a = fp8_activations(groups * max_m, k, cuda_gen)
    a = (a[0].view(groups, max_m, k), a[1].view(groups, max_m, k // 128))
    b = fp8_weights(groups, n, k, cuda_gen)
    masked_m = torch.randint(0, max_m + 1, (groups,), device="cuda", generator=cuda_gen, dtype=torch.int32)
    special = [0, 1, max_m, max_m + 5]  # past max_m: clamped, never written out of bounds
    masked_m[: min(groups, 4)] = torch.tensor(special[: min(groups, 4)], dtype=torch.int32, device="cuda")
    d = _poisoned(groups, max_m, n)
    dg_moe.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m=max(1, max_m // 2))
    assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked(a, b, masked_m))


def test_masked_cuda_graph_replays_with_new_contents(cuda_gen):
    groups, max_m, n, k = 8, 96, 4096, 7168
    a_data = torch.empty(groups, max_m, k, device="cuda", dtype=torch.float8_e4m3fn)
    sfa = layout.get_mn_major_tma_aligned_tensor(torch.empty(groups, max_m, k // 128, device="cuda"))
    b = fp8_weights(groups, n, k, cuda_gen)
    masked_m = torch.zeros(groups, dtype=torch.int32, device="cuda")
    d = _poisoned(groups, max_m, n)

    def refill():
        x, s = fp8_activations(groups * max_m, k, cuda_gen)
        a_data.copy_(x.view(groups, max_m, k))
        sfa.copy_(s.view(groups, max_m, k // 128))
        masked_m.copy_(torch.randint(0, max_m + 1, (groups,), device="cuda", generator=cuda_gen, dtype=torch.int32))
        d.fill_(float("nan"))

    refill()
    dg_moe.m_grouped_fp8_gemm_nt_masked((a_data, sfa), b, d, masked_m, expected_m=48)  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dg_moe.m_grouped_fp8_gemm_nt_masked((a_data, sfa), b, d, masked_m, expected_m=48)
    for _ in range(5):
        refill()
        graph.replay()
        assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked((a_data, sfa), b, masked_m))


def test_psum_contiguous_cuda_graph_replays_with_new_counts(cuda_gen):
    groups, n, k, capacity = 8, 2112, 7168, 8 * 256
    a_data = torch.empty(capacity, k, device="cuda", dtype=torch.float8_e4m3fn)
    sfa = layout.get_mn_major_tma_aligned_tensor(torch.empty(capacity, k // 128, device="cuda"))
    psum = torch.zeros(groups, dtype=torch.int32, device="cuda")
    b = fp8_weights(groups, n, k, cuda_gen)
    d = _poisoned(capacity, n)

    def refill():
        counts = torch.randint(0, 129, (groups,), generator=torch.Generator().manual_seed(len(refill.seen)))
        refill.seen.append(1)
        x, s = fp8_activations(capacity, k, cuda_gen)
        a_data.copy_(x)
        sfa.copy_(s)
        ends, row = [], 0
        for c in counts.tolist():
            ends.append(row + c)
            row += layout.align(c, 128)
        psum.copy_(torch.tensor(ends, dtype=torch.int32))
        d.fill_(float("nan"))
    refill.seen = []

    refill()
    dg_moe.m_grouped_fp8_gemm_nt_contiguous((a_data, sfa), b, d, psum, use_psum_layout=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dg_moe.m_grouped_fp8_gemm_nt_contiguous((a_data, sfa), b, d, psum, use_psum_layout=True)
    for _ in range(5):
        refill()
        graph.replay()
        ref = reference.ref_m_grouped_fp8_gemm_nt_contiguous((a_data, sfa), b, psum, use_psum_layout=True)
        assert_matches(d, ref)


@pytest.mark.parametrize("block_m,block_n,multicast", [(128, 128, 2), (128, 192, 1), (128, 192, 2), (64, 32, 2),
                                                     (256, 128, 1), (256, 128, 2), (256, 64, 1), (128, 128, 1),
                                                     (64, 128, 1), (128, 192, "2B"), (128, 128, "2B"),
                                                     (256, 128, "2B"), (64, 64, "2B")])
def test_forced_variants_every_layout(monkeypatch, block_m, block_n, multicast, cuda_gen):
    """Variants the heuristic rarely picks (multicast pairs sharing A, or B ("2B"), 192-wide tiles
    spanning two SFB blocks, 256-row tiles in two waves, a 64-wide last column block run at half width
    on 128-wide tiles without multicast) on every layout they serve, with N giving an odd n-block count
    (a padding tile in each A-sharing pair) and odd m-block counts (a copy tile in a B-sharing pair,
    pairs straddling two groups)."""
    import dataclasses

    from dg_moe.kernels.sm90_fp8_gemm import launcher as kernels
    from dg_moe.kernels.sm90_fp8_gemm.heuristic import max_stages

    chosen = kernels.config_for

    def forced(*args):
        return dataclasses.replace(chosen(*args), block_m=block_m, block_n=block_n, multicast=int(str(multicast)[0]),
                                   multicast_b=str(multicast).endswith("B"), num_stages=max_stages(block_m, block_n, k))

    monkeypatch.setattr(kernels, "config_for", forced)
    monkeypatch.setattr(kernels, "_entries", {})
    n, k = 7232, 2176  # partial, odd n-block counts for 192 and 128; an odd K-block count (17)

    b1 = fp8_weights(1, n, k, cuda_gen)
    b1 = (b1[0][0], b1[1][0])
    for m in (200, 600):  # one partial tile; several tiles, the last partial
        a = fp8_activations(m, k, cuda_gen)
        d = _poisoned(m, n)
        dg_moe.fp8_gemm_nt(a, b1, d)
        assert_matches(d, reference.ref_fp8_gemm_nt(a, b1))

    b = fp8_weights(5, n, k, cuda_gen)
    if block_m <= 128:  # contiguous groups start on 128-row boundaries: taller tiles are never built for them
        counts = _random_counts(5, 5 * 150, cuda_gen)
        a, per_row, psum = _contiguous_inputs(counts, k, cuda_gen)
        ref = reference.ref_m_grouped_fp8_gemm_nt_contiguous(a, b, per_row)
        for grouped_layout, psum_form in ((per_row, False), (psum, True)):
            d = _poisoned(a[0].shape[0], n)
            dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, grouped_layout, use_psum_layout=psum_form)
            assert_matches(d, ref)
        # Three trailing padding blocks: a pair made only of padding, and one pairing padding with a real
        # block (or the odd last block) for B-sharing clusters; padding rows stay unwritten.
        a_pad = fp8_activations(a[0].shape[0] + 3 * 128, k, cuda_gen)
        per_row_pad = torch.cat([per_row, torch.full((3 * 128,), -1, dtype=torch.int32, device="cuda")])
        d = _poisoned(a_pad[0].shape[0], n)
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(a_pad, b, d, per_row_pad)
        assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_contiguous(a_pad, b, per_row_pad))

    groups, max_m = 4, 300 if block_m == 256 else 129
    x = fp8_activations(groups * max_m, k, cuda_gen)
    x = (x[0].view(groups, max_m, k), x[1].view(groups, max_m, k // 128))
    masked_m = torch.tensor([0, 1, max_m, 77 + max_m // 2], dtype=torch.int32, device="cuda")
    d = _poisoned(groups, max_m, n)
    b_masked = (b[0][:groups], b[1][:groups])
    dg_moe.m_grouped_fp8_gemm_nt_masked(x, b_masked, d, masked_m, expected_m=64)
    assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked(x, b_masked, masked_m))


def test_repeated_calls_run_their_launch_plan(cuda_gen, monkeypatch):
    """From the second call with one signature (scales already in the kernel's layout), each of the three
    ops launches through its plan: new data, new pointers, same shapes, every result right. After
    set_num_sms the plans decline and the full path runs with the new SM count."""
    from dg_moe import device as dg_device
    from dg_moe.ops import _memo

    monkeypatch.setattr(dg_device, "_num_sms", dg_device.num_sms_setting())  # restored after the test
    k, n, groups, max_m = 2048, 576, 3, 160
    b = fp8_weights(groups, n, k, cuda_gen)
    counts = [100, 0, 140]
    for round_ in range(4):
        if round_ == 3:
            dg_moe.set_num_sms(66)
        x = fp8_activations(256, k, cuda_gen)
        a = (x[0], layout.get_mn_major_tma_aligned_tensor(x[1]))
        d = _poisoned(256, n)
        dg_moe.fp8_gemm_nt(a, (b[0][0], b[1][0]), d)
        assert_matches(d, reference.ref_fp8_gemm_nt(a, (b[0][0], b[1][0])))

        ac, per_row, psum = _contiguous_inputs(counts, k, cuda_gen)
        ac = (ac[0], layout.get_mn_major_tma_aligned_tensor(ac[1]))
        d = _poisoned(ac[0].shape[0], n)
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(ac, b, d, psum, use_psum_layout=True)
        assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_contiguous(ac, b, per_row))

        xm = fp8_activations(groups * max_m, k, cuda_gen)
        am = (xm[0].view(groups, max_m, k),
              layout.get_mn_major_tma_aligned_tensor(xm[1].view(groups, max_m, k // 128)))
        masked_m = torch.tensor(counts, dtype=torch.int32, device="cuda")
        d = _poisoned(groups, max_m, n)
        dg_moe.m_grouped_fp8_gemm_nt_masked(am, b, d, masked_m, expected_m=128)
        assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked(am, b, masked_m))
        if round_ == 0:
            planned = [s for s in _memo._plans if s[0] in
                       ("fp8_gemm_nt", "m_grouped_fp8_gemm_nt_contiguous", "m_grouped_fp8_gemm_nt_masked")]
            assert len(planned) >= 3
