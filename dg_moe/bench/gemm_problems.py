"""The GPU inputs and calls of one `dg-moe bench gemm` case: dg_moe's, DeepGEMM's and the peer's.

Both libraries get the same tensors: FP8 A and B, float32 scales with SFA already MN-major and
TMA-aligned (dg_moe's get_mn_major_tma_aligned_tensor gives DeepGEMM's layout too, which it then
takes as it is, so neither transposes scales inside the timed call), and the same layout tensors.
Each call writes its own BF16 output. The peer (cuBLASLt blockwise FP8 for dense, BF16 torch
grouped GEMMs for the MoE layouts) gets inputs of its own, built only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
import torch.nn.functional as F

import dg_moe
from dg_moe import layout
from dg_moe.kernels.sm90_fp8_gemm import GemmType

from .gemm_cases import Case, ContiguousCase, DenseCase, MaskedCase

FP8Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Call:
    """One library's call of the case, with the output it writes (poisoned and compared by the runner)."""

    fn: Callable[[], object]
    out: torch.Tensor


@dataclass
class KernelInputs:
    """What a dg_moe call hands the SM90 kernel, for tools that launch other variants on the same inputs
    (tools/ab_variants.py): the layout type, the operands, the grouped layout tensor and the rows hint."""

    gemm_type: GemmType
    a: FP8Pair
    b: FP8Pair
    layout: torch.Tensor | None
    rows_hint: int


@dataclass
class Problem:
    """A case's calls by label (FORMS' names), the valid rows of an output, the peer's builder, and the
    kernel inputs of each dg_moe call."""

    case: Case
    calls: dict[str, Call]
    valid: Callable[[torch.Tensor], torch.Tensor]
    peer: Callable[[], Callable[[], object]]
    inputs: dict[str, KernelInputs] = field(default_factory=dict)


def fp8_dense_inputs(m: int, n: int, k: int) -> tuple[FP8Pair, FP8Pair]:
    """Random FP8 operands, recipe (1, 128, 128): a = (e4m3 [M, K], f32 row-major sfa [M, K/128]),
    b = (e4m3 [N, K], f32 sfb [ceil(N/128), K/128])."""
    a = layout.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    b = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    return a, b


def cublas_blockwise(a: FP8Pair, b: FP8Pair, k: int) -> Callable[[], torch.Tensor]:
    """A no-argument call of F.scaled_mm with cuBLASLt's blockwise recipe on the operands of
    ``fp8_dense_inputs`` (row-major sfa); scale layouts prepared here, once, as cuBLASLt reads them."""
    kb = k // 128
    l4 = layout.align(kb, 4)
    sfa = a[1].t().contiguous().t()
    sfb_padded = torch.ones(b[1].shape[0], l4, device="cuda")
    sfb_padded[:, :kb] = b[1]
    sfb_t = sfb_padded.t()
    return lambda: F.scaled_mm(a[0], b[0].T, sfa, F.ScalingType.BlockWise1x128, sfb_t,
                               F.ScalingType.BlockWise128x128, output_dtype=torch.bfloat16, use_fast_accum=False)


def _fp8_weights(groups: int, n: int, k: int) -> FP8Pair:
    """Per-expert FP8 weights (e4m3 [G, N, K], f32 sfb [G, ceil(N/128), K/128]), quantised one expert
    at a time so the BF16 source never exists for all of them at once."""
    b = torch.empty(groups, n, k, device="cuda", dtype=torch.float8_e4m3fn)
    sfb = torch.empty(groups, layout.ceil_div(n, 128), layout.ceil_div(k, 128), device="cuda", dtype=torch.float32)
    for g in range(groups):
        b[g], sfb[g] = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    return b, sfb


def _call(fn: Callable[[torch.Tensor], object], *shape: int) -> Call:
    out = torch.empty(*shape, device="cuda", dtype=torch.bfloat16)
    return Call(lambda: fn(out), out)


def _dense(case: DenseCase, dg: ModuleType | None) -> Problem:
    a_row_major, b = fp8_dense_inputs(case.m, case.n, case.k)
    a = (a_row_major[0], layout.get_mn_major_tma_aligned_tensor(a_row_major[1]))
    calls = {"dg_moe": _call(lambda d: dg_moe.fp8_gemm_nt(a, b, d), case.m, case.n)}
    if dg is not None:
        calls["deepgemm"] = _call(lambda d: dg.fp8_gemm_nt(a, b, d), case.m, case.n)
    inputs = {"dg_moe": KernelInputs(GemmType.NORMAL, a, b, None, case.m)}
    return Problem(case, calls, valid=lambda d: d, peer=lambda: cublas_blockwise(a_row_major, b, case.k),
                   inputs=inputs)


def _contiguous(case: ContiguousCase, dg: ModuleType | None) -> Problem:
    m_sum, n, k, hint = case.m_sum, case.n, case.k, case.rows_per_group
    a_data, sfa = layout.per_token_cast_to_fp8(torch.randn(m_sum, k, device="cuda", dtype=torch.bfloat16))
    a = (a_data, layout.get_mn_major_tma_aligned_tensor(sfa))
    b = _fp8_weights(case.groups, n, k)
    ends = torch.tensor(case.ends, dtype=torch.int32, device="cuda")
    m_indices = torch.tensor(case.m_indices, dtype=torch.int32, device="cuda")
    valid_rows = m_indices >= 0
    calls = {}
    # The same problem in both public forms: psum ends with the serving path's rows hint, and
    # per-row group ids with -1 on padding rows (no hint there in either library's API).
    for name, lib in (("dg_moe", dg_moe), ("deepgemm", dg)):
        if lib is None:
            continue
        calls[f"{name}_psum"] = _call(lambda d, lib=lib: lib.m_grouped_fp8_gemm_nt_contiguous(
            a, b, d, ends, use_psum_layout=True, expected_m_for_psum_layout=hint), m_sum, n)
        calls[f"{name}_rows"] = _call(lambda d, lib=lib: lib.m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices),
                                      m_sum, n)

    def peer() -> Callable[[], torch.Tensor]:
        x = torch.randn(case.valid_rows, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(case.groups, n, k, device="cuda", dtype=torch.bfloat16)
        offs = torch.tensor(case.counts, device="cuda", dtype=torch.int32).cumsum(0).int()
        return lambda: torch._grouped_mm(x, w.transpose(1, 2), offs=offs)

    inputs = {"dg_moe_psum": KernelInputs(GemmType.CONTIGUOUS_PSUM, a, b, ends, hint),
              "dg_moe_rows": KernelInputs(GemmType.CONTIGUOUS, a, b, m_indices, max(1, m_sum // case.groups))}
    return Problem(case, calls, valid=lambda d: d[valid_rows], peer=peer, inputs=inputs)


def _masked(case: MaskedCase, dg: ModuleType | None) -> Problem:
    groups, max_m, n, k, expected = case.groups, case.max_m, case.n, case.k, case.expected_m
    a_data, sfa = layout.per_token_cast_to_fp8(torch.randn(groups * max_m, k, device="cuda", dtype=torch.bfloat16))
    a = (a_data.view(groups, max_m, k), layout.get_mn_major_tma_aligned_tensor(sfa.view(groups, max_m, -1)))
    b = _fp8_weights(groups, n, k)
    masked_m = torch.tensor(case.counts, dtype=torch.int32, device="cuda")
    valid_rows = torch.arange(max_m, device="cuda")[None, :] < masked_m[:, None]
    calls = {}
    for name, lib in (("dg_moe", dg_moe), ("deepgemm", dg)):
        if lib is not None:
            calls[name] = _call(lambda d, lib=lib: lib.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected),
                                groups, max_m, n)

    def peer() -> Callable[[], torch.Tensor]:
        # BF16 bmm over every row of every slot: the masked layout's dense stand-in.
        x = torch.randn(groups, max_m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(groups, k, n, device="cuda", dtype=torch.bfloat16)
        return lambda: torch.bmm(x, w)

    inputs = {"dg_moe": KernelInputs(GemmType.MASKED, a, b, masked_m, expected)}
    return Problem(case, calls, valid=lambda d: d[valid_rows], peer=peer, inputs=inputs)


def build_problem(case: Case, dg: ModuleType | None) -> Problem:
    """Inputs and calls of ``case``; DeepGEMM's calls only when ``dg`` (the imported module) is given.
    Seeded, so every process builds the same tensors for the same case."""
    torch.manual_seed(0)
    if isinstance(case, DenseCase):
        return _dense(case, dg)
    if isinstance(case, ContiguousCase):
        return _contiguous(case, dg)
    return _masked(case, dg)
