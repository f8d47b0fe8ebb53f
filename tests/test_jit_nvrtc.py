"""The NVRTC backend (DG_MOE_JIT_BACKEND=nvrtc, no GPU): a GEMM variant's device code compiles to an
sm_90a cubin whose SASS has the FP8 wgmma (QGMMA), cached under a key that names the backend."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dg_moe import jit
from dg_moe.errors import CompileError
from dg_moe.kernels.sm90_fp8_gemm.variants import FAMILY, deepseek_v3_variants

pytestmark = pytest.mark.nvrtc


def _cuda_tool(name: str) -> Path | None:
    """A CUDA binary on PATH or in an nvidia-* wheel (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    spec = importlib.util.find_spec("nvidia")
    for location in (spec.submodule_search_locations or []) if spec else []:
        for candidate in sorted(Path(location).glob(f"*/bin/{name}")):
            return candidate
    return None


def test_gemm_variant_compiles_to_an_sm90a_cubin_with_qgmma(nvrtc_cache: Path) -> None:
    variant = deepseek_v3_variants()[0]
    before = jit.stats()
    cubin = jit.compile_only(FAMILY, variant)
    assert cubin.name == "kernel.cubin" and cubin.is_relative_to(nvrtc_cache)
    assert jit.stats()["compiles"] == before["compiles"] + 1
    meta = json.loads((cubin.parent / "meta.json").read_text())
    assert meta["backend"] == "nvrtc" and meta["arch"] == "sm_90a"
    mangled = meta["kernels"]["kKernel"]
    assert mangled.startswith("_ZN6dg_moe13sm90_fp8_gemm15fp8_gemm_kernel")
    # Warm: the second call finds the entry (same key, no compile).
    assert jit.compile_only(FAMILY, variant) == cubin
    assert jit.stats()["compiles"] == before["compiles"] + 1

    cuobjdump, nvdisasm = _cuda_tool("cuobjdump"), _cuda_tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        pytest.skip("cuobjdump -sass needs cuobjdump and nvdisasm (wheels nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)")
    environ = {**os.environ, "PATH": f"{nvdisasm.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    sass = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True, check=True,
                          env=environ).stdout
    assert "QGMMA" in sass
    assert mangled in sass and "sm_90a" in sass


@pytest.mark.nvcc
def test_key_names_the_backend(nvrtc_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    variant = deepseek_v3_variants()[0]
    rtc_key = jit.cache_key(FAMILY, variant)
    monkeypatch.setenv("DG_MOE_JIT_BACKEND", "nvcc")
    assert jit.cache_key(FAMILY, variant) != rtc_key


def test_nvrtc_errors_carry_the_log(nvrtc_cache: Path, tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "launch").mkdir(parents=True)
    (root / "launch" / "broken.cu").write_text("constexpr int kKernel = not_declared;\n")
    with pytest.raises(CompileError, match="(?s)NVRTC failed.*not_declared"):
        jit.compile_only("broken", {}, source_root=root)


def test_build_returns_the_cubin_kernel_and_bind_its_entry(nvrtc_cache: Path) -> None:
    """Under nvrtc, build loads nothing into the driver yet (no GPU needed): it names the cubin and the
    mangled kernel, and the GEMM launcher wraps it in its Python host entry."""
    from dg_moe.jit import CubinKernel
    from dg_moe.kernels.sm90_fp8_gemm import launcher
    from dg_moe.kernels.sm90_fp8_gemm.constants import GemmType
    from dg_moe.kernels.sm90_fp8_gemm.cubin_entry import CubinEntry
    from dg_moe.kernels.sm90_fp8_gemm.heuristic import config_for

    config = config_for(GemmType.NORMAL, 64, 2112, 7168, 1, 132)
    entry = launcher.bind(GemmType.NORMAL, config, 2112, 7168)
    assert isinstance(entry, CubinEntry)
    kernel = jit.build(FAMILY, launcher.template_args(GemmType.NORMAL, config, 2112, 7168))
    assert isinstance(kernel, CubinKernel) and kernel is entry.kernel
    meta = json.loads((kernel.path.parent / "meta.json").read_text())
    assert kernel.path.name == "kernel.cubin" and kernel.name == meta["kernels"]["kKernel"]
    assert entry.constants.block_m == config.block_m
