"""The NVRTC launcher's host work for the SM90 GEMM (cubin_entry.py) against what
dg_moe/csrc/launch/sm90_fp8_gemm.cu does, on CPU: tensor-map shapes, grid and shared memory worked
out by hand from the C++, then a whole launch through a stand-in driver that decodes the launch
config and the kernel arguments from the addresses it receives."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from dg_moe.errors import CudaError
from dg_moe.jit import cuda_driver as cu
from dg_moe.jit.cubin import CubinKernel
from dg_moe.jit.tensor_map import TensorMap2D
from dg_moe.kernels.sm90_fp8_gemm import cubin_entry as ce
from dg_moe.kernels.sm90_fp8_gemm.constants import GemmType
from dg_moe.kernels.sm90_fp8_gemm.heuristic import GemmConfig, max_stages, smem_bytes
from dg_moe.kernels.sm90_fp8_gemm.host_constants import PARAMS_BYTES, HostConstants, host_constants
from dg_moe.layout.scale_factors import get_tma_aligned_size

from .cubin_fakes import FakeDriver
from .cubin_fakes import fake_kernel as make_fake_kernel

U8, F32, BF16 = (
    cu.CU_TENSOR_MAP_DATA_TYPE_UINT8,
    cu.CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    cu.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
)
SW_NONE, SW32, SW64, SW128 = (
    cu.CU_TENSOR_MAP_SWIZZLE_NONE,
    cu.CU_TENSOR_MAP_SWIZZLE_32B,
    cu.CU_TENSOR_MAP_SWIZZLE_64B,
    cu.CU_TENSOR_MAP_SWIZZLE_128B,
)


def _constants(
    gemm_type: GemmType, block_m: int, block_n: int, n: int, k: int, multicast: int = 1, multicast_b: bool = False
) -> HostConstants:
    stages = max_stages(block_m, block_n, k)
    config = GemmConfig(block_m, block_n, stages, multicast, smem_bytes(block_m, block_n, stages, k), 0.0, multicast_b)
    return host_constants(gemm_type, config, n, k)


def test_params_struct_is_the_kernels() -> None:
    assert ctypes.sizeof(ce.Params) == PARAMS_BYTES == 40
    assert [ce.Params.m.offset, ce.Params.num_groups.offset, ce.Params.group_table.offset] == [24, 28, 32]


def test_normal_maps() -> None:
    # make_tensor_map_2d(map, dtype, base, inner, outer, row_stride_bytes, box_inner, box_outer, swizzle):
    # A (K, M) rows K apart, box 128 x kBoxRowsA; B (K, N); SFA (m, K/128) rows sfa_stride * 4 apart,
    # box BLOCK_M x 1; D (N, M) rows 2N apart, box kSpanCols x 64, swizzle by the span's bytes.
    c = _constants(GemmType.NORMAL, 64, 32, 2112, 7168)
    m = 100
    a, b, sfa, d = ce.tensor_map_specs(c, m, 1, get_tma_aligned_size(m, 4))
    assert a == TensorMap2D(U8, 7168, 100, 7168, 128, 64, SW128)
    assert b == TensorMap2D(U8, 7168, 2112, 7168, 128, 32, SW128)
    assert sfa == TensorMap2D(F32, 100, 56, 400, 64, 1, SW_NONE)
    assert d == TensorMap2D(BF16, 2112, 100, 4224, 32, 64, SW64)
    assert all(spec.l2_promotion == cu.CU_TENSOR_MAP_L2_PROMOTION_L2_256B for spec in (a, b, sfa, d))


def test_masked_maps_span_every_group() -> None:
    # Masked: A and D hold G * max_m rows, B G * N, SFA G * K/128 columns of max_m.
    c = _constants(GemmType.MASKED, 64, 128, 4096, 7168)
    a, b, sfa, d = ce.tensor_map_specs(c, 48, 4, 48)
    assert a == TensorMap2D(U8, 7168, 192, 7168, 128, 64, SW128)
    assert b == TensorMap2D(U8, 7168, 16384, 7168, 128, 128, SW128)
    assert sfa == TensorMap2D(F32, 48, 224, 192, 64, 1, SW_NONE)
    assert d == TensorMap2D(BF16, 4096, 192, 8192, 64, 64, SW128)


def test_contiguous_maps_with_shared_b() -> None:
    # A 2-CTA cluster sharing B: each CTA loads BLOCK_N / 2 = 96 rows of B; A and SFA over M_sum rows.
    c = _constants(GemmType.CONTIGUOUS, 128, 192, 4096, 7168, 2, True)
    a, b, sfa, d = ce.tensor_map_specs(c, 1024, 8, 1024)
    assert a == TensorMap2D(U8, 7168, 1024, 7168, 128, 128, SW128)
    assert b == TensorMap2D(U8, 7168, 8 * 4096, 7168, 128, 96, SW128)
    assert sfa == TensorMap2D(F32, 1024, 56, 4096, 128, 1, SW_NONE)
    assert d == TensorMap2D(BF16, 4096, 1024, 8192, 64, 64, SW128)


def test_d_span_of_16_wide_tiles() -> None:
    c = _constants(GemmType.MASKED, 64, 16, 7168, 2048)
    assert ce.tensor_map_specs(c, 32, 2, 32)[3] == TensorMap2D(BF16, 7168, 64, 14336, 16, 64, SW32)


def test_grid() -> None:
    normal = _constants(GemmType.NORMAL, 64, 32, 2112, 7168)
    # ceil(100 / 64) = 2 m-blocks x 66 n-slots = 132 slots; 1 m-block: 66.
    assert ce.grid_clusters(normal, 100, 132, 0) == 132
    assert ce.grid_clusters(normal, 64, 132, 0) == 66
    assert ce.grid_clusters(normal, 100, 132, 120) == 120  # resident clusters cap the grid
    pairs = _constants(GemmType.NORMAL, 256, 128, 2112, 7168, 2)
    # 132 SMs / 2 = 66 clusters; 2 m-blocks x 9 n-slot pairs = 18 slots.
    assert ce.grid_clusters(pairs, 300, 132, 0) == 18
    assert ce.grid_clusters(pairs, 8192, 132, 60) == 60
    grouped = _constants(GemmType.CONTIGUOUS, 128, 192, 4096, 7168, 2, True)
    assert ce.grid_clusters(grouped, 128, 132, 0) == 66  # grouped types are not capped by slots
    assert ce.grid_clusters(normal, 100, 0, 0) == 0


def test_shared_memory_and_group_table() -> None:
    masked = _constants(GemmType.MASKED, 64, 128, 4096, 7168)
    assert ce.dynamic_shared_bytes(masked, 4) == (masked.layout_bytes + 20, True)
    assert masked.max_dynamic_shared == 232448
    normal = _constants(GemmType.NORMAL, 64, 32, 2112, 7168)
    assert ce.dynamic_shared_bytes(normal, 1) == (normal.layout_bytes, False)
    assert normal.max_dynamic_shared == normal.layout_bytes
    psum = _constants(GemmType.CONTIGUOUS_PSUM, 128, 192, 4096, 7168)
    room = (232448 - psum.layout_bytes) // 4
    assert ce.dynamic_shared_bytes(psum, room - 1) == (232448, True)  # exactly fits
    assert ce.dynamic_shared_bytes(psum, room) == (psum.layout_bytes, False)  # one word too many: walk


@pytest.fixture
def fake_kernel(tmp_path: Path) -> tuple[CubinKernel, FakeDriver]:
    driver = FakeDriver(ce.Params, 4, 60)
    return make_fake_kernel(tmp_path, "sm90_fp8_gemm", driver), driver


def test_a_launch_as_the_nvcc_entry_makes_it(fake_kernel) -> None:
    kernel, driver = fake_kernel
    c = _constants(GemmType.MASKED, 64, 128, 4096, 7168, 2)
    entry = ce.CubinEntry(kernel, c)
    a, sfa, b, sfb, d, layout = 0x10000, 0x20000, 0x30000, 0x40000, 0x50000, 0x60000
    args = (a, sfa, b, sfb, d, layout, 48, 4, 48, 132, 0x7777)
    entry(*args)
    assert driver.attributes == [(cu.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 232448, 0xC0DE, 0)]
    (launch,) = driver.launches
    # 132 SMs / 2 = 66 clusters, capped to the 60 resident ones: 120 CTAs in clusters of 2.
    assert launch["grid"] == (120, 1, 1) and launch["block"] == (256, 1, 1)
    assert launch["shared"] == c.layout_bytes + 20 and launch["stream"] == 0x7777
    assert launch["num_attrs"] == 1 and launch["attribute"] == (cu.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, 2, 1, 1)
    assert launch["function"] == 0xC0DE and launch["extra"] is None
    assert launch["params"] == (sfb, layout, d, 48, 4, 1)
    assert launch["maps"] == [a, b, sfa, d]
    assert [e[:2] for e in driver.encoded] == [(U8, a), (U8, b), (F32, sfa), (BF16, d)]

    # The same call again: nothing encoded or set up again, one more launch.
    entry(*args)
    assert len(driver.encoded) == 4 and len(driver.attributes) == 1 and len(driver.launches) == 2
    # New activations and output, same weights: only A, SFA and D are encoded.
    entry(0x11000, 0x21000, b, sfb, 0x51000, layout, 48, 4, 48, 132, 0x7777)
    assert [e[1] for e in driver.encoded[4:]] == [0x11000, 0x21000, 0x51000]


def test_errors_name_the_entry_point(fake_kernel) -> None:
    kernel, driver = fake_kernel
    entry = ce.CubinEntry(kernel, _constants(GemmType.NORMAL, 64, 32, 2112, 7168))
    driver.launch_statuses = [700]
    with pytest.raises(CudaError, match="cuLaunchKernelEx failed with CUDA error 700"):
        entry(1, 2, 3, 4, 5, None, 64, 1, 64, 132, 0)
    with pytest.raises(CudaError, match="dg_moe_sm90_fp8_gemm failed.*m=0"):
        entry(1, 2, 3, 4, 5, None, 0, 1, 64, 132, 0)


def test_a_thread_without_context_gets_the_primary_one(fake_kernel) -> None:
    """A launch prepared in one thread and repeated in another that made no CUDA call yet: the driver
    answers CUDA_ERROR_INVALID_CONTEXT, the device's primary context is made current, the launch retried."""
    kernel, driver = fake_kernel
    entry = ce.CubinEntry(kernel, _constants(GemmType.NORMAL, 64, 32, 2112, 7168))
    entry(1, 2, 3, 4, 5, None, 64, 1, 64, 132, 0)
    driver.launch_statuses = [cu.CUDA_ERROR_INVALID_CONTEXT]
    entry(1, 2, 3, 4, 5, None, 64, 1, 64, 132, 0)
    assert driver.made_current == [0] and len(driver.launches) == 3
