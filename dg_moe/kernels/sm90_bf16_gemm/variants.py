"""The SM90 BF16 GEMM's compiled variants: the template arguments of one, and those a set of call shapes
can need (for `dg-moe warmup --bf16` and the CI compile check)."""

from __future__ import annotations

from ..sm90_fp8_gemm.heuristic import GemmConfig
from .constants import BF16_D, K_MAJOR, Epilogue, GemmType, Majors
from .heuristic import config_for
from .host_constants import host_constants
from .host_constants import template_args as host_template_args

FAMILY = "sm90_bf16_gemm"
"""The JIT family: kernel dg_moe/csrc/kernels/sm90_bf16_gemm.cuh, host entry dg_moe/csrc/launch/sm90_bf16_gemm.cu."""


def template_args(gemm_type: GemmType, config: GemmConfig, n: int, k: int,
                  epilogue: Epilogue = BF16_D, majors: Majors = K_MAJOR) -> dict[str, int | str | bool]:
    """The JIT template arguments of one kernel variant: its shape, tiling, epilogue (D_TYPE, the C++
    type of D's elements; ACCUMULATE, whether it adds C) and operand majors (MN_MAJOR_A, MN_MAJOR_B), then
    the host constants the Python side computes (:mod:`.host_constants`), which the launch file
    static_asserts against the kernel's C++ under both backends."""
    if epilogue.accumulate and gemm_type != GemmType.NORMAL:
        raise ValueError(f"{gemm_type.name}: only Normal GEMMs accumulate C")
    if majors.a_mn and gemm_type != GemmType.NORMAL:
        raise ValueError(f"{gemm_type.name}: only Normal GEMMs read an MN-major A")
    if majors.b_mn and gemm_type == GemmType.MASKED:
        raise ValueError("MASKED: masked GEMMs read a K-major B only")
    return {
        "SHAPE_N": n, "SHAPE_K": k, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
        "NUM_STAGES": config.num_stages, "GEMM_TYPE": gemm_type.cpp, "MULTICAST": config.multicast,
        "MULTICAST_B": config.multicast_b, "D_TYPE": epilogue.d_type, "ACCUMULATE": epilogue.accumulate,
        "MN_MAJOR_A": majors.a_mn, "MN_MAJOR_B": majors.b_mn,
        **host_template_args(host_constants(gemm_type, config, n, k, epilogue)),
    }


class VariantSet:
    """Distinct template arguments of the variants the heuristic picks for call shapes, in first-added order."""

    def __init__(self, num_sms: int) -> None:
        self.num_sms = num_sms
        self._seen: dict[tuple[tuple[str, int | str | bool], ...], dict[str, int | str | bool]] = {}

    def add(self, gemm_type: GemmType, rows_hint: int, n: int, k: int, groups: int,
            epilogue: Epilogue = BF16_D, majors: Majors = K_MAJOR) -> None:
        """The variant one call of ``gemm_type`` with this rows hint, N, K, group count, epilogue and
        operand majors runs."""
        config = config_for(gemm_type, rows_hint, n, k, groups, self.num_sms, epilogue, majors)
        args = template_args(gemm_type, config, n, k, epilogue, majors)
        self._seen.setdefault(tuple(sorted(args.items())), args)

    def variants(self) -> list[dict[str, int | str | bool]]:
        return list(self._seen.values())


# (type, rows hint, N, K, groups): one call of each kind a BF16 MoE layer makes (DeepSeek-V3's expert
# GEMMs) and a dense projection, covering the tile shapes the heuristic picks: 64-row decode tiles,
# 128 x 256, 128 x 192, 256-row dense tiles and a B-sharing prefill cluster.
CI_SHAPES = (
    (GemmType.NORMAL, 4096, 4096, 7168, 1),
    (GemmType.NORMAL, 4096, 2112, 7168, 1),
    (GemmType.NORMAL, 16, 2112, 7168, 1),
    (GemmType.CONTIGUOUS, 256, 4096, 7168, 32),
    (GemmType.CONTIGUOUS_PSUM, 1024, 7168, 2048, 8),
    (GemmType.CONTIGUOUS_PSUM, 4096, 4096, 7168, 8),
    (GemmType.MASKED, 4, 4096, 7168, 256),
    (GemmType.MASKED, 128, 7168, 2048, 16),
)


FP32_D = Epilogue(d_float=True)
# (type, rows hint, N, K, groups, epilogue): an FP32 D on every layout (its 128-row tiles run one and
# two math warpgroups) and accumulation into C, BF16 and FP32, on 64- and 128-row dense tiles.
CI_EPILOGUE_SHAPES = (
    (GemmType.NORMAL, 4096, 4096, 7168, 1, FP32_D),
    (GemmType.NORMAL, 4096, 4096, 7168, 1, Epilogue(accumulate=True)),
    (GemmType.NORMAL, 4096, 4096, 7168, 1, Epilogue(d_float=True, accumulate=True)),
    (GemmType.NORMAL, 16, 2112, 7168, 1, Epilogue(d_float=True, accumulate=True)),
    (GemmType.CONTIGUOUS, 256, 4096, 7168, 32, FP32_D),
    (GemmType.CONTIGUOUS_PSUM, 4096, 4096, 7168, 8, FP32_D),
    (GemmType.MASKED, 4, 4096, 7168, 256, FP32_D),
)


# (type, rows hint, N, K, groups, epilogue, majors): the transposed ops, bf16_gemm_nn (B MN-major), _tn
# (both), _tt (A) and m_grouped_bf16_gemm_nn_contiguous, the last on a B-sharing prefix-sum cluster.
CI_MAJOR_SHAPES = (
    (GemmType.NORMAL, 4096, 4096, 7168, 1, BF16_D, Majors(b_mn=True)),
    (GemmType.NORMAL, 4096, 4096, 7168, 1, FP32_D, Majors(a_mn=True, b_mn=True)),
    (GemmType.NORMAL, 16, 2112, 7168, 1, BF16_D, Majors(a_mn=True)),
    (GemmType.CONTIGUOUS_PSUM, 4096, 4096, 7168, 8, BF16_D, Majors(b_mn=True)),
)


def ci_variants(num_sms: int = 132) -> list[dict[str, int | str | bool]]:
    """Template arguments of the variants the heuristic picks for CI_SHAPES, CI_EPILOGUE_SHAPES and
    CI_MAJOR_SHAPES on ``num_sms`` SMs."""
    found = VariantSet(num_sms)
    for shape in CI_SHAPES + CI_EPILOGUE_SHAPES + CI_MAJOR_SHAPES:
        found.add(*shape)
    return found.variants()
