"""Cold compile time of SM90 FP8 GEMM variants: nvcc (kernel.so) against NVRTC (kernel.cubin).

    python tools/jit_backend_compare.py [--variants 3] [--json]

Each variant compiles once per backend into a fresh, empty cache directory (a cold compile, one at a
time, in this process), and the wall time of ``jit.compile_only`` is printed per variant with the
ratio. The variants are the first ones ``deepseek_v3_variants()`` lists. Run time is not compared:
a cubin cannot be launched yet (docs/jit.md, "NVRTC backend: design").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from dg_moe import jit
from dg_moe.kernels.sm90_fp8_gemm.variants import FAMILY, deepseek_v3_variants


def cold_compile_seconds(backend: str, variant: dict) -> float:
    """Wall seconds of one compile_only of ``variant`` with ``backend`` into an empty cache."""
    saved = {name: os.environ.get(name) for name in ("DG_MOE_CACHE_DIR", "DG_MOE_JIT_BACKEND")}
    with tempfile.TemporaryDirectory(prefix=f"dg_moe_{backend}_") as cache:
        os.environ["DG_MOE_CACHE_DIR"] = cache
        os.environ["DG_MOE_JIT_BACKEND"] = backend
        try:
            jit.runtime.check_toolchain()  # discovery (nvcc probe, libnvrtc load) is not the compile
            before = jit.stats()["compiles"]
            start = time.perf_counter()
            jit.compile_only(FAMILY, variant)
            seconds = time.perf_counter() - start
            assert jit.stats()["compiles"] == before + 1, "not a cold compile"
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            jit.reset()
    return seconds


def describe(variant: dict) -> str:
    kind = str(variant["GEMM_TYPE"]).rsplit("::", 1)[-1]
    return (f"{kind} N={variant['SHAPE_N']} K={variant['SHAPE_K']} {variant['BLOCK_M']}x{variant['BLOCK_N']} "
            f"stages={variant['NUM_STAGES']} mc={variant['MULTICAST']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=3, help="how many DeepSeek-V3 variants (default 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    opts = parser.parse_args(argv)
    variants = deepseek_v3_variants()
    # Spread the picks over the list: the dense ones come first, the grouped ones later.
    step = max(1, len(variants) // max(1, opts.variants))
    picks = variants[::step][: opts.variants]
    rows = []
    for variant in picks:
        nvcc = cold_compile_seconds("nvcc", variant)
        nvrtc = cold_compile_seconds("nvrtc", variant)
        rows.append({"variant": describe(variant), "nvcc_s": nvcc, "nvrtc_s": nvrtc, "speedup": nvcc / nvrtc})
        if not opts.json:
            print(f"{rows[-1]['variant']:<60} nvcc {nvcc:6.2f} s  nvrtc {nvrtc:6.2f} s  {nvcc / nvrtc:5.1f}x",
                  flush=True)
    geomean = statistics.geometric_mean(r["speedup"] for r in rows)
    if opts.json:
        print(json.dumps({"rows": rows, "geomean_speedup": geomean, "cpus": os.cpu_count()}))
    else:
        print(f"geomean speed-up of NVRTC over nvcc (cold, {os.cpu_count()} CPUs): {geomean:.1f}x")


if __name__ == "__main__":
    main()
