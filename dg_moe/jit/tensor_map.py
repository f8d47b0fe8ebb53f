"""2-D and 3-D TMA tensor maps for cubin launches: what a map describes (pure data), and its encoding by the driver
into a 64-byte aligned buffer that a launch passes by value as a ``__grid_constant__ CUtensorMap``."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from .cuda_driver import (
    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
    CU_TENSOR_MAP_INTERLEAVE_NONE,
    CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
    TENSOR_MAP_ALIGNMENT,
    TENSOR_MAP_BYTES,
    Driver,
)


@dataclass(frozen=True)
class TensorMap2D:
    """A tiled 2-D map over a row-major matrix: ``inner`` contiguous elements per row, ``outer`` rows
    ``row_stride_bytes`` apart, read or written in boxes of ``box_inner`` x ``box_outer`` elements.
    Enum fields hold cuda.h's values (cuda_driver)."""

    dtype: int
    inner: int
    outer: int
    row_stride_bytes: int
    box_inner: int
    box_outer: int
    swizzle: int
    l2_promotion: int = CU_TENSOR_MAP_L2_PROMOTION_L2_256B


@dataclass(frozen=True)
class TensorMap3D(TensorMap2D):
    """A stack of ``depth`` such matrices, ``depth_stride_bytes`` apart, read in boxes one matrix deep: a
    box reaching past a matrix's last row reads zeros rather than the next matrix's first rows."""

    depth: int = 1
    depth_stride_bytes: int = 0


class EncodedTensorMap:
    """One encoded CUtensorMap; ``address`` is 64-byte aligned and stays valid while this object lives."""

    __slots__ = ("_buffer", "address")

    def __init__(self) -> None:
        # ctypes cannot ask for alignment: over-allocate and start at the next 64-byte boundary.
        self._buffer = (ctypes.c_uint8 * (TENSOR_MAP_BYTES + TENSOR_MAP_ALIGNMENT))()
        base = ctypes.addressof(self._buffer)
        self.address = base + (-base % TENSOR_MAP_ALIGNMENT)

    def raw(self) -> bytes:
        """The 128 encoded bytes (for tests)."""
        return ctypes.string_at(self.address, TENSOR_MAP_BYTES)


def encode(driver: Driver, spec: TensorMap2D, global_address: int) -> EncodedTensorMap:
    """cuTensorMapEncodeTiled of ``spec`` over the device memory at ``global_address``; raises CudaError."""
    out = EncodedTensorMap()
    dims = [spec.inner, spec.outer]
    strides = [spec.row_stride_bytes]
    box = [spec.box_inner, spec.box_outer]
    if isinstance(spec, TensorMap3D):
        dims.append(spec.depth)
        strides.append(spec.depth_stride_bytes)
        box.append(1)
    rank = len(dims)
    status = driver.cuTensorMapEncodeTiled(
        out.address,
        spec.dtype,
        rank,
        global_address,
        (ctypes.c_uint64 * rank)(*dims),
        (ctypes.c_uint64 * (rank - 1))(*strides),
        (ctypes.c_uint32 * rank)(*box),
        (ctypes.c_uint32 * rank)(*([1] * rank)),
        CU_TENSOR_MAP_INTERLEAVE_NONE,
        spec.swizzle,
        spec.l2_promotion,
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
    )
    driver.check(status, "cuTensorMapEncodeTiled")
    return out
