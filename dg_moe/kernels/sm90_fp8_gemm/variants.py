"""The SM90 FP8 GEMM's compiled variants: the template arguments of one, and those a set of model shapes
can need (for `dg-moe warmup` and the CI compile check)."""

from __future__ import annotations

from collections.abc import Iterable

from .constants import GemmType
from .heuristic import GemmConfig, config_for
from .host_constants import host_constants
from .host_constants import template_args as host_template_args

FAMILY = "sm90_fp8_gemm"
"""The JIT family: kernel dg_moe/csrc/kernels/sm90_fp8_gemm.cuh, host entry dg_moe/csrc/launch/sm90_fp8_gemm.cu."""


def template_args(gemm_type: GemmType, config: GemmConfig, n: int, k: int) -> dict[str, int | str | bool]:
    """The JIT template arguments of one kernel variant: its shape and tiling, then the host constants
    the Python side computes (SMEM_BYTES, the heuristic's shared-memory formula, box rows, D span,
    threads, scheduler slots; :mod:`.host_constants`), which the launch file static_asserts against
    the kernel's C++ under both backends."""
    return {
        "SHAPE_N": n, "SHAPE_K": k, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
        "NUM_STAGES": config.num_stages, "GEMM_TYPE": gemm_type.cpp, "MULTICAST": config.multicast,
        "MULTICAST_B": config.multicast_b,
        **host_template_args(host_constants(gemm_type, config, n, k)),
    }


# (N, K) of DeepSeek-V3's dense and MoE GEMMs (docs/performance.md).
DEEPSEEK_V3_NK = ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048))
DENSE_MS = (1, 16, 64, 128, 256, 1024, 4096, 8192)
GROUPED_SHAPES = ((4, 8192), (8, 4096), (32, 256), (256, 32), (8, 64), (16, 32), (32, 16), (1, 1024), (4, 256))


class VariantSet:
    """Distinct template arguments of the variants the heuristic picks for call shapes, in first-added order."""

    def __init__(self, num_sms: int) -> None:
        self.num_sms = num_sms
        self._seen: dict[tuple[tuple[str, int | str], ...], dict[str, int | str]] = {}

    def add(self, gemm_type: GemmType, rows_hint: int, n: int, k: int, groups: int) -> None:
        """The variant one call of ``gemm_type`` with this rows hint, N, K and group count runs."""
        args = template_args(gemm_type, config_for(gemm_type, rows_hint, n, k, groups, self.num_sms), n, k)
        self._seen.setdefault(tuple(sorted(args.items())), args)

    def variants(self) -> list[dict[str, int | str]]:
        return list(self._seen.values())


def deepseek_v3_variants(num_sms: int = 132) -> list[dict[str, int | str]]:
    """Template arguments of every variant the heuristic picks for DeepSeek-V3 shapes on ``num_sms`` SMs."""
    found = VariantSet(num_sms)
    for n, k in DEEPSEEK_V3_NK:
        for m in DENSE_MS:
            found.add(GemmType.NORMAL, m, n, k, 1)
        for groups, rows in GROUPED_SHAPES:
            for gemm_type in (GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM, GemmType.MASKED):
                found.add(gemm_type, rows, n, k, groups)
    return found.variants()


def describe(variants: Iterable[dict[str, int | str]]) -> list[str]:
    """One readable line per variant."""
    return [" ".join(f"{key}={value}" for key, value in sorted(v.items())) for v in variants]
