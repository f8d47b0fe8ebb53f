"""Run one `dg-moe bench gemm` case's calls once each between cudaProfilerStart/Stop, for Nsight Compute
(GPU only; warm-up calls stay outside the profiled range):

    ncu --profile-from-start off ... python3 tools/ncu_case.py "G=8 rows/g=4096 N=4096 K=7168" [LABEL...]

LABELs are the case's call names (dg_moe_psum, deepgemm_psum, ...; default: every call of the case).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch

from dg_moe.bench.gemm_cases import FAMILIES, family_cases
from dg_moe.bench.gemm_problems import build_problem
from dg_moe.bench.peer_deepgemm import load_deep_gemm


def main(case_label: str, *labels: str) -> None:
    cases = [c for f in FAMILIES if f != "eager" for c in family_cases(f) if c.label == case_label]
    if not cases:
        raise SystemExit(f"no bench gemm case is labelled {case_label!r}")
    problem = build_problem(cases[0], load_deep_gemm().module)
    calls = [problem.calls[label] for label in labels] if labels else list(problem.calls.values())
    profile_once([call.fn for call in calls])


def profile_once(calls: Sequence[Callable[[], None]]) -> None:
    """Each call once to warm it (compiles, first-touch), then each once more between cudaProfilerStart and
    cudaProfilerStop, the range `ncu --profile-from-start off` profiles."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main(*sys.argv[1:])
