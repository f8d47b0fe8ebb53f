"""SM90 BF16 GEMM kernels against the float64 reference: dense, contiguous (both layout forms), masked,
forced tile variants, strided operands, determinism and CUDA-graph replay; each with a BF16 and an FP32 d,
and the dense GEMM accumulating c (separate from d, and in place). Outputs are poisoned with NaN before
every run: each valid element must be overwritten, each padding row (or row past masked_m) must keep its
NaN; in place, where d holds c and cannot be poisoned, every element whose product moves it must change."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dg_moe
from dg_moe import layout, reference
from dg_moe.errors import KernelNotAvailableError

from .gpu_inputs import BF16_SIMILARITY_LIMIT, assert_matches

pytestmark = pytest.mark.gpu

# DeepSeek-V3 shapes; N = 576 and K = 200 or 40 (K not a multiple of the 64-wide K block: TMA's zero
# fill completes the last one); N = 7232 (an odd n-block count on 128- and 256-wide tiles).
NK = [(2112, 7168), (4096, 7168), (7168, 2048), (24576, 1536), (576, 200), (7232, 2176), (256, 40)]
MS = [0, 1, 64, 65, 129, 1000, 4097]


@pytest.fixture(autouse=True)
def _sm90(sm90: None) -> None:
    """Every test here needs an SM90 GPU (conftest's `sm90`)."""


def _bf16(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", generator=generator).to(torch.bfloat16)


def _poisoned(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.full(shape, float("nan"), device="cuda", dtype=dtype)


def _check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert_matches(out, ref, BF16_SIMILARITY_LIMIT)


def _bitwise(x: torch.Tensor, y: torch.Tensor) -> bool:
    bits = torch.int16 if x.dtype == torch.bfloat16 else torch.int32
    return x.dtype == y.dtype and torch.equal(x.view(bits), y.view(bits))


def _assert_nvrtc_gives(nvcc_outs, run_all, monkeypatch, tmp_path) -> None:
    """``run_all()`` compiled and launched through NVRTC (fresh cache, no bound entries) gives ``nvcc_outs``
    bit for bit."""
    from dg_moe import jit
    from dg_moe.kernels.sm90_bf16_gemm import launcher

    monkeypatch.setenv("DG_MOE_JIT_BACKEND", "nvrtc")
    monkeypatch.setenv("DG_MOE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(launcher, "_entries", {})
    jit.reset()
    try:
        for x, y in zip(nvcc_outs, run_all(), strict=True):
            assert _bitwise(x, y)
    finally:
        jit.reset()


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("m", MS)
def test_dense_nt(m, n, k, cuda_gen):
    a, b = _bf16(m, k, generator=cuda_gen), _bf16(n, k, generator=cuda_gen)
    d = _poisoned(m, n)
    dg_moe.bf16_gemm_nt(a, b, d)
    if m == 0:
        return
    _check(d, reference.ref_bf16_gemm_nt(a, b))
    again = _poisoned(m, n)
    dg_moe.bf16_gemm_nt(a, b, again)
    assert _bitwise(d, again), "second run differs bitwise"


def test_dense_row_slices_of_wider_buffers(cuda_gen):
    """A, B and D with row strides wider than their rows (views into larger buffers): the kernel reads and
    writes through the strides, and D's columns outside the view stay untouched."""
    m, n, k = 300, 576, 2048
    a_buf, b_buf = _bf16(m, k + 64, generator=cuda_gen), _bf16(n, k + 8, generator=cuda_gen)
    d_buf = _poisoned(m, n + 40)
    a, b, d = a_buf[:, 64:], b_buf[:, :k], d_buf[:, 16:16 + n]
    dg_moe.bf16_gemm_nt(a, b, d)
    _check(d, reference.ref_bf16_gemm_nt(a, b))
    assert torch.isnan(d_buf[:, :16].float()).all() and torch.isnan(d_buf[:, 16 + n:].float()).all()


def test_uncovered_variants_raise_kernel_not_available(cuda_gen):
    a, b = _bf16(64, 256, generator=cuda_gen), _bf16(128, 256, generator=cuda_gen)
    gapped = _bf16(2, 136, 256, generator=cuda_gen)[:, :128]  # groups 136 rows apart, not back to back
    with pytest.raises(KernelNotAvailableError, match="contiguous"):
        dg_moe.m_grouped_bf16_gemm_nt_contiguous(_bf16(128, 256, generator=cuda_gen), gapped, _poisoned(128, 128),
                                                 torch.zeros(128, dtype=torch.int32, device="cuda"))
    with pytest.raises(KernelNotAvailableError, match="multiple of 8"):
        dg_moe.bf16_gemm_nt(a, b[:124], _poisoned(64, 124))
    with pytest.raises(KernelNotAvailableError, match=r"d \(torch.float32\) rows of 126.*multiple of 4"):
        dg_moe.bf16_gemm_nt(a, b[:126], _poisoned(64, 126, dtype=torch.float32))
    c = _poisoned(64, 136, dtype=torch.float32)[:, 2:130]  # rows 16-byte apart, starting 8 bytes in
    with pytest.raises(KernelNotAvailableError, match="c at an address not 16-byte aligned"):
        dg_moe.bf16_gemm_nt(a, b, _poisoned(64, 128, dtype=torch.float32), c=c)


def force_tiles(monkeypatch, block_m: int, block_n: int, multicast: int | str) -> None:
    """Every BF16 GEMM launch of the test runs block_m x block_n tiles, with the most stages that fit beside
    its D tile; ``multicast`` 1, 2 (a pair sharing A) or "2B" (sharing B). Bound entries are forgotten."""
    from dg_moe.kernels.sm90_bf16_gemm import launcher
    from dg_moe.kernels.sm90_bf16_gemm.heuristic import max_stages, smem_bytes

    chosen = launcher.config_for

    def forced(*args):
        epilogue = args[6]  # config_for(type, rows, n, k, groups, sms, epilogue, majors)
        stages = max_stages(block_m, block_n, epilogue)
        return dataclasses.replace(chosen(*args), block_m=block_m, block_n=block_n, multicast=int(str(multicast)[0]),
                                   multicast_b=str(multicast).endswith("B"), num_stages=stages,
                                   smem_bytes=smem_bytes(block_m, block_n, stages, epilogue))

    monkeypatch.setattr(launcher, "config_for", forced)
    monkeypatch.setattr(launcher, "_entries", {})


def _random_counts(groups: int, total_hint: int, cuda_gen: torch.Generator) -> list[int]:
    counts = torch.randint(0, max(2, 2 * total_hint // groups), (groups,), device="cuda", generator=cuda_gen).tolist()
    counts[0] = 0  # an empty expert
    if groups > 1:
        counts[1] = 1  # an expert with one token
    return counts


def _contiguous_inputs(counts: list[int], k: int, cuda_gen: torch.Generator, extra_padding_blocks: int = 0):
    """a bf16 [M_sum, K] with each group's rows padded to 128, its per-row layout (-1 on padding) and its
    prefix-sum ends; ``extra_padding_blocks`` 128-row blocks of padding after the last group."""
    align = layout.get_mk_alignment_for_contiguous_layout()
    padded = [layout.align(c, align) for c in counts]
    m_sum = max(sum(padded), align) + extra_padding_blocks * align
    per_row = torch.full((m_sum,), -1, dtype=torch.int32, device="cuda")
    ends, row = [], 0
    for g, (c, p) in enumerate(zip(counts, padded, strict=True)):
        per_row[row:row + c] = g
        ends.append(row + c)
        row += p
    psum = torch.tensor(ends, dtype=torch.int32, device="cuda")
    return _bf16(m_sum, k, generator=cuda_gen), per_row, psum


def _run_contiguous(a, b, per_row, psum, dtype: torch.dtype = torch.bfloat16):
    ref = reference.ref_m_grouped_bf16_gemm_nt_contiguous(a, b, per_row)
    outs = []
    for grouped_layout, psum_form in ((per_row, False), (psum, True)):
        d = _poisoned(a.shape[0], b.shape[1], dtype=dtype)
        dg_moe.m_grouped_bf16_gemm_nt_contiguous(a, b, d, grouped_layout, use_psum_layout=psum_form)
        _check(d, ref)
        outs.append(d)
    assert _bitwise(outs[0], outs[1]), "per-row and psum forms differ"


@pytest.mark.parametrize("groups,n,k,rows", [
    (1, 4096, 7168, 1000), (4, 4096, 7168, 2048), (8, 7168, 2048, 512), (32, 576, 7168, 64),
    (288, 256, 512, 8), (5, 7232, 2176, 300), (8, 4096, 7168, 4096),
])
def test_contiguous(groups, n, k, rows, cuda_gen):
    counts = _random_counts(groups, rows * groups, cuda_gen)
    a, per_row, psum = _contiguous_inputs(counts, k, cuda_gen, extra_padding_blocks=1)
    b = _bf16(groups, n, k, generator=cuda_gen)
    _run_contiguous(a, b, per_row, psum)
    again = _poisoned(a.shape[0], n)
    dg_moe.m_grouped_bf16_gemm_nt_contiguous(a, b, again, psum, use_psum_layout=True,
                                             expected_m_for_psum_layout=max(1, rows))
    _check(again, reference.ref_m_grouped_bf16_gemm_nt_contiguous(a, b, per_row))


def _masked_inputs(groups: int, max_m: int, n: int, k: int, cuda_gen: torch.Generator):
    a = _bf16(groups, max_m, k, generator=cuda_gen)
    b = _bf16(groups, n, k, generator=cuda_gen)
    masked_m = torch.randint(0, max_m + 1, (groups,), device="cuda", generator=cuda_gen, dtype=torch.int32)
    special = [0, 1, max_m, max_m + 5]  # past max_m: clamped, never written out of bounds
    masked_m[: min(groups, 4)] = torch.tensor(special[: min(groups, 4)], dtype=torch.int32, device="cuda")
    return a, b, masked_m


@pytest.mark.parametrize("groups,max_m,n,k", [(1, 64, 4096, 7168), (8, 129, 4096, 7168), (32, 48, 7168, 2048),
                                              (16, 256, 576, 7168), (256, 4, 4096, 7168)])
def test_masked(groups, max_m, n, k, cuda_gen):
    a, b, masked_m = _masked_inputs(groups, max_m, n, k, cuda_gen)
    d = _poisoned(groups, max_m, n)
    dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, expected_m=max(1, max_m // 2))
    _check(d, reference.ref_m_grouped_bf16_gemm_nt_masked(a, b, masked_m))
    again = _poisoned(groups, max_m, n)
    dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, again, masked_m, expected_m=max(1, max_m // 2))
    assert _bitwise(d, again), "second run differs bitwise"


def test_masked_cuda_graph_replays_with_new_contents(cuda_gen):
    groups, max_m, n, k = 8, 96, 4096, 7168
    a = torch.empty(groups, max_m, k, device="cuda", dtype=torch.bfloat16)
    b = _bf16(groups, n, k, generator=cuda_gen)
    masked_m = torch.zeros(groups, dtype=torch.int32, device="cuda")
    d = _poisoned(groups, max_m, n)

    def refill():
        a.copy_(_bf16(groups, max_m, k, generator=cuda_gen))
        masked_m.copy_(torch.randint(0, max_m + 1, (groups,), device="cuda", generator=cuda_gen, dtype=torch.int32))
        d.fill_(float("nan"))

    refill()
    dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, expected_m=48)  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, expected_m=48)
    for _ in range(5):
        refill()
        graph.replay()
        _check(d, reference.ref_m_grouped_bf16_gemm_nt_masked(a, b, masked_m))


@pytest.mark.parametrize("block_m,block_n,multicast", [(64, 16, 1), (64, 64, "2B"), (128, 32, 1), (128, 128, 2),
                                                     (128, 256, 1), (128, 256, "2B"), (256, 128, 1),
                                                     (256, 128, 2), (256, 128, "2B"), (64, 256, 1)])
def test_forced_variants_every_layout(monkeypatch, block_m, block_n, multicast, cuda_gen):
    """Variants the heuristic rarely picks (clusters sharing A, or B ("2B"), 256-row tiles as two m64
    wgmmas per warpgroup, 16-wide tiles with a 32-byte D span) on every layout they serve, with N giving
    partial and odd n-block counts (a padding tile in each A-sharing pair), odd m-block counts (a copy tile
    in a B-sharing pair, pairs straddling two groups) and K not a multiple of 64."""
    force_tiles(monkeypatch, block_m, block_n, multicast)
    n, k = 7232, 2120  # partial, odd n-block counts for 256 and 128; 33 full K blocks and a partial one

    b1 = _bf16(n, k, generator=cuda_gen)
    for m in (200, 600):  # one partial tile; several tiles, the last partial
        a = _bf16(m, k, generator=cuda_gen)
        d = _poisoned(m, n)
        dg_moe.bf16_gemm_nt(a, b1, d)
        _check(d, reference.ref_bf16_gemm_nt(a, b1))

    b = _bf16(5, n, k, generator=cuda_gen)
    if block_m <= 128:  # contiguous groups start on 128-row boundaries: taller tiles are never built for them
        counts = _random_counts(5, 5 * 150, cuda_gen)
        # Three trailing padding blocks: a pair made only of padding, and one pairing padding with a real
        # block (or the odd last block) for B-sharing clusters; padding rows stay unwritten.
        a, per_row, psum = _contiguous_inputs(counts, k, cuda_gen, extra_padding_blocks=3)
        _run_contiguous(a, b, per_row, psum)

    groups, max_m = 4, 300 if block_m == 256 else 129
    x = _bf16(groups, max_m, k, generator=cuda_gen)
    masked_m = torch.tensor([0, 1, max_m, 77 + max_m // 2], dtype=torch.int32, device="cuda")
    d = _poisoned(groups, max_m, n)
    dg_moe.m_grouped_bf16_gemm_nt_masked(x, b[:groups], d, masked_m, expected_m=64)
    _check(d, reference.ref_m_grouped_bf16_gemm_nt_masked(x, b[:groups], masked_m))


def test_nvrtc_backend_gives_the_nvcc_bits(cuda_gen, monkeypatch, tmp_path):
    """The same variants through the NVRTC cubin and its Python host entry: bitwise the nvcc results."""
    m, n, k, groups = 129, 576, 2048, 3
    a, b = _bf16(m, k, generator=cuda_gen), _bf16(groups, n, k, generator=cuda_gen)
    ag, per_row, psum = _contiguous_inputs([100, 0, 140], k, cuda_gen)
    am, _, masked_m = _masked_inputs(groups, 96, n, k, cuda_gen)

    def run_all():
        outs = [_poisoned(m, n), _poisoned(ag.shape[0], n), _poisoned(groups, 96, n)]
        dg_moe.bf16_gemm_nt(a, b[0], outs[0])
        dg_moe.m_grouped_bf16_gemm_nt_contiguous(ag, b, outs[1], psum, use_psum_layout=True)
        dg_moe.m_grouped_bf16_gemm_nt_masked(am, b, outs[2], masked_m, expected_m=64)
        return outs

    nvcc = run_all()
    _assert_nvrtc_gives(nvcc, run_all, monkeypatch, tmp_path)


# ---- FP32 d, and accumulation into c (dense) ---------------------------------------------------------------

FP32_MS = [1, 65, 129, 1000, 4097]
FP32_NK = [(2112, 7168), (576, 200), (7232, 2176), (256, 40), (4100, 1024)]  # N = 4100: FP32 rows need 4, not 8


def _fresh(shape: tuple[int, ...], dtype: torch.dtype, cuda_gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", generator=cuda_gen).to(dtype)


@pytest.mark.parametrize("n,k", FP32_NK)
@pytest.mark.parametrize("m", FP32_MS)
def test_dense_fp32_d(m, n, k, cuda_gen):
    a, b = _bf16(m, k, generator=cuda_gen), _bf16(n, k, generator=cuda_gen)
    d = _poisoned(m, n, dtype=torch.float32)
    dg_moe.bf16_gemm_nt(a, b, d)
    _check(d, reference.ref_bf16_gemm_nt(a, b))
    again = _poisoned(m, n, dtype=torch.float32)
    dg_moe.bf16_gemm_nt(a, b, again)
    assert _bitwise(d, again), "second run differs bitwise"


def _assert_written_in_place(d: torch.Tensor, c_before: torch.Tensor, ref: torch.Tensor) -> None:
    """d held c: it cannot be poisoned, so every element whose product (ref - c, at least 0.5 in size:
    far above half a BF16 ulp of c ~ N(0, 1)) moves it must have changed."""
    moved = (ref - c_before.double()).abs() > 0.5
    stale = moved & (d == c_before)
    assert not bool(stale.any()), f"{int(stale.sum())} elements kept c's value"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("in_place", [False, True], ids=["c", "in-place"])
@pytest.mark.parametrize("n,k", [(2112, 7168), (576, 200), (7232, 2176), (256, 40)])
@pytest.mark.parametrize("m", [1, 65, 1000, 4097])
def test_dense_accumulates_c(m, n, k, in_place, dtype, cuda_gen):
    """d = c + a @ b.T with c of d's dtype: c read (and left as it was) with d poisoned, or d itself."""
    a, b = _bf16(m, k, generator=cuda_gen), _bf16(n, k, generator=cuda_gen)
    c = _fresh((m, n), dtype, cuda_gen)
    c_before = c.clone()
    ref = reference.ref_bf16_gemm_nt(a, b, c)
    if in_place:
        dg_moe.bf16_gemm_nt(a, b, c, c=c)
        _check(c, ref)
        _assert_written_in_place(c, c_before, ref)
        out = c
    else:
        d = _poisoned(m, n, dtype=dtype)
        dg_moe.bf16_gemm_nt(a, b, d, c=c)
        _check(d, ref)
        assert _bitwise(c, c_before), "c was written"
        out = d
    again = _poisoned(m, n, dtype=dtype)
    dg_moe.bf16_gemm_nt(a, b, again, c=c_before)
    assert _bitwise(out, again), "in place and out of place differ bitwise" if in_place else "second run differs"


def test_accumulate_into_row_slices_of_wider_buffers(cuda_gen):
    """FP32 c and d as views into wider buffers (row strides of 4-element multiples, not of 8): each read or
    written through its own stride, and d's columns outside the view stay untouched."""
    m, n, k = 300, 580, 2048
    a, b = _bf16(m, k, generator=cuda_gen), _bf16(n, k, generator=cuda_gen)
    c_buf = _fresh((m, n + 12), torch.float32, cuda_gen)
    d_buf = _poisoned(m, n + 20, dtype=torch.float32)
    c, d = c_buf[:, 12:], d_buf[:, 4:4 + n]
    dg_moe.bf16_gemm_nt(a, b, d, c=c)
    _check(d, reference.ref_bf16_gemm_nt(a, b, c))
    assert torch.isnan(d_buf[:, :4]).all() and torch.isnan(d_buf[:, 4 + n:]).all()


@pytest.mark.parametrize("groups,n,k,rows", [(4, 4096, 7168, 2048), (32, 576, 7168, 64), (5, 7232, 2176, 300),
                                             (8, 4096, 7168, 4096)])
def test_contiguous_fp32_d(groups, n, k, rows, cuda_gen):
    counts = _random_counts(groups, rows * groups, cuda_gen)
    a, per_row, psum = _contiguous_inputs(counts, k, cuda_gen, extra_padding_blocks=1)
    b = _bf16(groups, n, k, generator=cuda_gen)
    _run_contiguous(a, b, per_row, psum, torch.float32)


@pytest.mark.parametrize("groups,max_m,n,k", [(8, 129, 4096, 7168), (32, 48, 7168, 2048), (256, 4, 4096, 7168)])
def test_masked_fp32_d(groups, max_m, n, k, cuda_gen):
    a, b, masked_m = _masked_inputs(groups, max_m, n, k, cuda_gen)
    d = _poisoned(groups, max_m, n, dtype=torch.float32)
    dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, d, masked_m, expected_m=max(1, max_m // 2))
    _check(d, reference.ref_m_grouped_bf16_gemm_nt_masked(a, b, masked_m))
    again = _poisoned(groups, max_m, n, dtype=torch.float32)
    dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, again, masked_m, expected_m=max(1, max_m // 2))
    assert _bitwise(d, again), "second run differs bitwise"


@pytest.mark.parametrize("block_m,block_n,multicast", [(64, 16, 1), (64, 64, "2B"), (128, 32, 2), (128, 128, "2B"),
                                                     (128, 256, 1), (256, 128, 1), (256, 128, 2), (64, 256, 1)])
def test_forced_epilogue_variants(monkeypatch, block_m, block_n, multicast, cuda_gen):
    """The FP32 D on every layout and c accumulation (BF16 and FP32, in place) on tile shapes the heuristic
    rarely picks or never does for FP32 (128 x 256 and 256 x 128 fit two stages beside an FP32 D tile):
    a 64-byte FP32 D slab (16 columns), two m64 wgmmas per warpgroup, clusters sharing A or B."""
    force_tiles(monkeypatch, block_m, block_n, multicast)
    n, k = 7236, 2120  # partial, odd n-block counts; an FP32 row of 7236 is 16-byte aligned, a BF16 one not

    b1 = _bf16(n, k, generator=cuda_gen)
    for m in (200, 600):
        a = _bf16(m, k, generator=cuda_gen)
        d = _poisoned(m, n, dtype=torch.float32)
        dg_moe.bf16_gemm_nt(a, b1, d)
        _check(d, reference.ref_bf16_gemm_nt(a, b1))
        for dtype in (torch.bfloat16, torch.float32):
            cols = n if dtype == torch.float32 else n - 4
            c = _fresh((m, cols), dtype, cuda_gen)
            c_before = c.clone()
            ref = reference.ref_bf16_gemm_nt(a, b1[:cols], c)
            d = _poisoned(m, cols, dtype=dtype)
            dg_moe.bf16_gemm_nt(a, b1[:cols], d, c=c)
            _check(d, ref)
            dg_moe.bf16_gemm_nt(a, b1[:cols], c, c=c)
            _check(c, ref)
            _assert_written_in_place(c, c_before, ref)
            assert _bitwise(c, d), "in place and out of place differ bitwise"

    b = _bf16(5, n, k, generator=cuda_gen)
    if block_m <= 128:  # contiguous groups start on 128-row boundaries: taller tiles are never built for them
        counts = _random_counts(5, 5 * 150, cuda_gen)
        a, per_row, psum = _contiguous_inputs(counts, k, cuda_gen, extra_padding_blocks=3)
        _run_contiguous(a, b, per_row, psum, torch.float32)

    groups, max_m = 4, 300 if block_m == 256 else 129
    x = _bf16(groups, max_m, k, generator=cuda_gen)
    masked_m = torch.tensor([0, 1, max_m, 77 + max_m // 2], dtype=torch.int32, device="cuda")
    d = _poisoned(groups, max_m, n, dtype=torch.float32)
    dg_moe.m_grouped_bf16_gemm_nt_masked(x, b[:groups], d, masked_m, expected_m=64)
    _check(d, reference.ref_m_grouped_bf16_gemm_nt_masked(x, b[:groups], masked_m))


def test_nvrtc_backend_gives_the_nvcc_bits_of_the_epilogues(cuda_gen, monkeypatch, tmp_path):
    """The FP32 D and c-accumulating variants through the NVRTC cubin and its Python host entry (four
    tensor maps, C's its own or D's): bitwise the nvcc results."""
    m, n, k, groups = 129, 576, 2048, 3
    a, b = _bf16(m, k, generator=cuda_gen), _bf16(groups, n, k, generator=cuda_gen)
    c16, c32 = _fresh((m, n), torch.bfloat16, cuda_gen), _fresh((m, n), torch.float32, cuda_gen)
    ag, per_row, psum = _contiguous_inputs([100, 0, 140], k, cuda_gen)
    am, _, masked_m = _masked_inputs(groups, 96, n, k, cuda_gen)

    def run_all():
        outs = [_poisoned(m, n, dtype=torch.float32), _poisoned(m, n), _poisoned(m, n, dtype=torch.float32),
                c32.clone(), _poisoned(ag.shape[0], n, dtype=torch.float32),
                _poisoned(groups, 96, n, dtype=torch.float32)]
        dg_moe.bf16_gemm_nt(a, b[0], outs[0])
        dg_moe.bf16_gemm_nt(a, b[0], outs[1], c=c16)
        dg_moe.bf16_gemm_nt(a, b[0], outs[2], c=c32)
        dg_moe.bf16_gemm_nt(a, b[0], outs[3], c=outs[3])
        dg_moe.m_grouped_bf16_gemm_nt_contiguous(ag, b, outs[4], psum, use_psum_layout=True)
        dg_moe.m_grouped_bf16_gemm_nt_masked(am, b, outs[5], masked_m, expected_m=64)
        return outs

    nvcc = run_all()
    _check(nvcc[2], reference.ref_bf16_gemm_nt(a, b[0], c32))
    _assert_nvrtc_gives(nvcc, run_all, monkeypatch, tmp_path)
