"""The numbers the SM90 FP8 GEMM's host side derives from a variant, in Python for the NVRTC launcher.

The nvcc-built host entry (dg_moe/csrc/launch/sm90_fp8_gemm.cu) reads them from the kernel's C++
types; a cubin launch has no C++ host, so they are computed here. Every compile receives them as
template arguments (:func:`template_args`), which the launch file static_asserts against the C++
constexprs under both backends: a formula here that drifts from the kernel fails the compile.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...layout.math import ceil_div
from .constants import SMEM_BYTES_PER_BLOCK, GemmType
from .heuristic import GemmConfig, smem_bytes

PRODUCER_THREADS = 128
"""kNumProducerThreads: the TMA producer warpgroup beside the math warpgroups."""
PARAMS_BYTES = 40
"""sizeof(Params): three pointers and three uint32, padded to 8 bytes (cubin_entry.Params mirrors it)."""
D_BOX_ROWS = 64
"""Rows of one D store box: each math warpgroup stores its own 64 rows of each wave."""


@dataclass(frozen=True)
class HostConstants:
    """What the host entry takes from C++ for one variant (names of the launch file in comments)."""

    gemm_type: GemmType
    shape_n: int
    shape_k: int
    block_m: int
    multicast: int
    box_rows_a: int  # kBoxRowsA: rows of A one CTA loads per K block
    box_rows_b: int  # kBoxRowsB: rows of B one CTA loads per K block
    d_span_bytes: int  # DTile::kSpanBytes: bytes of one swizzled D column slab's row
    d_span_cols: int  # DTile::kSpanCols
    block_threads: int  # MathShape<BLOCK_M>::kBlockThreads
    pair_m: int  # Scheduler::kPairM: m-blocks per slot
    num_n_slots: int  # Scheduler::kNumNSlots
    layout_bytes: int  # Layout::kTotalBytes (without the group table)

    @property
    def group_table(self) -> bool:
        """kGroupTable: the masked and prefix-sum layouts may add a group table after the layout."""
        return self.gemm_type in (GemmType.MASKED, GemmType.CONTIGUOUS_PSUM)

    @property
    def max_dynamic_shared(self) -> int:
        """The kernel's dynamic shared-memory limit: all 227 KB where a group table may follow the layout."""
        return SMEM_BYTES_PER_BLOCK if self.group_table else self.layout_bytes


def scheduled_constants(gemm_type: GemmType, config: GemmConfig, n: int, k: int, layout_bytes: int) -> HostConstants:
    """The host constants of a variant of a kernel on this family's scheduler, math warpgroups and D
    epilogue, whose shared layout takes ``layout_bytes``: this family's and the BF16 family's."""
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
        layout_bytes=layout_bytes,
    )


def host_constants(gemm_type: GemmType, config: GemmConfig, n: int, k: int) -> HostConstants:
    """The host constants of the variant ``template_args(gemm_type, config, n, k)`` compiles."""
    return scheduled_constants(gemm_type, config, n, k, smem_bytes(config.block_m, config.block_n,
                                                                   config.num_stages, k))


def constant_args(constants: HostConstants, params_bytes: int) -> dict[str, int]:
    """The template arguments that carry ``constants`` and sizeof(Params), ``params_bytes``, into the
    compile of a kernel on this family's scheduler, where the launch file static_asserts each (SMEM_BYTES,
    the layout's bytes, was the first)."""
    return {
        "SMEM_BYTES": constants.layout_bytes,
        "BOX_ROWS_A": constants.box_rows_a,
        "BOX_ROWS_B": constants.box_rows_b,
        "D_SPAN_COLS": constants.d_span_cols,
        "BLOCK_THREADS": constants.block_threads,
        "PAIR_M": constants.pair_m,
        "NUM_N_SLOTS": constants.num_n_slots,
        "PARAMS_BYTES": params_bytes,
    }


def template_args(constants: HostConstants) -> dict[str, int]:
    """The template arguments that carry these constants into the compile (:func:`constant_args`)."""
    return constant_args(constants, PARAMS_BYTES)
