"""What every family's Python host entry on an NVRTC cubin shares: the memo of prepared launches, the
argument error the nvcc entries raise, and the order of the driver work that prepares a launch.

A family's ``CubinEntry`` (e.g. dg_moe/kernels/sm90_fp8_gemm/cubin_entry.py) keeps its own arguments,
tensor-map shapes, grid and ``Params``; the steps here are the ones whose order matters the same way in
every family.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

from ..errors import CudaError
from .cubin import CubinKernel, PreparedLaunch, launch_config
from .tensor_map import TensorMap2D

STATUS_INVALID_ARGUMENT = 100002
"""dg_moe::kStatusInvalidArgument (common/abi.cuh)."""
MAX_LAUNCHES = 1024
"""Prepared launches kept per variant (per distinct pointers, sizes and stream); the oldest goes first."""


def invalid_argument(entry: str, what: str) -> CudaError:
    """The error the nvcc host entry ``entry`` returns for arguments it rejects, ``what`` saying which."""
    return CudaError(entry, STATUS_INVALID_ARGUMENT, f"a dg_moe host entry rejected its arguments ({what})")


class MemoisedLaunches:
    """A variant's launches by the host entry's arguments: a call seen before is one cuLaunchKernelEx on
    memoised arguments, a new one is prepared by the subclass's ``_prepare``."""

    def __init__(self, kernel: CubinKernel):
        self.kernel = kernel
        self._launches: dict[tuple, Callable[[], None]] = {}

    def _launch(self, key: tuple) -> None:
        """Launch the arguments ``key``, preparing them first where they are new."""
        launch = self._launches.get(key)
        if launch is None:
            launch = self._prepare(key)
            if len(self._launches) >= MAX_LAUNCHES:
                self._launches.pop(next(iter(self._launches)), None)
            self._launches[key] = launch
        launch()

    def _prepare(self, key: tuple) -> PreparedLaunch:
        """The launch of the arguments ``key``; raises the entry's argument errors."""
        raise NotImplementedError


def prepare_launch(
    kernel: CubinKernel,
    specs: Sequence[TensorMap2D],
    addresses: Sequence[int],
    device_address: int,
    *,
    max_dynamic_shared: int,
    block: int,
    cluster: int,
    occupancy_shared: int,
    grid: Callable[[int], int],
    shared_bytes: int,
    stream: int,
    params: ctypes.Structure,
) -> PreparedLaunch:
    """One launch of ``kernel`` on the device of the calling thread's context (made the primary context
    of the device holding ``device_address`` where the thread has none): the maps ``specs`` encoded over
    ``addresses``, the kernel prepared once per device (:meth:`CubinKernel.prepare_device` with
    ``max_dynamic_shared``, ``block``, ``cluster`` and ``occupancy_shared``), ``grid(resident clusters)``
    CTAs in clusters of ``cluster`` with ``shared_bytes`` each on ``stream``, and ``params`` before the
    maps as the kernel's arguments. ``grid`` may raise the entry's argument error."""
    # First: in a thread that made no CUDA call yet this makes the primary context current, which
    # cuTensorMapEncodeTiled needs too (it failed with CUDA error 201 on an H100 when encoded before).
    device = kernel.driver.current_device(device_address)
    maps = [kernel.tensor_map(spec, address) for spec, address in zip(specs, addresses, strict=True)]
    resident = kernel.prepare_device(device, max_dynamic_shared, block, cluster, occupancy_shared)
    config = launch_config(grid(resident), block, shared_bytes, stream, cluster)
    return PreparedLaunch(kernel, device, config, (params, *maps))
