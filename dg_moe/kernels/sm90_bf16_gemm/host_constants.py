"""The numbers the SM90 BF16 GEMM's host side derives from a variant, in Python for the NVRTC launcher.

The nvcc-built host entry (dg_moe/csrc/launch/sm90_bf16_gemm.cu) reads them from the kernel's C++
types; a cubin launch has no C++ host, so they are computed here. Every compile receives them as
template arguments (:func:`template_args`), which the launch file static_asserts against the C++
constexprs under both backends: a formula here that drifts from the kernel fails the compile. The
fields are the FP8 family's (:class:`~dg_moe.kernels.sm90_fp8_gemm.host_constants.HostConstants`): both
kernels take their grid, tensor-map boxes and D slabs from the same scheduler and epilogue shapes.
"""

from __future__ import annotations

from ...layout.math import ceil_div
from ..sm90_fp8_gemm.heuristic import GemmConfig
from ..sm90_fp8_gemm.host_constants import HostConstants
from .constants import GemmType
from .heuristic import smem_bytes

PRODUCER_THREADS = 128
"""kNumProducerThreads: the TMA producer warpgroup beside the math warpgroups."""
PARAMS_BYTES = 32
"""sizeof(Params): two pointers and four uint32 (cubin_entry.Params mirrors it)."""
D_BOX_ROWS = 64
"""Rows of one D store box: one m64 accumulator block of a math warpgroup."""


def host_constants(gemm_type: GemmType, config: GemmConfig, n: int, k: int) -> HostConstants:
    """The host constants of the variant ``template_args(gemm_type, config, n, k)`` compiles."""
    block_m, block_n, multicast, multicast_b = config.block_m, config.block_n, config.multicast, config.multicast_b
    span_bytes = min(block_n * 2, 128)
    pair_n = 2 if multicast == 2 and not multicast_b else 1
    n_blocks = ceil_div(ceil_div(n, block_n), pair_n) * pair_n
    warpgroups = 1 if block_m == 64 else 2
    return HostConstants(
        gemm_type=gemm_type,
        shape_n=n,
        shape_k=k,
        block_m=block_m,
        multicast=multicast,
        box_rows_a=block_m if multicast_b else block_m // multicast,
        box_rows_b=block_n // 2 if multicast_b else block_n,
        d_span_bytes=span_bytes,
        d_span_cols=span_bytes // 2,
        block_threads=warpgroups * 128 + PRODUCER_THREADS,
        pair_m=2 if multicast == 2 and multicast_b else 1,
        num_n_slots=n_blocks // pair_n,
        layout_bytes=smem_bytes(block_m, block_n, config.num_stages),
    )


def template_args(constants: HostConstants) -> dict[str, int]:
    """The template arguments that carry these constants into the compile, where the launch file
    static_asserts each."""
    return {
        "SMEM_BYTES": constants.layout_bytes,
        "BOX_ROWS_A": constants.box_rows_a,
        "BOX_ROWS_B": constants.box_rows_b,
        "D_SPAN_COLS": constants.d_span_cols,
        "BLOCK_THREADS": constants.block_threads,
        "PAIR_M": constants.pair_m,
        "NUM_N_SLOTS": constants.num_n_slots,
        "PARAMS_BYTES": PARAMS_BYTES,
    }
