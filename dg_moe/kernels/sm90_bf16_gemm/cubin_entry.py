"""The SM90 BF16 GEMM's host entry for an NVRTC cubin: what dg_moe/csrc/launch/sm90_bf16_gemm.cu does per
call under nvcc, in Python on the CUDA driver API.

:class:`CubinEntry` takes the nvcc entry's arguments, so the launcher calls either alike. The grid and the
shared memory follow the FP8 family's formulas (one scheduler, one group table:
:func:`~dg_moe.kernels.sm90_fp8_gemm.cubin_entry.grid_clusters`,
:func:`~dg_moe.kernels.sm90_fp8_gemm.cubin_entry.dynamic_shared_bytes`); the tensor maps and the kernel's
``Params`` are this family's. The constants come from :mod:`.host_constants`, which every compile
static_asserts.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from ...errors import CudaError
from ...jit.cubin import CubinKernel, PreparedLaunch, launch_config
from ...jit.cuda_driver import (
    CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    CU_TENSOR_MAP_SWIZZLE_32B,
    CU_TENSOR_MAP_SWIZZLE_64B,
    CU_TENSOR_MAP_SWIZZLE_128B,
)
from ...jit.tensor_map import TensorMap2D
from ..sm90_fp8_gemm.cubin_entry import MAX_LAUNCHES, STATUS_INVALID_ARGUMENT, dynamic_shared_bytes, grid_clusters
from ..sm90_fp8_gemm.host_constants import HostConstants
from .constants import BLOCK_K, GemmType
from .host_constants import D_BOX_ROWS

ENTRY = "dg_moe_sm90_bf16_gemm"
"""The nvcc host entry's name, which this entry's argument errors carry as theirs do."""

_D_SWIZZLE = {128: CU_TENSOR_MAP_SWIZZLE_128B, 64: CU_TENSOR_MAP_SWIZZLE_64B, 32: CU_TENSOR_MAP_SWIZZLE_32B}


class Params(ctypes.Structure):
    """The kernel's ``Params`` argument (PARAMS_BYTES, static_asserted by every compile)."""

    _fields_ = [
        ("layout", ctypes.c_void_p),
        ("d", ctypes.c_void_p),
        ("m", ctypes.c_uint32),
        ("num_groups", ctypes.c_uint32),
        ("d_stride", ctypes.c_uint32),
        ("group_table", ctypes.c_uint32),
    ]


def tensor_map_specs(
    c: HostConstants, m: int, num_groups: int, a_stride: int, b_stride: int, d_stride: int
) -> tuple[TensorMap2D, TensorMap2D, TensorMap2D]:
    """The maps of A, B and D for ``m`` rows (max_m when masked) and row strides in elements, as the nvcc
    entry encodes them."""
    rows = num_groups * m if c.gemm_type == GemmType.MASKED else m
    b_rows = (1 if c.gemm_type == GemmType.NORMAL else num_groups) * c.shape_n
    k = c.shape_k
    return (
        TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, k, rows, a_stride * 2, BLOCK_K, c.box_rows_a,
                    CU_TENSOR_MAP_SWIZZLE_128B),
        TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, k, b_rows, b_stride * 2, BLOCK_K, c.box_rows_b,
                    CU_TENSOR_MAP_SWIZZLE_128B),
        TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, c.shape_n, rows, d_stride * 2, c.d_span_cols, D_BOX_ROWS,
                    _D_SWIZZLE[c.d_span_bytes]),
    )


def _invalid(what: str) -> CudaError:
    return CudaError(ENTRY, STATUS_INVALID_ARGUMENT, f"a dg_moe host entry rejected its arguments ({what})")


class CubinEntry:
    """One variant's launch on its CubinKernel, called as the nvcc entry is: ``(a, b, d, layout, m,
    num_groups, a_stride, b_stride, d_stride, num_sms, stream)`` with device addresses (``layout`` may be
    None), row strides in elements and the cudaStream_t as an int. A call whose arguments were seen before
    is one cuLaunchKernelEx on memoised arguments; a new one encodes the tensor maps it has not seen and,
    once per device, sets the shared-memory limit and asks for the resident clusters."""

    def __init__(self, kernel: CubinKernel, constants: HostConstants):
        self.kernel = kernel
        self.constants = constants
        self._launches: dict[tuple, Callable[[], None]] = {}

    def __call__(
        self,
        a: int,
        b: int,
        d: int,
        layout: int | None,
        m: int,
        num_groups: int,
        a_stride: int,
        b_stride: int,
        d_stride: int,
        num_sms: int,
        stream: int,
    ) -> None:
        key = (a, b, d, layout, m, num_groups, a_stride, b_stride, d_stride, num_sms, stream)
        launch = self._launches.get(key)
        if launch is None:
            launch = self._prepare(key)
            if len(self._launches) >= MAX_LAUNCHES:
                self._launches.pop(next(iter(self._launches)), None)
            self._launches[key] = launch
        launch()

    def _prepare(self, key: tuple) -> PreparedLaunch:
        """The launch of the arguments ``key`` (``__call__``'s, in its order)."""
        a, b, d, layout, m, num_groups, a_stride, b_stride, d_stride, num_sms, stream = key
        c, kernel = self.constants, self.kernel
        if m == 0 or num_groups == 0 or num_sms == 0:
            raise _invalid(f"m={m}, num_groups={num_groups}, num_sms={num_sms}")
        specs = tensor_map_specs(c, m, num_groups, a_stride, b_stride, d_stride)
        # First: in a thread that made no CUDA call yet this makes the primary context current, which
        # cuTensorMapEncodeTiled needs too (it failed with CUDA error 201 on an H100 when encoded before).
        device = kernel.driver.current_device(d)
        maps = [kernel.tensor_map(spec, address) for spec, address in zip(specs, (a, b, d), strict=True)]
        resident = kernel.prepare_device(device, c.max_dynamic_shared, c.block_threads, c.multicast, c.layout_bytes)
        clusters = grid_clusters(c, m, num_sms, resident)
        if clusters == 0:
            raise _invalid("no cluster fits")
        shared, group_table = dynamic_shared_bytes(c, num_groups)
        params = Params(layout, d, m, num_groups, d_stride, int(group_table))
        config = launch_config(clusters * c.multicast, c.block_threads, shared, stream, c.multicast)
        return PreparedLaunch(kernel, device, config, (params, *maps))
