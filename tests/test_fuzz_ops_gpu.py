"""Random sweep of valid shapes on the SM90 FP8 GEMM ops against the float64 reference (``-m gpu``).

The GPU counterpart of tests/test_fuzz_ops.py. Each case draws its shapes and data from the test's seed
(``conftest.seed``: the CRC-32 of the node id, printed here and in a failure's report), so a run is
repeatable. N and K come from small pools because each (N, K) is a compiled kernel variant (the JIT
caches them on disk); M, the group counts, the layouts and the scale formats are free. Outputs are
poisoned with NaN, so the comparison also sees every element the kernel must write and every row it
must not (contiguous padding rows, masked rows past ``masked_m``).
"""

from __future__ import annotations

import pytest
import torch

import dg_moe
from dg_moe import layout, reference

from .gpu_inputs import assert_matches, fp8_activations, fp8_weights
from .test_sm90_fp8_gemm_gpu import _contiguous_inputs, _poisoned

pytestmark = pytest.mark.gpu

CASES = 8  # per op: a bounded sweep
# N multiples of 8 (the kernel's 16-byte D rows): one 8-wide column, partial and whole 128/192-wide
# blocks; K: one block, an odd block count, DeepSeek-V3's widths.
N_POOL = [8, 136, 576, 2112, 7168]
K_POOL = [128, 640, 2048, 7168]


@pytest.fixture(scope="module", autouse=True)
def _sm90(sm90: None) -> None:
    """Every test here needs an SM90 GPU (conftest's `sm90`)."""


class Draw:
    """Shape draws from the test's seed (a CPU generator, separate from the CUDA one of the data)."""

    def __init__(self, seed: int) -> None:
        print(f"fuzz seed {seed}")  # shown with -s, and in the report of a failure (conftest)
        self.gen = torch.Generator().manual_seed(seed)

    def int(self, low: int, high: int) -> int:
        """Uniform in [low, high]."""
        return int(torch.randint(low, high + 1, (), generator=self.gen))

    def log_int(self, low: int, high: int) -> int:
        """Log-uniform in [low, high]: small sizes as often as large ones."""
        lo, hi = torch.log(torch.tensor(float(low))), torch.log(torch.tensor(float(high + 1)))
        return min(high, int(torch.exp(lo + (hi - lo) * torch.rand((), generator=self.gen))))

    def pick(self, options: list):
        return options[self.int(0, len(options) - 1)]


def _sfa_format(x: torch.Tensor, sfa: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, sfa)`` with sfa as the kernel reads it (MN-major, TMA-aligned) or as the caller gives it
    (row-major: converted per call)."""
    return (x, layout.get_mn_major_tma_aligned_tensor(sfa) if fmt == "mn" else sfa)


@pytest.mark.parametrize("case", range(CASES))
def test_dense_sweep(case: int, seed: int, cuda_gen: torch.Generator) -> None:
    draw = Draw(seed)
    m, n, k = draw.log_int(1, 5000), draw.pick(N_POOL), draw.pick(K_POOL)
    fmt = draw.pick(["row", "mn", "packed"])
    print(f"M={m} N={n} K={k} sfa={fmt}")
    b = fp8_weights(1, n, k, cuda_gen)
    b = (b[0][0], b[1][0])
    if fmt == "packed":
        x = torch.randn(m, k, device="cuda", generator=cuda_gen).to(torch.bfloat16)
        a_ref = layout.per_token_cast_to_fp8(x, use_ue8m0=True)
        a = layout.per_token_cast_to_fp8(x, use_ue8m0=True, use_packed_ue8m0=True)
    else:
        a_ref = fp8_activations(m, k, cuda_gen)
        a = _sfa_format(*a_ref, fmt)
    d = _poisoned(m, n)
    dg_moe.fp8_gemm_nt(a, b, d)
    assert_matches(d, reference.ref_fp8_gemm_nt(a_ref, b))


@pytest.mark.parametrize("case", range(CASES))
def test_contiguous_sweep(case: int, seed: int, cuda_gen: torch.Generator) -> None:
    draw = Draw(seed)
    groups, n, k = draw.log_int(1, 64), draw.pick(N_POOL), draw.pick(K_POOL)
    # Group sizes from empty to several tiles, a third of them empty; trailing padding blocks.
    counts = [0 if draw.int(0, 2) == 0 else draw.log_int(1, 600) for _ in range(groups)]
    tail = 128 * draw.int(0, 3)
    psum, fmt = bool(draw.int(0, 1)), draw.pick(["row", "mn"])
    print(f"counts={counts} tail={tail} N={n} K={k} psum={psum} sfa={fmt}")
    a, per_row, ends = _contiguous_inputs(counts, k, cuda_gen)
    if tail:
        a = fp8_activations(a[0].shape[0] + tail, k, cuda_gen)
        per_row = torch.cat([per_row, torch.full((tail,), -1, dtype=torch.int32, device="cuda")])
    a = _sfa_format(*a, fmt)
    b = fp8_weights(groups, n, k, cuda_gen)
    d = _poisoned(a[0].shape[0], n)
    dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, ends if psum else per_row, use_psum_layout=psum)
    assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_contiguous(a, b, per_row))


@pytest.mark.parametrize("case", range(CASES))
def test_masked_sweep(case: int, seed: int, cuda_gen: torch.Generator) -> None:
    draw = Draw(seed)
    groups, max_m, n, k = draw.log_int(1, 32), draw.log_int(1, 400), draw.pick(N_POOL), draw.pick(K_POOL)
    # Counts from negative (none) to past max_m (clamped to it).
    counts = [draw.int(-2, max_m + 5) for _ in range(groups)]
    expected_m, fmt = draw.log_int(1, 512), draw.pick(["row", "mn"])
    print(f"counts={counts} max_m={max_m} N={n} K={k} expected_m={expected_m} sfa={fmt}")
    x, sfa = fp8_activations(groups * max_m, k, cuda_gen)
    a = _sfa_format(x.view(groups, max_m, k), sfa.view(groups, max_m, k // 128), fmt)
    b = fp8_weights(groups, n, k, cuda_gen)
    masked_m = torch.tensor(counts, dtype=torch.int32, device="cuda")
    d = _poisoned(groups, max_m, n)
    dg_moe.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m=expected_m)
    assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked(a, b, masked_m))


@pytest.mark.parametrize("n", [1, 130, 2116])
def test_n_not_multiple_of_8_is_rejected_before_compiling(n: int, cuda_gen: torch.Generator) -> None:
    """The CPU reference takes any N; the kernel only multiples of 8, which the op says up front
    (before any JIT compilation), naming the fix; d stays unwritten."""
    k = 128
    a = fp8_activations(4, k, cuda_gen)
    b = fp8_weights(2, n, k, cuda_gen)
    d = _poisoned(4, n)
    with pytest.raises(ValueError, match=rf"fp8_gemm_nt: N = {n} is not a multiple of 8.*pad b and d"):
        dg_moe.fp8_gemm_nt(a, (b[0][0], b[1][0]), d)
    assert bool(d.isnan().all())
    masked_m = torch.ones(2, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=rf"m_grouped_fp8_gemm_nt_masked: N = {n} is not a multiple of 8"):
        dg_moe.m_grouped_fp8_gemm_nt_masked((a[0].view(2, 2, k), a[1].view(2, 2, 1)), b, _poisoned(2, 2, n),
                                            masked_m, expected_m=2)
