"""CI (no GPU): SM90 BF16 GEMM variants compile for sm_90a: those the heuristic picks for a few MoE call
shapes (BF16 and FP32 D, with and without accumulating C), plus the tile paths it rarely picks (256-row
tiles, A-sharing clusters, 16-wide FP32 tiles); and, where cuobjdump is at hand, their SASS runs on HGMMA
with no local memory (spills), its epilogue on the instructions the variant calls for."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dg_moe.jit import compile_many
from dg_moe.kernels.sm90_bf16_gemm.constants import BF16_D, Epilogue, GemmType
from dg_moe.kernels.sm90_bf16_gemm.heuristic import max_stages, smem_bytes
from dg_moe.kernels.sm90_bf16_gemm.variants import FAMILY, ci_variants, template_args
from dg_moe.kernels.sm90_fp8_gemm.heuristic import GemmConfig

pytestmark = pytest.mark.nvcc


def _forced(gemm_type: GemmType, block_m: int, block_n: int, multicast: int, multicast_b: bool, n: int, k: int,
            epilogue: Epilogue = BF16_D):
    stages = max_stages(block_m, block_n, epilogue)
    config = GemmConfig(block_m, block_n, stages, multicast, smem_bytes(block_m, block_n, stages, epilogue), 0.0,
                        multicast_b)
    return template_args(gemm_type, config, n, k, epilogue)


FP32_D, BF16_C, FP32_C = Epilogue(d_float=True), Epilogue(accumulate=True), Epilogue(d_float=True, accumulate=True)
# 256-row tiles (two m64 wgmmas per warpgroup), one sharing B; 128 x 128 sharing A; K not a multiple of 64.
# With the new epilogues: C on 256-row tiles (BF16, and FP32 on two stages), in A- and B-sharing clusters;
# FP32 D of 16 columns (a 64-byte slab) and on 256-row and A-sharing grouped tiles.
EXTRA = [
    _forced(GemmType.NORMAL, 256, 128, 1, False, 4096, 7168),
    _forced(GemmType.MASKED, 256, 128, 2, True, 4096, 7168),
    _forced(GemmType.CONTIGUOUS, 128, 128, 2, False, 7232, 2176),
    _forced(GemmType.NORMAL, 64, 64, 2, True, 576, 200),
    _forced(GemmType.NORMAL, 256, 128, 1, False, 4096, 7168, BF16_C),
    _forced(GemmType.NORMAL, 256, 128, 1, False, 4096, 7168, FP32_C),
    _forced(GemmType.NORMAL, 128, 128, 2, False, 7232, 2176, BF16_C),
    _forced(GemmType.NORMAL, 64, 64, 2, True, 576, 200, FP32_C),
    _forced(GemmType.MASKED, 64, 16, 1, False, 7168, 2048, FP32_D),
    _forced(GemmType.MASKED, 256, 128, 2, True, 4096, 7168, FP32_D),
    _forced(GemmType.CONTIGUOUS, 128, 32, 2, False, 7232, 2176, FP32_D),
]


def _cuobjdump() -> Path | None:
    """cuobjdump on PATH or in an nvidia-* wheel (nvidia-cuda-cuobjdump)."""
    found = shutil.which("cuobjdump")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("nvidia")
    for location in (spec.submodule_search_locations or []) if spec else []:
        for candidate in sorted(Path(location).glob("*/bin/cuobjdump")):
            return candidate
    return None


def test_bf16_variants_compile_for_sm90a_without_spills(module_cache_dir):
    variants = ci_variants() + EXTRA
    assert len(variants) >= 25
    assert {(v["D_TYPE"], v["ACCUMULATE"]) for v in variants} == {
        ("__nv_bfloat16", False), ("float", False), ("__nv_bfloat16", True), ("float", True)}
    libraries = [str(p) for p in compile_many(FAMILY, variants, jobs=max(2, os.cpu_count() or 2))]
    assert len(set(libraries)) == len(variants)
    for path in libraries:
        assert os.path.getsize(path) > 0 and path.startswith(str(module_cache_dir))
    cuobjdump = _cuobjdump()
    if cuobjdump is None:
        pytest.skip("the SASS checks need cuobjdump (wheel nvidia-cuda-cuobjdump)")
    # cuobjdump -sass runs nvdisasm, which the wheels install beside it.
    environ = {**os.environ, "PATH": f"{cuobjdump.parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*args: str) -> str:
        return subprocess.run([str(cuobjdump), *args], capture_output=True, text=True, check=True, env=environ).stdout

    for path, variant in zip(libraries, variants, strict=True):
        usage = run("-res-usage", path)
        kernel = re.search(r"Function \S*bf16_gemm_kernel\S*:\n\s*(.*)", usage)
        assert kernel is not None, usage
        assert "STACK:0 " in kernel.group(1) and "LOCAL:0 " in kernel.group(1), (variant, kernel.group(1))
        sass = run("-sass", path)
        assert f"HGMMA.64x{variant['BLOCK_N']}x16.F32.BF16" in sass, variant
        assert re.search(r"\b(LDL|STL)\b", sass) is None, variant
        # BF16 D goes through stmatrix, C read back with ldmatrix; FP32 D through 8-byte shared stores.
        if variant["D_TYPE"] == "float":
            assert "STSM" not in sass and "STS.64" in sass, variant
        else:
            assert "STSM.16.M88.4" in sass and ("LDSM.16.M88.4" in sass) == variant["ACCUMULATE"], variant
