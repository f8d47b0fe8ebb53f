"""A loaded NVRTC cubin (``DG_MOE_JIT_BACKEND=nvrtc``): one kernel launched through the driver API.

``build`` returns a CubinKernel where the nvcc backend returns a KernelLibrary. The cubin is loaded
with cuLibraryLoadData, which is context-independent: one load serves every device, and the kernel
handle (cuLibraryGetKernel) launches on whichever context is current. Loading waits for the first
launch, so ``build`` works on a machine without a GPU. A family's launcher (e.g.
dg_moe/kernels/sm90_fp8_gemm/cubin_entry.py) computes the grid and the arguments; this class keeps
what is per device (shared-memory limit, occupancy) and per tensor (tensor maps), and launches.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path

from .cuda_driver import (
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
    CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
    CUDA_ERROR_INVALID_CONTEXT,
    CUDA_SUCCESS,
    CUlaunchAttribute,
    CUlaunchConfig,
    Driver,
    get_driver,
)
from .tensor_map import EncodedTensorMap, TensorMap2D, encode

MAX_TENSOR_MAPS = 4096
"""Encoded maps kept per kernel; the oldest goes first (eager callers with fresh buffers each call)."""


def launch_config(
    grid: int, block: int, shared_bytes: int, stream: int | None, cluster: int
) -> tuple[CUlaunchConfig, CUlaunchAttribute]:
    """A 1-D CUlaunchConfig with the cluster-dimension attribute ``(cluster, 1, 1)``; the attribute is
    returned too, since the config only points at it and it must outlive the config's use."""
    attribute = CUlaunchAttribute()
    attribute.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attribute.value.clusterDim.x, attribute.value.clusterDim.y, attribute.value.clusterDim.z = cluster, 1, 1
    config = CUlaunchConfig(grid, 1, 1, block, 1, 1, shared_bytes, stream, ctypes.pointer(attribute), 1)
    return config, attribute


class PreparedLaunch:
    """One launch on ``device`` reduced to a cuLaunchKernelEx call on ready-made arguments: calling it
    allocates nothing and never synchronises, so it can be captured into a CUDA graph."""

    __slots__ = ("_launch", "_args", "_driver", "_device", "_keep")

    def __init__(
        self,
        kernel: CubinKernel,
        device: int,
        config: tuple[CUlaunchConfig, CUlaunchAttribute],
        arguments: Sequence[ctypes.Structure | EncodedTensorMap],
    ):
        addresses = [a.address if isinstance(a, EncodedTensorMap) else ctypes.addressof(a) for a in arguments]
        params = (ctypes.c_void_p * len(addresses))(*addresses)
        # The driver reads the config, the attribute and every argument during the call only, but
        # they must live until then: kept here with the addresses.
        self._keep = (config, tuple(arguments), params)
        self._driver = kernel.driver
        self._device = device
        self._launch = self._driver.cuLaunchKernelEx
        self._args = (ctypes.addressof(config[0]), kernel.handle(), ctypes.addressof(params), None)

    def __call__(self) -> None:
        status = self._launch(*self._args)
        if status != CUDA_SUCCESS:
            if status == CUDA_ERROR_INVALID_CONTEXT:
                # A thread that made no CUDA call yet, repeating a launch another thread prepared.
                self._driver.make_primary_current(self._device)
                status = self._launch(*self._args)
            self._driver.check(status, "cuLaunchKernelEx")


class CubinKernel:
    """One cached ``kernel.cubin`` and the kernel in it whose mangled name is ``name`` (meta.json's
    ``kernels``). Driver errors raise ``CudaError(entry point, CUresult, cuGetErrorString text)``."""

    def __init__(self, path: Path, name: str, family: str, key: str):
        self.path = path
        self.name = name
        self.family = family
        self.key = key
        self._image = path.read_bytes()  # the driver reads it at load; kept for the kernel's life
        self._lock = threading.Lock()
        self._driver: Driver | None = None
        self._handle: int | None = None
        self._devices: dict[int, int] = {}  # CUdevice -> resident clusters (0: the query failed)
        self._maps: dict[tuple[TensorMap2D, int], EncodedTensorMap] = {}

    @property
    def driver(self) -> Driver:
        """The CUDA driver (opened on first use)."""
        if self._driver is None:
            self._driver = get_driver()
        return self._driver

    def handle(self) -> int:
        """The CUkernel, loading the cubin on first use."""
        if self._handle is None:
            with self._lock:
                if self._handle is None:
                    driver = self.driver
                    library, kernel = ctypes.c_void_p(), ctypes.c_void_p()
                    driver.check(
                        driver.cuLibraryLoadData(ctypes.byref(library), self._image, None, None, 0, None, None, 0),
                        "cuLibraryLoadData",
                    )
                    driver.check(
                        driver.cuLibraryGetKernel(ctypes.byref(kernel), library, self.name.encode()),
                        "cuLibraryGetKernel",
                    )
                    self._handle = kernel.value
        return self._handle

    def prepare_device(
        self, device: int, max_dynamic_shared: int, block: int, cluster: int, occupancy_shared: int
    ) -> int:
        """Once per device: raise the kernel's dynamic shared-memory limit to ``max_dynamic_shared``,
        then return how many ``cluster``-CTA clusters of ``block`` threads with ``occupancy_shared``
        bytes each can be resident at once (0 where the driver cannot tell: then no cap)."""
        found = self._devices.get(device)
        if found is not None:
            return found
        driver, handle = self.driver, self.handle()
        driver.check(
            driver.cuKernelSetAttribute(
                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, max_dynamic_shared, handle, device
            ),
            "cuKernelSetAttribute",
        )
        config, _attribute = launch_config(cluster, block, occupancy_shared, None, cluster)
        count = ctypes.c_int()
        # A CUkernel stands in for a CUfunction here; a NULL stream means the current context's device.
        status = driver.cuOccupancyMaxActiveClusters(ctypes.byref(count), handle, ctypes.byref(config))
        resident = count.value if status == CUDA_SUCCESS else 0
        self._devices[device] = resident
        return resident

    def tensor_map(self, spec: TensorMap2D, global_address: int) -> EncodedTensorMap:
        """The map ``spec`` over ``global_address``, encoded once per (spec, address)."""
        key = (spec, global_address)
        found = self._maps.get(key)
        if found is None:
            found = encode(self.driver, spec, global_address)
            if len(self._maps) >= MAX_TENSOR_MAPS:
                self._maps.pop(next(iter(self._maps)), None)
            self._maps[key] = found
        return found

    def __repr__(self) -> str:
        return f"CubinKernel({self.family}, key={self.key[:16]}, path={self.path}, kernel={self.name})"
