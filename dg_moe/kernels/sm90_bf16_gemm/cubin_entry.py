"""The SM90 BF16 GEMM's host entry for an NVRTC cubin: what dg_moe/csrc/launch/sm90_bf16_gemm.cu does per
call under nvcc, in Python on the CUDA driver API.

:class:`CubinEntry` takes the nvcc entry's arguments, so the launcher calls either alike. The grid and the
shared memory follow the FP8 family's formulas (one scheduler, one group table:
:func:`~dg_moe.kernels.sm90_fp8_gemm.cubin_entry.prepare_gemm_launch`); the tensor maps and the kernel's
``Params`` are this family's. The constants come from :mod:`.host_constants`, which every compile
static_asserts.
"""

from __future__ import annotations

import ctypes

from ...jit.cubin import CubinKernel, PreparedLaunch
from ...jit.cubin_entry import MemoisedLaunches, invalid_argument
from ...jit.cuda_driver import (
    CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    CU_TENSOR_MAP_SWIZZLE_128B,
)
from ...jit.tensor_map import TensorMap2D, TensorMap3D
from ..sm90_fp8_gemm.cubin_entry import D_SWIZZLE, prepare_gemm_launch
from ..sm90_fp8_gemm.host_constants import HostConstants
from .constants import BF16_D, BLOCK_K, K_MAJOR, Epilogue, GemmType, Majors
from .host_constants import D_BOX_ROWS

ENTRY = "dg_moe_sm90_bf16_gemm"
CHUNK_INDICES = 64
"""M or N indices of one MN-major operand box (kChunkIndices: one 128-byte swizzle row of bfloat16)."""
"""The nvcc host entry's name, which this entry's argument errors carry as theirs do."""


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


def output_map(c: HostConstants, epilogue: Epilogue, rows: int, stride: int) -> TensorMap2D:
    """The map of D, or of C (D's boxes and swizzle: it lands in the D tile's layout), over ``rows``
    rows ``stride`` elements apart."""
    dtype = CU_TENSOR_MAP_DATA_TYPE_FLOAT32 if epilogue.d_float else CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    return TensorMap2D(dtype, c.shape_n, rows, stride * epilogue.d_bytes, c.d_span_cols, D_BOX_ROWS,
                       D_SWIZZLE[c.d_span_bytes])


def tensor_map_specs(
    c: HostConstants, m: int, num_groups: int, a_stride: int, b_stride: int, d_stride: int,
    epilogue: Epilogue = BF16_D, c_stride: int = 0, majors: Majors = K_MAJOR,
) -> tuple[TensorMap2D, TensorMap2D, TensorMap2D, TensorMap2D]:
    """The maps of A, B, D and C for ``m`` rows (max_m when masked) and row strides in elements, as the
    nvcc entry encodes them; without accumulation C's map is D's (the kernel takes four maps and reads
    the fourth only when it accumulates). An MN-major A is one [K, M] matrix, an MN-major B a stack of
    [K, N] matrices K * b_stride elements apart, each read in boxes of 64 indices x BLOCK_K rows."""
    rows = num_groups * m if c.gemm_type == GemmType.MASKED else m
    groups_b = 1 if c.gemm_type == GemmType.NORMAL else num_groups
    k = c.shape_k
    bf16, swizzle = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, CU_TENSOR_MAP_SWIZZLE_128B
    if majors.a_mn:
        a_map = TensorMap2D(bf16, rows, k, a_stride * 2, CHUNK_INDICES, BLOCK_K, swizzle)
    else:
        a_map = TensorMap2D(bf16, k, rows, a_stride * 2, BLOCK_K, c.box_rows_a, swizzle)
    if majors.b_mn:
        b_map: TensorMap2D = TensorMap3D(bf16, c.shape_n, k, b_stride * 2, CHUNK_INDICES, BLOCK_K, swizzle,
                                         depth=groups_b, depth_stride_bytes=k * b_stride * 2)
    else:
        b_map = TensorMap2D(bf16, k, groups_b * c.shape_n, b_stride * 2, BLOCK_K, c.box_rows_b, swizzle)
    d_map = output_map(c, epilogue, rows, d_stride)
    return a_map, b_map, d_map, output_map(c, epilogue, rows, c_stride) if epilogue.accumulate else d_map


class CubinEntry(MemoisedLaunches):
    """One variant's launch on its CubinKernel, called as the nvcc entry is: ``(a, b, d, c, layout, m,
    num_groups, a_stride, b_stride, d_stride, c_stride, num_sms, stream)`` with device addresses (``c``
    None unless the variant's ``epilogue`` accumulates, ``layout`` None for Normal), row strides in
    elements and the cudaStream_t as an int. A call whose arguments were seen before is one
    cuLaunchKernelEx on memoised arguments; a new one encodes the tensor maps it has not seen and, once
    per device, sets the shared-memory limit and asks for the resident clusters."""

    def __init__(self, kernel: CubinKernel, constants: HostConstants, epilogue: Epilogue = BF16_D,
                 majors: Majors = K_MAJOR):
        super().__init__(kernel)
        self.constants = constants
        self.epilogue = epilogue
        self.majors = majors

    def __call__(
        self,
        a: int,
        b: int,
        d: int,
        c: int | None,
        layout: int | None,
        m: int,
        num_groups: int,
        a_stride: int,
        b_stride: int,
        d_stride: int,
        c_stride: int,
        num_sms: int,
        stream: int,
    ) -> None:
        self._launch((a, b, d, c, layout, m, num_groups, a_stride, b_stride, d_stride, c_stride, num_sms, stream))

    def _prepare(self, key: tuple) -> PreparedLaunch:
        """The launch of the arguments ``key`` (``__call__``'s, in its order)."""
        a, b, d, c_address, layout, m, num_groups, a_stride, b_stride, d_stride, c_stride, num_sms, stream = key
        c, epilogue = self.constants, self.epilogue
        if epilogue.accumulate and c_address is None:
            raise invalid_argument(ENTRY, "c=None for a variant that accumulates c")
        specs = tensor_map_specs(c, m, num_groups, a_stride, b_stride, d_stride, epilogue, c_stride, self.majors)
        return prepare_gemm_launch(
            self.kernel, c, ENTRY, specs, (a, b, d, c_address if epilogue.accumulate else d), d,
            m, num_groups, num_sms, stream,
            lambda group_table: Params(layout, d, m, num_groups, d_stride, group_table),
        )
