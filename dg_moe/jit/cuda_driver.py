"""ctypes bindings of the few CUDA driver entry points that launch an NVRTC cubin (``libcuda.so.1``).

The enum values and struct layouts are those of cuda.h (CUDA 13.0); tests/test_jit_cuda_driver.py
compiles a C program against cuda.h to check every value, size and offset. Only un-versioned entry points
are bound (cuda.h maps none of these names to a ``_v2``), so the symbols are the ones cuda.h
declares. The library is opened on first use, not on import: a machine without a GPU imports this.
"""

from __future__ import annotations

import ctypes
import functools
import threading

from ..errors import CudaError, DeviceNotAvailableError

LIBRARY = "libcuda.so.1"

CUDA_SUCCESS = 0
CUDA_ERROR_INVALID_CONTEXT = 201
# CUfunction_attribute
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
# CUlaunchAttributeID
CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4
# CUpointer_attribute
CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9
# CUtensorMapDataType
CU_TENSOR_MAP_DATA_TYPE_UINT8 = 0
CU_TENSOR_MAP_DATA_TYPE_FLOAT32 = 7
CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9
# CUtensorMapInterleave
CU_TENSOR_MAP_INTERLEAVE_NONE = 0
# CUtensorMapSwizzle
CU_TENSOR_MAP_SWIZZLE_NONE = 0
CU_TENSOR_MAP_SWIZZLE_32B = 1
CU_TENSOR_MAP_SWIZZLE_64B = 2
CU_TENSOR_MAP_SWIZZLE_128B = 3
# CUtensorMapL2promotion
CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3
# CUtensorMapFloatOOBfill
CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0
# CUtensorMap: CU_TENSOR_MAP_NUM_QWORDS (16) 64-bit words; cuTensorMapEncodeTiled wants it 64-byte aligned.
TENSOR_MAP_BYTES = 128
TENSOR_MAP_ALIGNMENT = 64


class CUlaunchAttributeClusterDim(ctypes.Structure):
    """``CUlaunchAttributeValue::clusterDim``: cluster extent in blocks."""

    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


class CUlaunchAttributeValue(ctypes.Union):
    """The 64-byte union of cuda.h; only the members the launcher sets are spelt out."""

    _fields_ = [
        ("pad", ctypes.c_char * 64),
        ("clusterDim", CUlaunchAttributeClusterDim),
        # cuda.h's union holds CUevent (pointer) members, which give it 8-byte alignment.
        ("event", ctypes.c_void_p),
    ]


class CUlaunchAttribute(ctypes.Structure):
    """``CUlaunchAttribute``: a 4-byte id, padding to 8, then the value."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", CUlaunchAttributeValue)]


class CUlaunchConfig(ctypes.Structure):
    """``CUlaunchConfig`` of cuLaunchKernelEx and cuOccupancyMaxActiveClusters."""

    _fields_ = [
        ("gridDimX", ctypes.c_uint),
        ("gridDimY", ctypes.c_uint),
        ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint),
        ("blockDimY", ctypes.c_uint),
        ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint),
        ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(CUlaunchAttribute)),
        ("numAttrs", ctypes.c_uint),
    ]


_P = ctypes.c_void_p
_U32 = ctypes.c_uint
_I = ctypes.c_int
_U64P = ctypes.POINTER(ctypes.c_uint64)
_U32P = ctypes.POINTER(ctypes.c_uint32)

# name -> argtypes; every entry returns CUresult (an int).
_SIGNATURES: dict[str, tuple] = {
    "cuInit": (_U32,),
    "cuGetErrorString": (_I, ctypes.POINTER(ctypes.c_char_p)),
    "cuDeviceGet": (ctypes.POINTER(_I), _I),
    "cuDevicePrimaryCtxRetain": (ctypes.POINTER(_P), _I),
    "cuCtxGetCurrent": (ctypes.POINTER(_P),),
    "cuCtxSetCurrent": (_P,),
    "cuCtxGetDevice": (ctypes.POINTER(_I),),
    "cuPointerGetAttribute": (_P, _I, ctypes.c_uint64),
    "cuLibraryLoadData": (ctypes.POINTER(_P), _P, _P, _P, _U32, _P, _P, _U32),
    "cuLibraryGetKernel": (ctypes.POINTER(_P), _P, ctypes.c_char_p),
    "cuKernelSetAttribute": (_I, _I, _P, _I),
    "cuOccupancyMaxActiveClusters": (ctypes.POINTER(_I), _P, ctypes.POINTER(CUlaunchConfig)),
    "cuTensorMapEncodeTiled": (_P, _I, _U32, _P, _U64P, _U64P, _U32P, _U32P, _I, _I, _I, _I),
    # (config, CUfunction or CUkernel, kernelParams, extra), all passed as addresses.
    "cuLaunchKernelEx": (_P, _P, _P, _P),
}


class Driver:
    """libcuda with the entry points above bound; ``check`` turns a CUresult into CudaError."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
            setattr(self, name, fn)
        self.check(self.cuInit(0), "cuInit")

    def error_string(self, status: int) -> str:
        """cuGetErrorString's text for ``status``."""
        text = ctypes.c_char_p()
        if self.cuGetErrorString(status, ctypes.byref(text)) != CUDA_SUCCESS or not text.value:
            return f"CUresult {status}"
        return text.value.decode(errors="replace")

    def check(self, status: int, entry: str) -> None:
        """Raise ``CudaError(entry, status, text)`` unless ``status`` is CUDA_SUCCESS."""
        if status != CUDA_SUCCESS:
            raise CudaError(entry, status, self.error_string(status))

    def make_primary_current(self, device: int) -> None:
        """Make ``device``'s primary context (the one the CUDA runtime and torch use) current in this
        thread, as cudaSetDevice would."""
        context = ctypes.c_void_p()
        self.check(self.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        self.check(self.cuCtxSetCurrent(context), "cuCtxSetCurrent")

    def current_device(self, address: int) -> int:
        """The device of the calling thread's context; where the thread has none yet (it made no runtime
        call), the primary context of the device holding ``address`` is made current first."""
        device = ctypes.c_int()
        status = self.cuCtxGetDevice(ctypes.byref(device))
        if status == CUDA_ERROR_INVALID_CONTEXT:
            ordinal = ctypes.c_int()
            self.check(
                self.cuPointerGetAttribute(ctypes.byref(ordinal), CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, address),
                "cuPointerGetAttribute",
            )
            self.check(self.cuDeviceGet(ctypes.byref(device), ordinal.value), "cuDeviceGet")
            self.make_primary_current(device.value)
            status = self.cuCtxGetDevice(ctypes.byref(device))
        self.check(status, "cuCtxGetDevice")
        return device.value


_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _open() -> Driver:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise DeviceNotAvailableError(
            f"the CUDA driver ({LIBRARY}) does not load ({exc}): launching an NVRTC cubin needs an NVIDIA "
            "driver; compile_only works without one"
        ) from exc
    return Driver(lib)


def get_driver() -> Driver:
    """The process's Driver, opened (and cuInit run) on first use."""
    with _lock:
        return _open()
