"""CI (no GPU): every SM90 FP8 GEMM variant the heuristic picks for DeepSeek-V3 shapes compiles for sm_90a."""

from __future__ import annotations

import os

import pytest

from dg_moe.jit import compile_many
from dg_moe.kernels.sm90_fp8_gemm.variants import FAMILY, deepseek_v3_variants

pytestmark = pytest.mark.nvcc


def test_every_deepseek_v3_variant_compiles_for_sm90a(module_cache_dir):
    variants = deepseek_v3_variants()
    assert len(variants) > 10
    libraries = [str(p) for p in compile_many(FAMILY, variants, jobs=max(2, os.cpu_count() or 2))]
    assert len(set(libraries)) == len(variants)
    for path in libraries:
        assert os.path.getsize(path) > 0 and path.startswith(str(module_cache_dir))
