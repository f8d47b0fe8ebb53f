"""CI (no GPU): weight-gradient GEMM variants compile for sm_90a, under nvcc (a few: both tile widths, the
three layouts, an odd N, BF16 operands) and NVRTC (one), with their wgmma (FP8 QGMMA, BF16 HGMMA) in the
SASS and nothing in local memory."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dg_moe import jit
from dg_moe.jit import compile_many
from dg_moe.kernels.sm90_fp8_wgrad import launcher
from dg_moe.kernels.sm90_fp8_wgrad.cubin_entry import CubinEntry
from dg_moe.kernels.sm90_fp8_wgrad.heuristic import WgradConfig, choose_config, max_stages, smem_bytes
from dg_moe.kernels.sm90_fp8_wgrad.variants import FAMILY, WgradType, template_args


def _config(block_n: int) -> WgradConfig:
    stages = max_stages(128, block_n)
    return WgradConfig(128, block_n, stages, smem_bytes(128, block_n, stages), 0.0)


# The heuristic's dense width and its K-grouped 144-wide B-sharing pair, every layout, an odd N (the
# epilogue's single-column stores), the widest forced tile (the most registers), BF16 operands (both widths)
# and a dense B-sharing pair.
VARIANTS = [
    template_args(WgradType.NORMAL, choose_config(7168, 2112, 4096, 1, 132), 2112),
    template_args(WgradType.K_GROUPED, choose_config(4096, 7168, 1024, 8, 132, k_grouped=True), 7168),
    template_args(WgradType.K_GROUPED_PSUM, _config(64), 1001),
    template_args(WgradType.NORMAL, _config(64), 4096),
    template_args(WgradType.K_GROUPED_PSUM, _config(152), 7168),
    template_args(WgradType.K_GROUPED, choose_config(4096, 7168, 4096, 8, 132, bf16=True), 7168),
    template_args(WgradType.K_GROUPED_PSUM, choose_config(100, 37, 256, 5, 132, bf16=True), 37),
    template_args(WgradType.NORMAL, dataclasses.replace(_config(128), share_b=True), 7168),
]


@pytest.mark.nvcc
def test_variants_compile_for_sm90a_without_local_memory(module_cache_dir):
    assert {v["BLOCK_N"] for v in VARIANTS} == {64, 128, 144, 152}
    assert {v["OPERANDS"].rsplit("::", 1)[1] for v in VARIANTS} == {"Fp8", "Bf16"}
    assert {v["SHARE_B"] for v in VARIANTS} == {0, 1}
    libraries = compile_many(FAMILY, VARIANTS, jobs=max(2, os.cpu_count() or 2))
    assert len(set(libraries)) == len(VARIANTS)
    cuobjdump = shutil.which("cuobjdump")
    for args, path in zip(VARIANTS, libraries, strict=True):
        assert path.stat().st_size > 0 and path.is_relative_to(module_cache_dir)
        if cuobjdump is None:
            continue
        sass = subprocess.run([cuobjdump, "-sass", str(path)], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([cuobjdump, "-res-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
        assert ("HGMMA.64x" if args["OPERANDS"].endswith("Bf16") else "QGMMA.64x") in sass, path
        assert not re.search(r"\b(LDL|STL)\b", sass), f"{path}: local-memory traffic (spills)"
        assert "STACK:0 " in usage, usage
    if cuobjdump is None:
        pytest.skip("compiled; the SASS checks need cuobjdump on PATH (nvidia-cuda-cuobjdump wheel)")


@pytest.mark.nvrtc
@pytest.mark.nvcc
def test_nvrtc_builds_the_kernel_and_the_launcher_binds_its_python_entry(nvrtc_cache: Path) -> None:
    config = choose_config(7168, 2048, 4096, 32, 132)
    entry = launcher.bind(WgradType.K_GROUPED_PSUM, config, 2048)
    assert isinstance(entry, CubinEntry) and entry.variant.config == config
    meta = json.loads((entry.kernel.path.parent / "meta.json").read_text())
    assert meta["backend"] == "nvrtc" and meta["arch"] == "sm_90a"
    assert entry.kernel.name == meta["kernels"]["kKernel"]
    assert entry.kernel.name.startswith("_ZN6dg_moe14sm90_fp8_wgrad12wgrad_kernel")
    assert jit.build(FAMILY, template_args(WgradType.K_GROUPED_PSUM, config, 2048)) is entry.kernel
