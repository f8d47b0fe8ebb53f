"""A stand-in for the CUDA driver under a CubinKernel, for testing the families' NVRTC cubin entries on
CPU: it records what an entry hands the driver and decodes each launch from the addresses it gets."""

from __future__ import annotations

import ctypes
from pathlib import Path

from dg_moe.errors import CudaError
from dg_moe.jit import cuda_driver as cu
from dg_moe.jit.cubin import CubinKernel


class FakeDriver:
    """Answers as the driver would for a kernel whose ``Params`` is ``params_type``, followed by
    ``num_maps`` tensor maps, with ``resident`` clusters fitting at once. ``launch_statuses`` are returned
    by the next launches, in turn, before CUDA_SUCCESS."""

    def __init__(self, params_type: type[ctypes.Structure], num_maps: int, resident: int) -> None:
        self.params_type = params_type
        self.num_maps = num_maps
        self.resident = resident
        self.encoded: list[tuple] = []
        self.launches: list[dict] = []
        self.attributes: list[tuple] = []
        self.launch_statuses: list[int] = []
        self.made_current: list[int] = []

    def check(self, status: int, entry: str) -> None:
        if status != cu.CUDA_SUCCESS:
            raise CudaError(entry, status, "fake error")

    def current_device(self, address: int) -> int:
        return 0

    def make_primary_current(self, device: int) -> None:
        self.made_current.append(device)

    def cuKernelSetAttribute(self, attribute: int, value: int, kernel: int, device: int) -> int:
        self.attributes.append((attribute, value, kernel, device))
        return cu.CUDA_SUCCESS

    def cuOccupancyMaxActiveClusters(self, count, kernel, config) -> int:
        count._obj.value = self.resident
        return cu.CUDA_SUCCESS

    def cuTensorMapEncodeTiled(
        self, out, dtype, rank, base, dims, strides, box, element_strides, interleave, swizzle, l2, oob
    ) -> int:
        assert out % cu.TENSOR_MAP_ALIGNMENT == 0
        self.encoded.append((dtype, base, tuple(dims), tuple(strides), tuple(box), swizzle))
        ctypes.c_uint64.from_address(out).value = base  # the "encoding": recognisable in the launch
        return cu.CUDA_SUCCESS

    def cuLaunchKernelEx(self, config: int, function: int, params: int, extra: None) -> int:
        cfg = cu.CUlaunchConfig.from_address(config)
        attribute = cfg.attrs[0]
        pointers = (ctypes.c_void_p * (1 + self.num_maps)).from_address(params)
        p = self.params_type.from_address(pointers[0])
        self.launches.append(
            {
                "grid": (cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ),
                "block": (cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ),
                "shared": cfg.sharedMemBytes,
                "stream": cfg.hStream,
                "num_attrs": cfg.numAttrs,
                "attribute": (
                    attribute.id,
                    attribute.value.clusterDim.x,
                    attribute.value.clusterDim.y,
                    attribute.value.clusterDim.z,
                ),
                "function": function,
                "extra": extra,
                "params": tuple(getattr(p, name) for name, _ in self.params_type._fields_),
                "maps": [ctypes.c_uint64.from_address(pointers[i]).value for i in range(1, 1 + self.num_maps)],
            }
        )
        return self.launch_statuses.pop(0) if self.launch_statuses else cu.CUDA_SUCCESS


def fake_kernel(tmp_path: Path, family: str, driver: FakeDriver) -> CubinKernel:
    """A CubinKernel of ``family`` on ``driver`` whose cubin (never loaded) lies under ``tmp_path``; its
    kernel handle is 0xC0DE."""
    (tmp_path / "kernel.cubin").write_bytes(b"not a cubin: never loaded")
    kernel = CubinKernel(tmp_path / "kernel.cubin", "_Zkernel", family, "0" * 64)
    kernel._driver, kernel._handle = driver, 0xC0DE
    return kernel
