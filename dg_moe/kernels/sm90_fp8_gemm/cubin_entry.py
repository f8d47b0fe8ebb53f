"""The SM90 FP8 GEMM's host entry for an NVRTC cubin: what dg_moe/csrc/launch/sm90_fp8_gemm.cu does per
call under nvcc, in Python on the CUDA driver API.

:class:`CubinEntry` takes the nvcc entry's arguments, so the launcher calls either alike. The pure
functions (tensor-map shapes, grid, shared memory) follow the C++ line by line and are unit-tested
against it on CPU; the constants they use come from :mod:`.host_constants`, which every compile
static_asserts.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

from ...jit.cubin import CubinKernel, PreparedLaunch
from ...jit.cubin_entry import MemoisedLaunches, invalid_argument, prepare_launch
from ...jit.cuda_driver import (
    CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    CU_TENSOR_MAP_DATA_TYPE_UINT8,
    CU_TENSOR_MAP_SWIZZLE_32B,
    CU_TENSOR_MAP_SWIZZLE_64B,
    CU_TENSOR_MAP_SWIZZLE_128B,
    CU_TENSOR_MAP_SWIZZLE_NONE,
)
from ...jit.tensor_map import TensorMap2D
from ...layout.math import ceil_div
from .constants import BLOCK_K, SMEM_BYTES_PER_BLOCK, GemmType
from .host_constants import D_BOX_ROWS, HostConstants

ENTRY = "dg_moe_sm90_fp8_gemm"
"""The nvcc host entry's name, which this entry's argument errors carry as theirs do."""

D_SWIZZLE = {128: CU_TENSOR_MAP_SWIZZLE_128B, 64: CU_TENSOR_MAP_SWIZZLE_64B, 32: CU_TENSOR_MAP_SWIZZLE_32B}
"""The swizzle of a D slab by its row bytes (DTile::kSpanBytes); the BF16 family's D tile is the same."""


class Params(ctypes.Structure):
    """The kernel's ``Params`` argument (PARAMS_BYTES, static_asserted by every compile)."""

    _fields_ = [
        ("sfb", ctypes.c_void_p),
        ("layout", ctypes.c_void_p),
        ("d", ctypes.c_void_p),
        ("m", ctypes.c_uint32),
        ("num_groups", ctypes.c_uint32),
        ("group_table", ctypes.c_uint32),
    ]


def tensor_map_specs(
    c: HostConstants, m: int, num_groups: int, sfa_stride: int
) -> tuple[TensorMap2D, TensorMap2D, TensorMap2D, TensorMap2D]:
    """The maps of A, B, SFA and D for ``m`` rows (max_m when masked), as the nvcc entry encodes them."""
    masked = c.gemm_type == GemmType.MASKED
    rows = num_groups * m if masked else m
    b_rows = (1 if c.gemm_type == GemmType.NORMAL else num_groups) * c.shape_n
    sfa_cols = (num_groups if masked else 1) * (c.shape_k // BLOCK_K)
    k = c.shape_k
    return (
        TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_UINT8, k, rows, k, BLOCK_K, c.box_rows_a, CU_TENSOR_MAP_SWIZZLE_128B),
        TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_UINT8, k, b_rows, k, BLOCK_K, c.box_rows_b, CU_TENSOR_MAP_SWIZZLE_128B),
        TensorMap2D(
            CU_TENSOR_MAP_DATA_TYPE_FLOAT32, m, sfa_cols, sfa_stride * 4, c.block_m, 1, CU_TENSOR_MAP_SWIZZLE_NONE
        ),
        TensorMap2D(
            CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            c.shape_n,
            rows,
            c.shape_n * 2,
            c.d_span_cols,
            D_BOX_ROWS,
            D_SWIZZLE[c.d_span_bytes],
        ),
    )


def grid_clusters(c: HostConstants, m: int, num_sms: int, resident: int) -> int:
    """Clusters of the persistent grid: whole clusters on ``num_sms``, at most the ``resident`` ones
    (0: unknown, no cap), and for Normal at most the scheduler's tile slots."""
    clusters = num_sms // c.multicast
    if 0 < resident < clusters:
        clusters = resident
    if c.gemm_type == GemmType.NORMAL:
        slots = ceil_div(ceil_div(m, c.block_m), c.pair_m) * c.num_n_slots
        clusters = min(clusters, slots)
    return clusters


def dynamic_shared_bytes(c: HostConstants, num_groups: int) -> tuple[int, bool]:
    """(dynamic shared memory of one CTA, whether the group table is in it): the layout, plus
    ``num_groups + 1`` words of group table for the masked and prefix-sum layouts where they fit."""
    table_bytes = (num_groups + 1) * 4
    group_table = c.group_table and c.layout_bytes + table_bytes <= SMEM_BYTES_PER_BLOCK
    return c.layout_bytes + (table_bytes if group_table else 0), group_table


def prepare_gemm_launch(
    kernel: CubinKernel,
    c: HostConstants,
    entry: str,
    specs: Sequence[TensorMap2D],
    addresses: Sequence[int],
    d: int,
    m: int,
    num_groups: int,
    num_sms: int,
    stream: int,
    params: Callable[[int], ctypes.Structure],
) -> PreparedLaunch:
    """The launch of a GEMM on this family's scheduler and group table (the BF16 family's too), as the
    nvcc entry ``entry`` makes it: ``params(group_table)`` is the kernel's Params with kGroupTable's
    runtime flag (0 or 1) filled in."""
    if m == 0 or num_groups == 0 or num_sms == 0:
        raise invalid_argument(entry, f"m={m}, num_groups={num_groups}, num_sms={num_sms}")
    shared, group_table = dynamic_shared_bytes(c, num_groups)

    def grid(resident: int) -> int:
        clusters = grid_clusters(c, m, num_sms, resident)
        if clusters == 0:
            raise invalid_argument(entry, "no cluster fits")
        return clusters * c.multicast

    return prepare_launch(
        kernel, specs, addresses, d,
        max_dynamic_shared=c.max_dynamic_shared, block=c.block_threads, cluster=c.multicast,
        occupancy_shared=c.layout_bytes, grid=grid, shared_bytes=shared, stream=stream,
        params=params(int(group_table)),
    )


class CubinEntry(MemoisedLaunches):
    """One variant's launch on its CubinKernel, called as the nvcc entry is: ``(a, sfa, b, sfb, d, layout,
    m, num_groups, sfa_stride, num_sms, stream)`` with device addresses (``layout`` may be None) and
    the cudaStream_t as an int. A call whose arguments were seen before is one cuLaunchKernelEx on
    memoised arguments; a new one encodes the tensor maps it has not seen (memoised per address and
    shape) and, once per device, sets the shared-memory limit and asks for the resident clusters."""

    def __init__(self, kernel: CubinKernel, constants: HostConstants):
        super().__init__(kernel)
        self.constants = constants

    def __call__(
        self,
        a: int,
        sfa: int,
        b: int,
        sfb: int,
        d: int,
        layout: int | None,
        m: int,
        num_groups: int,
        sfa_stride: int,
        num_sms: int,
        stream: int,
    ) -> None:
        self._launch((a, sfa, b, sfb, d, layout, m, num_groups, sfa_stride, num_sms, stream))

    def _prepare(self, key: tuple) -> PreparedLaunch:
        """The launch of the arguments ``key`` (``__call__``'s, in its order)."""
        a, sfa, b, sfb, d, layout, m, num_groups, sfa_stride, num_sms, stream = key
        c = self.constants
        return prepare_gemm_launch(
            self.kernel, c, ENTRY, tensor_map_specs(c, m, num_groups, sfa_stride), (a, b, sfa, d), d, m,
            num_groups, num_sms, stream, lambda group_table: Params(sfb, layout, d, m, num_groups, group_table),
        )
