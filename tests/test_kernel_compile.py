"""CI (no GPU): every SM90 FP8 GEMM variant the heuristic picks for DeepSeek-V3 shapes compiles for sm_90a."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from dg_moe.jit import compile_only, get_toolchain
from dg_moe.ops.sm90_fp8_configs import deepseek_v3_variants
from dg_moe.ops.sm90_fp8_gemm import FAMILY


def _compile(args: dict[str, int]) -> str:
    return str(compile_only(FAMILY, args))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dg_moe_cache")
    old = os.environ.get("DG_MOE_CACHE_DIR")
    os.environ["DG_MOE_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        del os.environ["DG_MOE_CACHE_DIR"]
    else:
        os.environ["DG_MOE_CACHE_DIR"] = old


def test_every_deepseek_v3_variant_compiles_for_sm90a(cache_dir):
    get_toolchain()  # a missing nvcc fails here with the install hint, not in a worker
    variants = deepseek_v3_variants()
    assert len(variants) > 10
    # One nvcc per core: the JIT serialises compiles inside one process.
    with ProcessPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        libraries = list(pool.map(_compile, variants))
    assert len(set(libraries)) == len(variants)
    for path in libraries:
        assert os.path.getsize(path) > 0 and path.startswith(str(cache_dir))
