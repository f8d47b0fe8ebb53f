"""SM90 BF16 GEMM with MN-major operands against the float64 reference: bf16_gemm_nn / tn / tt,
m_grouped_bf16_gemm_nn_contiguous, nt calls on transposed views, forced tilings (64- to 256-wide chunks of
an MN-major tile, pairs sharing an MN-major A or B), accumulation into c and the NVRTC host entry's 3-D
map. Outputs are poisoned with NaN before every run: each valid element must be overwritten, each padding
row must keep its NaN. Stored operands are views into buffers whose rows are padded to 16 bytes, so odd
M, N and K run too (rows 16-byte apart are TMA's rule; the extents are free)."""

from __future__ import annotations

import pytest
import torch

import dg_moe
from dg_moe import reference
from dg_moe.errors import KernelNotAvailableError

from .gpu_inputs import BF16_SIMILARITY_LIMIT, assert_matches
from .test_sm90_bf16_gemm_gpu import (
    _assert_nvrtc_gives,
    _bitwise,
    _contiguous_inputs,
    _poisoned,
    _random_counts,
    force_tiles,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _sm90(sm90: None) -> None:
    """Every test here needs an SM90 GPU (conftest's `sm90`)."""


def _stored(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """A bfloat16 [.., rows, cols] view of a buffer whose rows are padded to a multiple of 8 elements,
    back to back across a leading dim (as the kernel needs), random normal."""
    padded = -(-shape[-1] // 8) * 8
    buf = torch.randn(*shape[:-1], padded, device="cuda", generator=generator).to(torch.bfloat16)
    return buf[..., :shape[-1]] if shape[-1] < padded else buf


def _operands(op: str, m: int, n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b as ``op`` takes them: a [M, K] (n*) or [K, M] (t*), b [K, N] (*n) or [N, K] (*t)."""
    a = _stored(m, k, generator=gen) if op[0] == "n" else _stored(k, m, generator=gen)
    b = _stored(k, n, generator=gen) if op[1] == "n" else _stored(n, k, generator=gen)
    return a, b


OPS = ["nn", "tn", "tt"]
# K = 40 and 200: fewer than one and a partial 64-wide K block; 7232: an odd n-block count; M = 65 and
# 1000: partial m-blocks and, for [K, M] storage, rows padded past M.
MNK = [(1, 2112, 7168), (65, 576, 200), (1000, 7232, 2176), (4097, 4096, 7168), (129, 256, 40)]


@pytest.mark.parametrize("m,n,k", MNK)
@pytest.mark.parametrize("op", OPS)
def test_dense_transposed_ops(op, m, n, k, cuda_gen):
    a, b = _operands(op, m, n, k, cuda_gen)
    fn, ref = getattr(dg_moe, f"bf16_gemm_{op}"), getattr(reference, f"ref_bf16_gemm_{op}")
    d = _poisoned(m, n)
    fn(a, b, d)
    assert_matches(d, ref(a, b), BF16_SIMILARITY_LIMIT)
    again = _poisoned(m, n)
    fn(a, b, again)
    assert _bitwise(d, again), "second run differs bitwise"


def test_both_mn_major_k_off_the_16_byte_grid(cuda_gen):
    """bf16_gemm_tn reads K as rows of both operands, so K need not be a multiple of 8."""
    m, n, k = 96, 256, 100
    a, b = _operands("tn", m, n, k, cuda_gen)
    d = _poisoned(m, n, dtype=torch.float32)
    dg_moe.bf16_gemm_tn(a, b, d)
    assert_matches(d, reference.ref_bf16_gemm_tn(a, b), BF16_SIMILARITY_LIMIT)


@pytest.mark.parametrize("op", ["nt", *OPS])
def test_nt_on_transposed_views_is_the_same_kernel(op, cuda_gen):
    """bf16_gemm_nt on a.T / b.T views of the stored matrices gives the transposed op's bits."""
    m, n, k = 300, 576, 2048
    a, b = _operands(op, m, n, k, cuda_gen)
    a_nt = a if op[0] == "n" else a.T
    b_nt = b if op[1] == "t" else b.T
    d, d_nt = _poisoned(m, n), _poisoned(m, n)
    getattr(dg_moe, f"bf16_gemm_{op}")(a, b, d)
    dg_moe.bf16_gemm_nt(a_nt, b_nt, d_nt)
    assert_matches(d_nt, reference.ref_bf16_gemm_nt(a_nt, b_nt), BF16_SIMILARITY_LIMIT)
    assert _bitwise(d, d_nt)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("op", OPS)
def test_transposed_ops_accumulate_c(op, dtype, cuda_gen):
    m, n, k = 1000, 2112, 2176
    a, b = _operands(op, m, n, k, cuda_gen)
    c = torch.randn(m, n, device="cuda", generator=cuda_gen).to(dtype)
    d = _poisoned(m, n, dtype=dtype)
    getattr(dg_moe, f"bf16_gemm_{op}")(a, b, d, c=c)
    assert_matches(d, getattr(reference, f"ref_bf16_gemm_{op}")(a, b, c), BF16_SIMILARITY_LIMIT)


def _run_grouped_nn(a, b_kn, per_row, psum, dtype: torch.dtype = torch.bfloat16) -> None:
    """m_grouped_bf16_gemm_nn_contiguous in both layout forms against the reference, bitwise equal to each
    other and to the nt op on the K-major copy of b."""
    ref = reference.ref_m_grouped_bf16_gemm_nn_contiguous(a, b_kn, per_row)
    outs = []
    for grouped_layout, psum_form in ((per_row, False), (psum, True)):
        d = _poisoned(a.shape[0], b_kn.shape[2], dtype=dtype)
        dg_moe.m_grouped_bf16_gemm_nn_contiguous(a, b_kn, d, grouped_layout, use_psum_layout=psum_form)
        assert_matches(d, ref, BF16_SIMILARITY_LIMIT)
        outs.append(d)
    assert _bitwise(outs[0], outs[1]), "per-row and psum forms differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("groups,n,k,rows", [(4, 4096, 7168, 2048), (32, 576, 7168, 64), (5, 7232, 2120, 300),
                                             (8, 7168, 2048, 1024)])
def test_grouped_nn_contiguous(groups, n, k, rows, dtype, cuda_gen):
    """Groups of [K, N] weights, K not always a multiple of 64 (each group's last K block clipped at its
    own K rows); empty and one-row groups; padding rows stay unwritten."""
    b = torch.randn(groups, k, n, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    a, per_row, psum = _contiguous_inputs(_random_counts(groups, groups * rows, cuda_gen), k, cuda_gen)
    _run_grouped_nn(a, b, per_row, psum, dtype)


@pytest.mark.parametrize("block_m,block_n,multicast", [(64, 64, 1), (128, 128, 2), (128, 256, "2B"), (256, 128, 2),
                                                     (128, 192, 1), (64, 256, 1), (256, 128, "2B")])
def test_forced_mn_major_tilings(monkeypatch, block_m, block_n, multicast, cuda_gen):
    """Every MN-major chunk count (1 to 4 per tile), pairs sharing an MN-major A (two chunks each) or B,
    256-row tiles (two m64 wgmmas per warpgroup, each its own A chunk) on bf16_gemm_tn (both operands
    MN-major) and the grouped nn op, with partial tiles and K off the 64-wide block grid."""
    force_tiles(monkeypatch, block_m, block_n, multicast)
    n, k = 7232, 2120
    for m in (200, 600):
        a, b = _operands("tn", m, n, k, cuda_gen)
        d = _poisoned(m, n)
        dg_moe.bf16_gemm_tn(a, b, d)
        assert_matches(d, reference.ref_bf16_gemm_tn(a, b), BF16_SIMILARITY_LIMIT)
    if block_m <= 128:
        b = torch.randn(5, k, n, device="cuda", generator=cuda_gen).to(torch.bfloat16)
        a, per_row, psum = _contiguous_inputs(_random_counts(5, 5 * 150, cuda_gen), k, cuda_gen,
                                              extra_padding_blocks=3)
        _run_grouped_nn(a, b, per_row, psum)


def test_nvrtc_backend_gives_the_nvcc_bits_of_the_majors(cuda_gen, monkeypatch, tmp_path):
    """nn, tn, tt and the grouped nn op through the NVRTC cubin and its Python host entry (the 3-D map of
    an MN-major B): bitwise the nvcc results."""
    m, n, k, groups = 129, 576, 2056, 3
    ops = {op: _operands(op, m, n, k, cuda_gen) for op in OPS}
    b = torch.randn(groups, k, n, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    ag, _, psum = _contiguous_inputs([100, 0, 140], k, cuda_gen)

    def run_all():
        outs = []
        for op, (a_op, b_op) in ops.items():
            outs.append(_poisoned(m, n))
            getattr(dg_moe, f"bf16_gemm_{op}")(a_op, b_op, outs[-1])
        outs.append(_poisoned(ag.shape[0], n))
        dg_moe.m_grouped_bf16_gemm_nn_contiguous(ag, b, outs[-1], psum, use_psum_layout=True)
        return outs

    _assert_nvrtc_gives(run_all(), run_all, monkeypatch, tmp_path)


def test_k_major_only_layouts_raise_kernel_not_available(cuda_gen):
    """A grouped GEMM's a and a masked GEMM's b are read K-major only: a transposed view of either names
    the rule instead of running."""
    a = _stored(256, 512, generator=cuda_gen).T.contiguous().T
    b = torch.randn(2, 256, 512, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    per_row = torch.zeros(256, dtype=torch.int32, device="cuda")
    with pytest.raises(KernelNotAvailableError, match=r"a stored \[K, M\].*grouped"):
        dg_moe.m_grouped_bf16_gemm_nt_contiguous(a, b, _poisoned(256, 256), per_row)
    x = torch.randn(2, 64, 512, device="cuda", generator=cuda_gen).to(torch.bfloat16)
    b_view = b.transpose(1, 2).contiguous().transpose(1, 2)
    masked_m = torch.tensor([64, 3], dtype=torch.int32, device="cuda")
    with pytest.raises(KernelNotAvailableError, match=r"b stored \[G, K, N\].*masked"):
        dg_moe.m_grouped_bf16_gemm_nt_masked(x, b_view, _poisoned(2, 64, 256), masked_m, expected_m=32)
