"""The numbers the SM90 BF16 GEMM's host side derives from a variant, in Python for the NVRTC launcher.

The nvcc-built host entry (dg_moe/csrc/launch/sm90_bf16_gemm.cu) reads them from the kernel's C++
types; a cubin launch has no C++ host, so they are computed here. Every compile receives them as
template arguments (:func:`template_args`), which the launch file static_asserts against the C++
constexprs under both backends: a formula here that drifts from the kernel fails the compile. The
fields are the FP8 family's (:class:`~dg_moe.kernels.sm90_fp8_gemm.host_constants.HostConstants`): both
kernels take their grid, tensor-map boxes and D slabs from the same scheduler and epilogue shapes.
"""

from __future__ import annotations

import dataclasses

from ..sm90_fp8_gemm.heuristic import GemmConfig
from ..sm90_fp8_gemm.host_constants import HostConstants, constant_args, scheduled_constants
from .constants import BF16_D, Epilogue, GemmType
from .heuristic import smem_bytes

PARAMS_BYTES = 32
"""sizeof(Params): two pointers and four uint32 (cubin_entry.Params mirrors it)."""
D_BOX_ROWS = 64
"""Rows of one D store box (and C load box): one m64 accumulator block of a math warpgroup."""


def host_constants(gemm_type: GemmType, config: GemmConfig, n: int, k: int,
                   epilogue: Epilogue = BF16_D) -> HostConstants:
    """The host constants of the variant ``template_args(gemm_type, config, n, k, epilogue)`` compiles."""
    layout_bytes = smem_bytes(config.block_m, config.block_n, config.num_stages, epilogue)
    constants = scheduled_constants(gemm_type, config, n, k, layout_bytes)
    # The shared formula assumes 2-byte D elements; a slab row is at most one 128-byte swizzle span of
    # this epilogue's elements (DTile::kSpanBytes).
    span_bytes = min(config.block_n * epilogue.d_bytes, 128)
    return dataclasses.replace(constants, d_span_bytes=span_bytes, d_span_cols=span_bytes // epilogue.d_bytes)


def template_args(constants: HostConstants) -> dict[str, int]:
    """The template arguments that carry these constants into the compile, where the launch file
    static_asserts each."""
    return constant_args(constants, PARAMS_BYTES)
