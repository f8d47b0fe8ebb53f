"""`dg-moe bench gemm --warmup`: compile every kernel the benchmark will run, for both libraries, in
parallel processes, so that the timed process only loads them.

dg_moe: the variants its heuristic picks for the cases (known without a GPU) go to compile_many.
DeepGEMM compiles at a shape's first call, so every case is run once by a pool of spawned processes
on the GPU, sharing DeepGEMM's cache (DG_JIT_CACHE_DIR); they run dg_moe's calls too, which then
only load their kernels (and print their configurations under DG_MOE_PRINT_CONFIGS=1, as DeepGEMM
does under DG_PRINT_CONFIGS=1).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from ..jit import compile_many, get_toolchain
from ..kernels.sm90_fp8_gemm import FAMILY
from ..moe.warmup import H100_SXM_SMS
from .gemm_cases import Case
from .gemm_plan import bench_variants
from .gemm_problems import build_problem
from .peer_deepgemm import DeepGemmStatus, load_deep_gemm
from .timing import describe_error

EXIT_CALLS_FAILED = 3
"""Exit status when some first calls raised: the benchmark runs, their columns say why."""
EXIT_WORKER_DIED = 4
"""Exit status when a worker process died (a crash inside a library): the benchmark would die the same
way with DeepGEMM loaded; tools/gpu_gemm_vs_deepgemm.sh then runs it with --no-deepgemm."""


def num_sms() -> int:
    """This GPU's SM count, or an H100 SXM's without one (a CPU machine compiling ahead)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return H100_SXM_SMS


def first_calls(case: Case) -> tuple[str, float, dict[str, str]]:
    """In a worker process: build the case and run each library's calls once (compiling DeepGEMM's
    kernels); returns the case's label, the seconds taken and the calls that failed, with why."""
    start = time.perf_counter()
    status = load_deep_gemm()
    problem = build_problem(case, status.module)
    errors = {} if status.module is not None else {"deepgemm": status.reason or ""}
    for label, call in problem.calls.items():
        try:
            call.fn()
            torch.cuda.synchronize()
        except Exception as err:  # reported by the parent; the benchmark will report it again
            errors[label] = describe_error(err)
    del problem
    torch.cuda.empty_cache()
    return case.label, time.perf_counter() - start, errors


def _unique(cases: list[Case]) -> list[Case]:
    return list(dict.fromkeys(cases))


def warm_deepgemm(cases: list[Case], jobs: int) -> int:
    """Run every case once in a pool of ``jobs`` spawned GPU processes; 0, EXIT_CALLS_FAILED or EXIT_WORKER_DIED."""
    start = time.perf_counter()
    failed = 0
    workers = max(1, min(jobs, len(cases)))
    print(f"DeepGEMM: first call of {len(cases)} cases in {workers} processes", flush=True)
    # spawn: a forked child cannot use the CUDA context of a parent that has one.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(first_calls, case) for case in cases]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                label, seconds, errors = future.result()
                failed += bool(errors)
                detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "ok"
                print(f"[warmup {done}/{len(cases)}] {label}: {seconds:.1f} s, {detail}", flush=True)
        except BrokenProcessPool as err:
            print(f"warm-up: a worker process died ({err}); a crash inside a library (see the log above) "
                  "would end the benchmark the same way: run it with --no-deepgemm", flush=True)
            return EXIT_WORKER_DIED
    print(f"DeepGEMM warm-up: {time.perf_counter() - start:.1f} s, {failed} cases with failed calls", flush=True)
    return EXIT_CALLS_FAILED if failed else 0


def warm(cases: list[Case], status: DeepGemmStatus, jobs: int | None) -> int:
    """Compile dg_moe's variants, then (on a GPU, with DeepGEMM importable) run every case once."""
    get_toolchain()  # without nvcc: stop with the install hint before announcing the compiles
    jobs = jobs or os.cpu_count() or 1
    cases = _unique(cases)
    sms = num_sms()
    variants = bench_variants(cases, sms)
    start = time.perf_counter()
    print(f"dg_moe: compiling {len(variants)} kernel variants ({sms} SMs) with {jobs} processes", flush=True)
    compile_many(FAMILY, variants, jobs)
    print(f"dg_moe: {len(variants)} variants cached in {time.perf_counter() - start:.1f} s", flush=True)
    if status.module is None:
        print(f"DeepGEMM: not warmed ({status.reason})")
        return 0
    if not torch.cuda.is_available():
        print("DeepGEMM: not warmed (its kernels compile at a first call, which needs a GPU)")
        return 0
    return warm_deepgemm(cases, jobs)
