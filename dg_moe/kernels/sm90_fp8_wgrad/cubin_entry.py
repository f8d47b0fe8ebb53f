"""The weight-gradient GEMM's host entry for an NVRTC cubin: what dg_moe/csrc/launch/sm90_fp8_wgrad.cu does
per call under nvcc, in Python on the CUDA driver API.

:class:`CubinEntry` takes the nvcc entry's arguments, so the launcher calls either alike. The pure
functions (tensor-map shapes, grid, the column-pair flag) follow the C++ line by line and are unit-tested
on CPU; the numbers they share with the kernel come from :mod:`.host_constants`, which every compile
static_asserts.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from ...jit.cubin import CubinKernel, PreparedLaunch
from ...jit.cubin_entry import MemoisedLaunches, invalid_argument, prepare_launch
from ...jit.cuda_driver import (
    CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    CU_TENSOR_MAP_DATA_TYPE_UINT8,
    CU_TENSOR_MAP_SWIZZLE_128B,
    CU_TENSOR_MAP_SWIZZLE_NONE,
)
from ...jit.tensor_map import TensorMap2D
from ...layout.math import ceil_div
from ..sm90_fp8_gemm.constants import BLOCK_K
from .heuristic import WgradConfig, smem_bytes
from .host_constants import BLOCK_THREADS
from .variants import WgradType

ENTRY = "dg_moe_sm90_fp8_wgrad"
"""The nvcc host entry's name, which this entry's argument errors carry as theirs do."""


class Params(ctypes.Structure):
    """The kernel's ``Params`` argument (PARAMS_BYTES, static_asserted by every compile)."""

    _fields_ = [
        ("d", ctypes.c_void_p),
        ("layout", ctypes.c_void_p),
        ("d_group_stride", ctypes.c_uint64),
        ("d_row_stride", ctypes.c_uint32),
        ("m", ctypes.c_uint32),
        ("k", ctypes.c_uint32),
        ("num_groups", ctypes.c_uint32),
        ("pairs", ctypes.c_uint32),
        ("accumulate", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class Variant:
    """What a launch needs of one compiled variant."""

    wgrad_type: WgradType
    config: WgradConfig
    shape_n: int

    @property
    def multicast(self) -> int:
        """CTAs per cluster: 2 where they share B."""
        return 2 if self.config.share_b else 1

    @property
    def layout_bytes(self) -> int:
        """Layout::kTotalBytes: the dynamic shared memory of one CTA."""
        return smem_bytes(self.config.block_m, self.config.block_n, self.config.num_stages, self.config.bf16)


MN_CHUNK = 64
"""M or N indices of one BF16 operand box: one 128-byte swizzle row of bfloat16 (MN-major operands)."""


def tensor_map_specs(v: Variant, m: int, sum_k: int, a_row_bytes: int, sfa_stride: int, b_row_bytes: int,
                     sfb_stride: int) -> tuple[TensorMap2D, TensorMap2D, TensorMap2D, TensorMap2D]:
    """The maps of A, B, SFA and SFB, as the nvcc entry encodes them. BF16: A [sum_K, M] and B [sum_K, N]
    MN-major in boxes of 64 indices x 64 K rows, and A's and B's maps again in the scales' places, which
    its kernel does not read."""
    block_m, block_n, bf16 = v.config.block_m, v.config.block_n, v.config.bf16
    swizzle = CU_TENSOR_MAP_SWIZZLE_128B
    if bf16:
        bf16_k = BLOCK_K // 2
        a = TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, m, sum_k, a_row_bytes, MN_CHUNK, bf16_k, swizzle)
        b = TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, v.shape_n, sum_k, b_row_bytes, MN_CHUNK, bf16_k, swizzle)
        return a, b, a, b
    a = TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_UINT8, sum_k, m, a_row_bytes, BLOCK_K, block_m, swizzle)
    # A B-sharing pair loads half of B's rows per CTA.
    b = TensorMap2D(CU_TENSOR_MAP_DATA_TYPE_UINT8, sum_k, v.shape_n, b_row_bytes, BLOCK_K, block_n // v.multicast,
                    swizzle)
    f32, k_blocks = CU_TENSOR_MAP_DATA_TYPE_FLOAT32, sum_k // BLOCK_K
    return (
        a, b,
        TensorMap2D(f32, m, k_blocks, sfa_stride * 4, block_m, 1, CU_TENSOR_MAP_SWIZZLE_NONE),
        TensorMap2D(f32, v.shape_n, k_blocks, sfb_stride * 4, block_n, 1, CU_TENSOR_MAP_SWIZZLE_NONE),
    )


def grid_size(v: Variant, m: int, num_groups: int, num_sms: int) -> int:
    """CTAs of the persistent grid: one per SM, no more than there are tiles, in whole clusters."""
    units = num_groups * (ceil_div(m, v.config.block_m) // v.multicast) * ceil_div(v.shape_n, v.config.block_n)
    return min(units, num_sms // v.multicast) * v.multicast


def column_pairs(d: int, d_group_stride: int, d_row_stride: int) -> bool:
    """Whether every row of d starts 8-byte aligned, so the epilogue writes float2 pairs."""
    return d % 8 == 0 and d_group_stride % 2 == 0 and d_row_stride % 2 == 0


class CubinEntry(MemoisedLaunches):
    """One variant's launch on its CubinKernel, called as the nvcc entry is: ``(a, a_row_bytes, sfa,
    sfa_stride, b, b_row_bytes, sfb, sfb_stride, accumulate, d, layout, m, sum_k, num_groups,
    d_group_stride, d_row_stride, num_sms, stream)`` with device addresses (``layout`` may be None),
    ``accumulate`` 1 when d already holds C, and the cudaStream_t as an int. A call whose arguments were
    seen before is one cuLaunchKernelEx on memoised arguments."""

    def __init__(self, kernel: CubinKernel, variant: Variant):
        super().__init__(kernel)
        self.variant = variant

    def __call__(self, *args: int | None) -> None:
        self._launch(args)

    def _prepare(self, args: tuple) -> PreparedLaunch:
        """The launch of ``__call__``'s arguments."""
        (a, a_row_bytes, sfa, sfa_stride, b, b_row_bytes, sfb, sfb_stride, accumulate, d, layout, m, sum_k,
         num_groups, d_group_stride, d_row_stride, num_sms, stream) = args
        v = self.variant
        if m == 0 or sum_k == 0 or sum_k % BLOCK_K != 0 or num_groups == 0 or num_sms == 0:
            raise invalid_argument(ENTRY, f"m={m}, sum_k={sum_k}, num_groups={num_groups}, num_sms={num_sms}")
        if v.wgrad_type != WgradType.NORMAL and layout is None:
            raise invalid_argument(ENTRY, "a K-grouped launch without its layout")
        if (sfa is not None, sfb is not None) != (not v.config.bf16,) * 2:
            raise invalid_argument(ENTRY, "scales given to a BF16 variant, or missing for an FP8 one")
        if ceil_div(m, v.config.block_m) % v.multicast != 0 or num_sms < v.multicast:
            raise invalid_argument(ENTRY, f"m={m}: a B-sharing variant needs an even number of m-blocks")
        pairs = column_pairs(d, d_group_stride, d_row_stride)
        params = Params(d, None if v.wgrad_type == WgradType.NORMAL else layout, d_group_stride, d_row_stride, m,
                        sum_k, num_groups, int(pairs), int(accumulate != 0))
        return prepare_launch(
            self.kernel, tensor_map_specs(v, m, sum_k, a_row_bytes, sfa_stride, b_row_bytes, sfb_stride),
            (a, b, a, b) if v.config.bf16 else (a, b, sfa, sfb), d,
            max_dynamic_shared=v.layout_bytes, block=BLOCK_THREADS, cluster=v.multicast,
            occupancy_shared=v.layout_bytes,
            grid=lambda _resident: grid_size(v, m, num_groups, num_sms), shared_bytes=v.layout_bytes,
            stream=stream, params=params,
        )
