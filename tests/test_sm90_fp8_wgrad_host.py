"""The weight-gradient GEMM's host side on CPU: cost model and shared-memory formula, template and host
constants, the NVRTC entry's maps, grid and launch (through a stand-in driver), and the launcher's
arguments (operand and scale layouts, strides) for CPU tensors standing in for CUDA ones."""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path

import pytest
import torch

from dg_moe import device as dg_device
from dg_moe.errors import CudaError
from dg_moe.jit import cuda_driver as cu
from dg_moe.jit.cubin import CubinKernel
from dg_moe.jit.tensor_map import TensorMap2D
from dg_moe.kernels.sm90_fp8_gemm.constants import SMEM_BYTES_PER_BLOCK
from dg_moe.kernels.sm90_fp8_wgrad import cubin_entry as ce
from dg_moe.kernels.sm90_fp8_wgrad import launcher
from dg_moe.kernels.sm90_fp8_wgrad.heuristic import (
    SHARED_B_BLOCK_N,
    WIDE_BLOCK_N,
    WIDE_MAX_COLUMN_WORK,
    WgradConfig,
    choose_config,
    max_stages,
    smem_bytes,
)
from dg_moe.kernels.sm90_fp8_wgrad.host_constants import PARAMS_BYTES
from dg_moe.kernels.sm90_fp8_wgrad.variants import WgradType, config_for, deepseek_v3_variants, template_args
from dg_moe.layout.math import ceil_div
from dg_moe.reference.common import RECIPE_1D1D

from .cubin_fakes import FakeDriver
from .cubin_fakes import fake_kernel as make_fake_kernel

FP8 = torch.float8_e4m3fn
U8, F32 = cu.CU_TENSOR_MAP_DATA_TYPE_UINT8, cu.CU_TENSOR_MAP_DATA_TYPE_FLOAT32


def _config(block_n: int) -> WgradConfig:
    stages = max_stages(128, block_n)
    return WgradConfig(128, block_n, stages, smem_bytes(128, block_n, stages), 0.0)


def test_shared_memory_by_hand() -> None:
    # 128 x 128: a stage is A 16384 + B 16384 + SFA 512 + SFB 512 = 33792 bytes (33 KB, already a multiple
    # of 1024); six fit beside 12 barriers and the 1024-byte alignment slack, seven do not.
    assert smem_bytes(128, 128, 6) == 6 * 33792 + 96 + 1024 == 203872
    assert max_stages(128, 128) == 6 and smem_bytes(128, 128, 7) > SMEM_BYTES_PER_BLOCK
    # 128 x 64: 16384 + 8192 + 512 + 256 = 25344, padded to 25600; capped at 8 stages.
    assert smem_bytes(128, 64, 8) == 8 * 25600 + 128 + 1024 and max_stages(128, 64) == 8


@pytest.mark.parametrize("m,n,k,groups", [(4096, 7168, 4096, 1), (24576, 1536, 8192, 1), (4096, 7168, 1024, 8),
                                          (7168, 2048, 256, 32), (2112, 7168, 8192, 1)])
def test_deepseek_v3_shapes_run_128_wide_tiles(m, n, k, groups) -> None:
    config = choose_config(m, n, k, groups, 132)
    assert (config.block_m, config.block_n, config.num_stages) == (128, 128, 6)
    assert config == choose_config(m, n, k, groups, 132)  # deterministic


@pytest.mark.parametrize("m,n,waves_128,waves_152", [(7168, 2112, 8, 6), (576, 7168, 3, 2)])
def test_dense_fp8_calls_take_152_wide_tiles_where_they_save_waves(m, n, waves_128, waves_152) -> None:
    """v21's measured rule: 128 x 152 where its whole waves of column work are at most 0.97 of the model's
    tile's (the two cases measured 11 % and 22 % faster); at 0.99 (7168 x 16384, measured 4 % slower) and
    for K-grouped or BF16 calls the model's tile stays."""
    config = choose_config(m, n, 4096, 1, 132)
    assert (config.block_n, config.num_stages, config.share_b) == (WIDE_BLOCK_N, max_stages(128, 152), False)
    assert config.smem_bytes == smem_bytes(128, 152, config.num_stages) <= SMEM_BYTES_PER_BLOCK
    assert waves_152 * 152 <= WIDE_MAX_COLUMN_WORK * waves_128 * 128
    assert ceil_div(ceil_div(m, 128) * ceil_div(n, 152), 132) == waves_152
    assert ceil_div(ceil_div(m, 128) * ceil_div(n, 128), 132) == waves_128
    assert choose_config(7168, 16384, 4096, 1, 132).block_n == 128
    assert choose_config(m, n, 4096, 1, 132, bf16=True).block_n in (64, 128)
    assert choose_config(m, n, 4096, 3, 132).block_n in (64, 128)


def test_config_for_takes_the_k_grouped_rule_for_k_grouped_layouts_only() -> None:
    assert config_for(WgradType.NORMAL, 4096, 7168, 4096, 1, 132) == choose_config(4096, 7168, 4096, 1, 132)
    for wgrad_type in (WgradType.K_GROUPED, WgradType.K_GROUPED_PSUM):
        config = config_for(wgrad_type, 4096, 7168, 4096, 8, 132)
        assert config == choose_config(4096, 7168, 4096, 8, 132, k_grouped=True) and config.share_b
    assert config_for(WgradType.K_GROUPED, 4096, 7168, 4096, 8, 132, bf16=True).bf16
    with pytest.raises(TypeError, match="wgrad_type must be a WgradType"):
        config_for("KGrouped", 4096, 7168, 4096, 8, 132)


def test_a_problem_under_one_wave_takes_narrower_tiles() -> None:
    # 1024 x 1024: 64 tiles of 128 x 128 leave half of 132 SMs idle; 128 of 128 x 64 fill them.
    assert choose_config(1024, 1024, 4096, 1, 132).block_n == 64
    assert choose_config(1024, 1024, 4096, 1, 64).block_n == 128


def test_template_arguments() -> None:
    args = template_args(WgradType.K_GROUPED_PSUM, _config(64), 1001)
    assert args == {"SHAPE_N": 1001, "BLOCK_M": 128, "BLOCK_N": 64, "NUM_STAGES": 8,
                    "WGRAD_TYPE": "dg_moe::sm90_fp8_wgrad::WgradType::KGroupedPsum",
                    "OPERANDS": "dg_moe::sm90_fp8_wgrad::Operands::Fp8", "SHARE_B": 0,
                    "SMEM_BYTES": smem_bytes(128, 64, 8), "BLOCK_THREADS": 384, "PARAMS_BYTES": 48}
    variants = deepseek_v3_variants()
    assert len({tuple(sorted(v.items())) for v in variants}) == len(variants)
    assert {v["WGRAD_TYPE"].rsplit("::", 1)[1] for v in variants} == {t.value for t in WgradType}


def test_params_struct_is_the_kernels() -> None:
    assert ctypes.sizeof(ce.Params) == PARAMS_BYTES == 48
    assert [ce.Params.d_group_stride.offset, ce.Params.d_row_stride.offset, ce.Params.accumulate.offset] == [16, 24, 44]


def test_maps_grid_and_column_pairs() -> None:
    v = ce.Variant(WgradType.K_GROUPED, _config(128), 2112)
    a, b, sfa, sfb = ce.tensor_map_specs(v, 7168, 4096, 4096, 7168, 4096, 2112)
    assert a == TensorMap2D(U8, 4096, 7168, 4096, 128, 128, cu.CU_TENSOR_MAP_SWIZZLE_128B)
    assert b == TensorMap2D(U8, 4096, 2112, 4096, 128, 128, cu.CU_TENSOR_MAP_SWIZZLE_128B)
    assert sfa == TensorMap2D(F32, 7168, 32, 7168 * 4, 128, 1, cu.CU_TENSOR_MAP_SWIZZLE_NONE)
    assert sfb == TensorMap2D(F32, 2112, 32, 2112 * 4, 128, 1, cu.CU_TENSOR_MAP_SWIZZLE_NONE)
    # 8 groups x 56 x 17 tiles: one CTA per SM; 1 group x 1 x 17: 17 CTAs.
    assert ce.grid_size(v, 7168, 8, 132) == 132 and ce.grid_size(v, 100, 1, 132) == 17
    assert ce.column_pairs(0x1000, 0, 2112)
    assert not ce.column_pairs(0x1000, 7, 2112)  # d's groups start on odd elements
    assert not ce.column_pairs(0x1004, 0, 2112)  # d 4 bytes past an 8-byte boundary
    assert not ce.column_pairs(0x1000, 0, 1001)  # odd N: odd rows start 4 bytes off


@pytest.fixture
def fake_kernel(tmp_path: Path) -> tuple[CubinKernel, FakeDriver]:
    driver = FakeDriver(ce.Params, 4, 132)
    return make_fake_kernel(tmp_path, "sm90_fp8_wgrad", driver), driver


def test_a_cubin_launch_as_the_nvcc_entry_makes_it(fake_kernel) -> None:
    kernel, driver = fake_kernel
    entry = ce.CubinEntry(kernel, ce.Variant(WgradType.K_GROUPED_PSUM, _config(128), 2048))
    a, sfa, b, sfb, d, layout = 0x10000, 0x20000, 0x30000, 0x40000, 0x60000, 0x70000
    args = (a, 1024, sfa, 7168, b, 1024, sfb, 2048, 1, d, layout, 7168, 1024, 4, 7168 * 2048, 2048, 132, 0x7777)
    entry(*args)
    shared = smem_bytes(128, 128, 6)
    assert driver.attributes == [(cu.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared, 0xC0DE, 0)]
    (launch,) = driver.launches
    assert (launch["grid"], launch["block"], launch["shared"], launch["stream"]) == ((132, 1, 1), (384, 1, 1), shared,
                                                                                0x7777)
    assert launch["params"] == (d, layout, 7168 * 2048, 2048, 7168, 1024, 4, 1, 1)
    assert launch["maps"] == [a, b, sfa, sfb]
    assert [e[:2] for e in driver.encoded] == [(U8, a), (U8, b), (F32, sfa), (F32, sfb)]
    entry(*args)  # memoised: nothing encoded again
    assert len(driver.encoded) == 4 and len(driver.launches) == 2
    with pytest.raises(CudaError, match="dg_moe_sm90_fp8_wgrad failed.*sum_k=0"):
        entry(*args[:12], 0, *args[13:])


def test_normal_launch_passes_no_layout(fake_kernel) -> None:
    kernel, driver = fake_kernel
    entry = ce.CubinEntry(kernel, ce.Variant(WgradType.NORMAL, _config(64), 1001))
    entry(1 << 12, 256, 2 << 12, 4, 3 << 12, 256, 4 << 12, 1004, 0, 5 << 12, 0x99, 3, 256, 1, 0, 1001, 132, 0)
    (launch,) = driver.launches
    # One m-block x 16 n-blocks of 64; no accumulation, no layout; odd N: single-column stores.
    assert launch["grid"] == (16, 1, 1) and launch["params"] == (5 << 12, None, 0, 1001, 3, 256, 1, 0, 0)


# ---- the launcher's arguments, on CPU tensors (the entry is a recorder) ----------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self.calls: list[tuple] = []

    def entry(self, *key):
        self.keys.append(key)
        return lambda *args: self.calls.append(args)


@pytest.fixture
def recorded(monkeypatch) -> _Recorder:
    recorder = _Recorder()
    monkeypatch.setattr(launcher, "_entry", recorder.entry)
    monkeypatch.setattr(dg_device, "num_sms_for", lambda device: 132)
    monkeypatch.setattr(dg_device, "stream_handle", lambda device: 0x5EED)
    return recorder


def _fp8(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(FP8)


def test_k_major_keeps_k_major_views_and_transposes_row_major_operands() -> None:
    buffer = _fp8(96, 512)  # [MN, K], K contiguous
    view, pitch = launcher.k_major(buffer.mT)
    assert view.data_ptr() == buffer.data_ptr()
    assert pitch == 512
    row_major = _fp8(512, 96)  # [K, MN], MN contiguous
    copy, pitch = launcher.k_major(row_major)
    assert copy.shape == (96, 512) and copy.is_contiguous() and pitch == 512
    assert torch.equal(copy.view(torch.uint8), row_major.mT.contiguous().view(torch.uint8))


def test_k_grouped_fp8_calls_share_b_on_144_wide_tiles() -> None:
    """v21's measured rule: K-grouped FP8 calls with an even m-block count run 128 x 144 pairs sharing B;
    dense calls, odd m-block counts, BF16 operands and an odd SM count keep the cost model's tile."""
    shared = choose_config(4096, 7168, 4096, 8, 132, k_grouped=True)
    assert (shared.block_n, shared.share_b) == (SHARED_B_BLOCK_N, True) == (144, True)
    assert shared.num_stages == max_stages(128, 144) and shared.smem_bytes == smem_bytes(128, 144, shared.num_stages)
    for config in (choose_config(4096, 7168, 4096, 1, 132),
                   choose_config(4000 + 128, 7168, 4096, 8, 132, k_grouped=True),
                   choose_config(4096, 7168, 4096, 8, 132, bf16=True, k_grouped=True),
                   choose_config(4096, 7168, 4096, 8, 131, k_grouped=True)):
        assert not config.share_b and config.block_n in (64, 128)
    assert launcher.config_for(WgradType.K_GROUPED_PSUM, 7168, 2048, 4096, 8, 132).share_b
    assert not launcher.config_for(WgradType.NORMAL, 7168, 2048, 4096, 1, 132).share_b


def test_mn_major_keeps_row_major_operands_and_pads_the_rest() -> None:
    x = torch.randn(256, 96).to(torch.bfloat16)  # [K, MN], MN contiguous, rows 192 bytes apart
    same, pitch = launcher.mn_major(x)
    assert same.data_ptr() == x.data_ptr() and pitch == 192
    # K-major views are copied row-major; rows of 37 values (74 bytes) are padded to 80 bytes.
    for source, width in ((torch.randn(96, 256).to(torch.bfloat16).mT, 96),
                          (torch.randn(256, 37).to(torch.bfloat16), 37)):
        copy, pitch = launcher.mn_major(source)
        assert copy.data_ptr() != source.data_ptr() and copy.stride(1) == 1
        assert pitch == -(-width // 8) * 16 and copy.stride(0) * 2 == pitch
        assert torch.equal(copy, source)


def test_k_grouped_arguments(recorded) -> None:
    sum_k, m, n, groups = 512, 96, 40, 3
    a, b = (_fp8(sum_k, m), torch.rand(sum_k // 128, m)), (_fp8(n, sum_k).mT, torch.rand(sum_k // 128, n))
    d, c = torch.zeros(groups, m, n), torch.randn(groups, m, n)
    layout = torch.tensor([128, 0, 384], dtype=torch.int32)
    launcher.k_grouped_fp8_gemm_tn_contiguous_kernel(a, b, d, [128, 0, 384], layout, c, RECIPE_1D1D, "mn", False)
    assert recorded.keys == [(WgradType.K_GROUPED, m, n, sum_k // groups, groups, 132, False)]
    (args,) = recorded.calls
    # a row-major: a transposed copy, K-major; b a .mT view of a K-major buffer: used in place. Both scale
    # tensors [sum_K/128, MN] with MN a multiple of 4 are MN-major and aligned already: used in place.
    assert args[0] != a[0].data_ptr() and args[1] == sum_k
    assert args[4] == b[0].data_ptr() and args[5] == sum_k
    assert (args[2], args[3], args[6], args[7]) == (a[1].data_ptr(), m, b[1].data_ptr(), n)
    # A separate c is copied into d, which the kernel then accumulates into.
    assert args[8:] == (1, d.data_ptr(), layout.data_ptr(), m, sum_k, groups, m * n, n, 132, 0x5EED)
    assert torch.equal(d, c)


def test_k_grouped_psum_in_place_with_unaligned_scales(recorded) -> None:
    sum_k, m, n = 256, 30, 7
    a, b = (_fp8(sum_k, m), torch.rand(sum_k // 128, m)), (_fp8(sum_k, n), torch.rand(sum_k // 128, n))
    d = torch.empty(2, m, n)
    layout = torch.tensor([128, 256], dtype=torch.int32)
    launcher.k_grouped_fp8_gemm_tn_contiguous_kernel(a, b, d, [128, 128], layout, d, RECIPE_1D1D, "mn", True)
    assert recorded.keys[0][0] == WgradType.K_GROUPED_PSUM
    (args,) = recorded.calls
    # 30 and 7 rows of scales per K block are not 16-byte multiples: copied with columns padded to 32 and 8.
    assert args[2] != a[1].data_ptr() and (args[3], args[7]) == (32, 8)
    assert (args[8], args[9]) == (1, d.data_ptr())  # c is d: in place


def test_dense_wgrad_arguments(recorded) -> None:
    m, n, k = 70, 48, 384
    a, b = (_fp8(m, k), torch.rand(m, k // 128)), (_fp8(n, k), torch.rand(n, k // 128))
    d = torch.empty(m, n)
    launcher.fp8_gemm_nt_kernel(a, b, d, None, RECIPE_1D1D, "nk", False)
    assert recorded.keys == [(WgradType.NORMAL, m, n, k, 1, 132, False)]
    (args,) = recorded.calls
    assert (args[0], args[1], args[4], args[5]) == (a[0].data_ptr(), k, b[0].data_ptr(), k)
    assert (args[3], args[7]) == (72, 48)  # row-major scales converted MN-major, columns of align(M, 4)
    assert args[8:] == (0, d.data_ptr(), None, m, k, 1, 0, n, 132, 0x5EED)


# ---- BF16 operands ----------------------------------------------------------------------------------------------


def test_bf16_variants_have_no_scales_and_k_blocks_of_64() -> None:
    config = choose_config(4096, 7168, 4096, 8, 132, bf16=True)
    assert config.bf16 and config.block_n in (64, 128)
    # 128 x 128: A and B rows only, 32 KB a stage: 7 stages fit where FP8's scales leave room for 6.
    assert smem_bytes(128, 128, 7, bf16=True) == 7 * 32768 + 112 + 1024
    assert (max_stages(128, 128, bf16=True), max_stages(128, 128)) == (7, 6)
    args = template_args(WgradType.K_GROUPED, config, 7168)
    assert args["OPERANDS"] == "dg_moe::sm90_fp8_wgrad::Operands::Bf16"
    assert args["SMEM_BYTES"] == smem_bytes(128, config.block_n, config.num_stages, bf16=True)
    # Half the FP8 rate: a BF16 call is predicted slower than the FP8 one of the same shape.
    assert config.predicted_us > choose_config(4096, 7168, 4096, 8, 132).predicted_us


def test_bf16_cubin_launch_passes_the_operand_maps_twice(fake_kernel) -> None:
    kernel, driver = fake_kernel
    config = WgradConfig(128, 128, 6, smem_bytes(128, 128, 6, bf16=True), 0.0, bf16=True)
    entry = ce.CubinEntry(kernel, ce.Variant(WgradType.K_GROUPED, config, 2048))
    a, b, d, layout = 0x10000, 0x30000, 0x60000, 0x70000
    args = (a, 2048, None, 0, b, 2048, None, 0, 0, d, layout, 7168, 1024, 4, 7168 * 2048, 2048, 132, 0)
    entry(*args)
    (launch,) = driver.launches
    assert launch["maps"] == [a, b, a, b] and launch["shared"] == smem_bytes(128, 128, 6, bf16=True)
    # bfloat16 maps: 64 values (128 bytes) per box row.
    assert [e[:2] for e in driver.encoded] == [(cu.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, a),
                                               (cu.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, b)]  # each encoded once
    # MN-major: A [sum_K, M] with M inner, B [sum_K, N]; boxes of 64 indices x 64 K rows.
    specs = ce.tensor_map_specs(entry.variant, 7168, 1024, 14336, 0, 4096, 0)
    assert specs[:2] == (TensorMap2D(cu.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 7168, 1024, 14336, 64, 64,
                                     cu.CU_TENSOR_MAP_SWIZZLE_128B),
                         TensorMap2D(cu.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2048, 1024, 4096, 64, 64,
                                     cu.CU_TENSOR_MAP_SWIZZLE_128B))
    with pytest.raises(CudaError, match="scales given to a BF16 variant"):
        entry(a, 2048, 0x20000, 7168, *args[4:])


def test_bf16_k_grouped_arguments(recorded) -> None:
    sum_k, m, n, groups = 384, 96, 40, 2
    a = torch.randn(sum_k, m).to(torch.bfloat16)  # row-major, the layout the kernel reads: used in place
    b = torch.randn(n, sum_k).to(torch.bfloat16).mT  # a .mT view of a K-major buffer: copied row-major
    d = torch.zeros(groups, m, n)
    layout = torch.tensor([128, 256], dtype=torch.int32)
    launcher.k_grouped_bf16_gemm_tn_contiguous_kernel(a, b, d, [128, 256], layout, d, "mn", False)
    assert recorded.keys == [(WgradType.K_GROUPED, m, n, sum_k // groups, groups, 132, True)]
    (args,) = recorded.calls
    assert args[0] == a.data_ptr() and args[1] == m * 2  # row pitch in bytes
    assert args[4] != b.data_ptr() and args[5] == n * 2
    assert (args[2], args[3], args[6], args[7]) == (None, 0, None, 0)
    assert args[8:] == (1, d.data_ptr(), layout.data_ptr(), m, sum_k, groups, m * n, n, 132, 0x5EED)


# ---- B-sharing pairs ------------------------------------------------------------------------------------------


def test_b_sharing_pairs_launch_as_clusters_with_half_b_boxes(fake_kernel) -> None:
    kernel, driver = fake_kernel
    config = dataclasses.replace(_config(128), share_b=True)
    assert template_args(WgradType.NORMAL, config, 7168)["SHARE_B"] == 1
    v = ce.Variant(WgradType.NORMAL, config, 7168)
    # 7168 x 7168: 28 pairs of m-blocks x 56 n-blocks, 66 clusters of 2 on 132 SMs (131 SMs: 65).
    assert ce.grid_size(v, 7168, 1, 132) == 132 and ce.grid_size(v, 7168, 1, 131) == 130
    assert ce.grid_size(v, 256, 1, 132) == 112  # one pair x 56 n-blocks
    _, b, _, _ = ce.tensor_map_specs(v, 7168, 4096, 4096, 7168, 4096, 7168)
    assert (b.box_inner, b.box_outer) == (128, 64)  # half of B's 128 rows per CTA
    entry = ce.CubinEntry(kernel, v)
    args = (0x10000, 4096, 0x20000, 7168, 0x30000, 4096, 0x40000, 7168, 1, 0x60000, None, 7168, 4096, 1, 0,
            7168, 132, 0)
    entry(*args)
    (launch,) = driver.launches
    assert launch["grid"] == (132, 1, 1) and launch["attribute"][1:] == (2, 1, 1)
    with pytest.raises(CudaError, match="even number of m-blocks"):
        entry(*args[:11], 7168 - 128, *args[12:])  # 55 m-blocks

