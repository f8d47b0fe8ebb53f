"""What `dg-moe bench gemm` will ask of dg_moe, known before any GPU work: the kernel variants its cases
run (to compile them ahead) and an estimate of the timing's wall time (pure, no GPU)."""

from __future__ import annotations

from collections.abc import Iterable

from ..kernels.sm90_fp8_gemm import GemmType, config_for
from ..kernels.sm90_fp8_gemm.variants import VariantSet
from .gemm_cases import Case, ContiguousCase, DenseCase
from .timing import CALLS, FLUSH_BYTES, REPLAYS

FLUSH_BYTES_PER_US = 2.5e6
"""The flush memset's rate (about 2.5 TB/s on an H100): it runs before every timed call."""
SETUP_S_PER_CASE = 1.5
"""Inputs, first calls, comparison and the graphs' captures of one case, roughly."""
PEER_SLOWDOWN = {"dense": 1.2, "contiguous": 2.0, "masked": 2.0}
"""The non-FP8-recipe peer's time against dg_moe's: BF16 peers move twice the weight bytes."""


def gemm_calls(case: Case) -> list[tuple[GemmType, int, int]]:
    """(layout, rows hint, groups) of each dg_moe call the case makes: the hints the launcher gives the
    heuristic (M; expected_m_for_psum_layout; M_sum / G for the per-row layout; expected_m)."""
    if isinstance(case, DenseCase):
        return [(GemmType.NORMAL, case.m, 1)]
    if isinstance(case, ContiguousCase):
        return [(GemmType.CONTIGUOUS_PSUM, case.rows_per_group, case.groups),
                (GemmType.CONTIGUOUS, case.per_row_hint, case.groups)]
    return [(GemmType.MASKED, case.expected_m, case.groups)]


def bench_variants(cases: Iterable[Case], num_sms: int) -> list[dict[str, int | str]]:
    """Template arguments of every dg_moe kernel variant the cases run, without duplicates."""
    found = VariantSet(num_sms)
    for case in cases:
        for gemm_type, hint, groups in gemm_calls(case):
            found.add(gemm_type, hint, case.n, case.k, groups)
    return found.variants()


def predicted_us(case: Case, num_sms: int) -> float:
    """dg_moe's cost model's kernel time for the case, summed over its calls (one per layout form)."""
    return sum(config_for(gemm_type, hint, case.n, case.k, groups, num_sms).predicted_us
               for gemm_type, hint, groups in gemm_calls(case))


def estimate_seconds(cases: Iterable[Case], num_sms: int, with_deepgemm: bool) -> float:
    """Rough wall time of timing ``cases``: every graph (flush-only, each dg_moe form, each DeepGEMM
    form, the peer) replayed REPLAYS times, CALLS flushed calls each, plus setup per case. DeepGEMM is
    priced at dg_moe's predicted time."""
    flush_us = FLUSH_BYTES / FLUSH_BYTES_PER_US
    libraries = 2 if with_deepgemm else 1
    total_s = 0.0
    for case in cases:
        forms = len(gemm_calls(case))
        ours_us = predicted_us(case, num_sms)
        kernel_us = ours_us * libraries + ours_us / forms * PEER_SLOWDOWN[case.family]
        graphs = 1 + forms * libraries + 1  # the flush-only graph, each library's forms, the peer
        total_s += REPLAYS * CALLS * (graphs * flush_us + kernel_us) / 1e6 + SETUP_S_PER_CASE
    return total_s
