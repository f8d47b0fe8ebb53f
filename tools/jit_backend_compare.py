"""SM90 FP8 GEMM under the two JIT backends (nvcc, NVRTC): cold compile time, or (--run) GPU run time.

    python tools/jit_backend_compare.py [--variants 3] [--json]
    python tools/jit_backend_compare.py --run [--family dense,contiguous,masked] [--full] [--json]

Compile (nvcc kernel.so against NVRTC kernel.cubin): each variant compiles once per backend into a
fresh, empty cache directory (a cold compile, one at a time, in this process), and the wall time of
``jit.compile_only`` is printed per variant with the ratio. The variants are the first ones
``deepseek_v3_variants()`` lists.

--run (needs an SM90 GPU): for `dg-moe bench gemm`'s cases (those at N, K = 4096, 7168 unless --full),
the heuristic's variant of each call form is bound under each backend (the nvcc host entry, and the
NVRTC cubin's Python launcher) on the same inputs. Each output is poisoned with NaN, run once, and
the two compared bit for bit on the valid rows; then both are timed in one interleaved measurement
(dg_moe.bench.timing.gpu_times_us: CUDA graphs of calls each after an L2 flush, median of CUDA-event
times). The issue's goal: NVRTC's kernels within 2 % of nvcc's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

from dg_moe import jit
from dg_moe.kernels.sm90_fp8_gemm.variants import FAMILY, deepseek_v3_variants

BACKENDS = ("nvcc", "nvrtc")


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``DG_MOE_<NAME>`` variables set for the block, then restored."""
    names = [f"DG_MOE_{name.upper()}" for name in values]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(zip(names, values.values(), strict=True))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cold_compile_seconds(backend: str, variant: dict) -> float:
    """Wall seconds of one compile_only of ``variant`` with ``backend`` into an empty cache."""
    with tempfile.TemporaryDirectory(prefix=f"dg_moe_{backend}_") as cache:
        with environment(cache_dir=cache, jit_backend=backend):
            try:
                jit.runtime.check_toolchain()  # discovery (nvcc probe, libnvrtc load) is not the compile
                before = jit.stats()["compiles"]
                start = time.perf_counter()
                jit.compile_only(FAMILY, variant)
                seconds = time.perf_counter() - start
                assert jit.stats()["compiles"] == before + 1, "not a cold compile"
            finally:
                jit.reset()
    return seconds


def describe(variant: dict) -> str:
    kind = str(variant["GEMM_TYPE"]).rsplit("::", 1)[-1]
    return (
        f"{kind} N={variant['SHAPE_N']} K={variant['SHAPE_K']} {variant['BLOCK_M']}x{variant['BLOCK_N']} "
        f"stages={variant['NUM_STAGES']} mc={variant['MULTICAST']}{'B' if variant.get('MULTICAST_B') else ''}"
    )


def compile_rows(count: int, quiet: bool) -> list[dict]:
    """Cold compile of ``count`` variants spread over the DeepSeek-V3 list (dense first, grouped later)."""
    variants = deepseek_v3_variants()
    step = max(1, len(variants) // max(1, count))
    rows = []
    for variant in variants[::step][:count]:
        nvcc = cold_compile_seconds("nvcc", variant)
        nvrtc = cold_compile_seconds("nvrtc", variant)
        rows.append({"variant": describe(variant), "nvcc_s": nvcc, "nvrtc_s": nvrtc, "speedup": nvcc / nvrtc})
        if not quiet:
            print(
                f"{rows[-1]['variant']:<60} nvcc {nvcc:6.2f} s  nvrtc {nvrtc:6.2f} s  {nvcc / nvrtc:5.1f}x", flush=True
            )
    return rows


def _launchers(case, inputs, out_like, sms: int) -> tuple[str, list[Callable[[], None]], list]:
    """(variant description, one no-argument launch per backend, their outputs) for one call form:
    ``inputs`` a bench KernelInputs, ``out_like`` the output tensor the bench's call writes."""
    import torch

    from dg_moe.kernels.sm90_fp8_gemm import GemmType, config_for, template_args
    from dg_moe.kernels.sm90_fp8_gemm.launcher import bind, bound_launch, kernel_operands

    gemm_type = inputs.gemm_type
    groups = 1 if gemm_type == GemmType.NORMAL else inputs.b[0].shape[0]
    config = config_for(gemm_type, inputs.rows_hint, case.n, case.k, groups, sms)
    a, b = kernel_operands(gemm_type, inputs.a, inputs.b)
    fns, outs = [], []
    for backend in BACKENDS:
        with environment(jit_backend=backend):
            entry = bind(gemm_type, config, case.n, case.k)
        out = torch.empty_like(out_like)
        fns.append(bound_launch(entry, gemm_type, a, b, out, inputs.layout, sms))
        outs.append(out)
    return describe(template_args(gemm_type, config, case.n, case.k)), fns, outs


def _us(value: float | str) -> str:
    return f"{value:8.1f} us" if isinstance(value, float) else str(value)


def run_rows(families: list[str], full: bool, quiet: bool) -> list[dict]:
    """Run time of both backends' kernels on bench gemm's cases (see the module's docstring)."""
    import torch

    from dg_moe import device as dg_device
    from dg_moe.bench.gemm_cases import family_cases
    from dg_moe.bench.gemm_problems import build_problem
    from dg_moe.bench.timing import gpu_times_us

    sms = dg_device.num_sms_for(torch.device("cuda"))
    rows = []
    for case in (c for family in families for c in family_cases(family, quick=not full)):
        problem = build_problem(case, None)
        for label, inputs in problem.inputs.items():
            variant, fns, outs = _launchers(case, inputs, problem.calls[label].out, sms)
            valid = []
            for fn, out in zip(fns, outs, strict=True):
                out.fill_(float("nan"))
                fn()
                torch.cuda.synchronize()
                valid.append(problem.valid(out).view(torch.int16))
            nvcc_us, nvrtc_us = gpu_times_us(fns)
            ratio = nvrtc_us / nvcc_us if isinstance(nvcc_us, float) and isinstance(nvrtc_us, float) else None
            rows.append(
                {
                    "case": case.label,
                    "form": label,
                    "variant": variant,
                    "nvcc_us": nvcc_us,
                    "nvrtc_us": nvrtc_us,
                    "nvrtc_over_nvcc": ratio,
                    "bitwise_equal": torch.equal(*valid),
                }
            )
            if not quiet:
                shown = f"{ratio:6.3f}" if ratio is not None else "   n/a"
                print(
                    f"{case.label:<36} {label:<12} {variant:<44} nvcc {_us(nvcc_us)}  nvrtc {_us(nvrtc_us)}  "
                    f"{shown}  {'bitwise equal' if rows[-1]['bitwise_equal'] else 'DIFFERS'}",
                    flush=True,
                )
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=3, help="how many DeepSeek-V3 variants (default 3)")
    parser.add_argument("--run", action="store_true", help="time both backends' kernels on the GPU instead")
    parser.add_argument("--family", default="dense,contiguous,masked", help="--run: bench gemm families")
    parser.add_argument("--full", action="store_true", help="--run: every case, not only N, K = 4096, 7168")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    opts = parser.parse_args(argv)
    if opts.run:
        rows = run_rows([f for f in opts.family.split(",") if f], opts.full, opts.json)
        ratios = [r["nvrtc_over_nvcc"] for r in rows if r["nvrtc_over_nvcc"] is not None]
        geomean = statistics.geometric_mean(ratios) if ratios else None
        if opts.json:
            print(json.dumps({"rows": rows, "geomean_nvrtc_over_nvcc": geomean}))
        elif ratios:
            print(
                f"NVRTC over nvcc run time: geomean {geomean:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; "
                f"{sum(not r['bitwise_equal'] for r in rows)} of {len(rows)} outputs differ"
            )
        return
    rows = compile_rows(opts.variants, opts.json)
    geomean = statistics.geometric_mean(r["speedup"] for r in rows)
    if opts.json:
        print(json.dumps({"rows": rows, "geomean_speedup": geomean, "cpus": os.cpu_count()}))
    else:
        print(f"geomean speed-up of NVRTC over nvcc (cold, {os.cpu_count()} CPUs): {geomean:.1f}x")


if __name__ == "__main__":
    main()
