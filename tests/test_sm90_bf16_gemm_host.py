"""The SM90 BF16 GEMM's host side on CPU: the cost model's choices against the kernel's limits, the host
constants NVRTC compiles static_assert (accepted as computed, rejected when off by one), the cubin
entry's tensor maps and launch through a stand-in driver, and the launcher's operand rules; for the
BF16 and FP32 D epilogues, with and without accumulation into C."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

import dg_moe
from dg_moe import jit, reference
from dg_moe.errors import CompileError, CudaError, KernelNotAvailableError
from dg_moe.jit import cuda_driver as cu
from dg_moe.jit.tensor_map import TensorMap2D, TensorMap3D
from dg_moe.kernels.sm90_bf16_gemm import cubin_entry as ce
from dg_moe.kernels.sm90_bf16_gemm import host_constants as hc
from dg_moe.kernels.sm90_bf16_gemm import launcher
from dg_moe.kernels.sm90_bf16_gemm.constants import (
    BF16_D,
    BLOCK_K,
    K_MAJOR,
    SMEM_BYTES_PER_BLOCK,
    Epilogue,
    GemmType,
    Majors,
)
from dg_moe.kernels.sm90_bf16_gemm.heuristic import (
    DENSE_SHORT_ROWS,
    MAX_STAGES,
    MIN_STAGES,
    SHARED_B_BLOCK_N,
    SHORT_ROWS,
    config_for,
    fits_registers,
    max_stages,
    smem_bytes,
)
from dg_moe.kernels.sm90_bf16_gemm.variants import (
    CI_EPILOGUE_SHAPES,
    CI_MAJOR_SHAPES,
    CI_SHAPES,
    FAMILY,
    ci_variants,
    template_args,
)
from dg_moe.kernels.sm90_fp8_gemm.heuristic import GemmConfig

from .cubin_fakes import FakeDriver, fake_kernel

BF16, FP32 = cu.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, cu.CU_TENSOR_MAP_DATA_TYPE_FLOAT32
SW32, SW64, SW128 = cu.CU_TENSOR_MAP_SWIZZLE_32B, cu.CU_TENSOR_MAP_SWIZZLE_64B, cu.CU_TENSOR_MAP_SWIZZLE_128B
NK = [(2112, 7168), (24576, 1536), (4096, 7168), (7168, 2048), (576, 200), (7232, 2176)]
FP32_D = Epilogue(d_float=True)
BF16_C = Epilogue(accumulate=True)
FP32_C = Epilogue(d_float=True, accumulate=True)
EPILOGUES = [BF16_D, FP32_D, BF16_C, FP32_C]


def _config(block_m: int, block_n: int, multicast: int = 1, multicast_b: bool = False,
            epilogue: Epilogue = BF16_D) -> GemmConfig:
    stages = max_stages(block_m, block_n, epilogue)
    return GemmConfig(block_m, block_n, stages, multicast, smem_bytes(block_m, block_n, stages, epilogue), 0.0,
                      multicast_b)


def test_block_k_is_one_swizzle_row() -> None:
    assert BLOCK_K * 2 == 128


@pytest.mark.parametrize("block_m,block_n,fits", [
    (64, 256, True), (128, 256, True), (256, 128, True), (256, 256, False),
])
def test_fits_registers(block_m, block_n, fits):
    assert fits_registers(block_m, block_n) is fits


@pytest.mark.parametrize("block_m,block_n", [(64, 16), (64, 256), (128, 128), (128, 256), (256, 128)])
def test_max_stages_is_the_most_that_fit(block_m, block_n):
    stages = max_stages(block_m, block_n)
    assert smem_bytes(block_m, block_n, stages) <= SMEM_BYTES_PER_BLOCK
    assert stages == MAX_STAGES or smem_bytes(block_m, block_n, stages + 1) > SMEM_BYTES_PER_BLOCK
    assert stages >= 3


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("rows", [1, 16, 64, 128, 129, 1024, 4096])
def test_choices_fit_and_respect_the_layout(n, k, rows):
    for gemm_type in GemmType:
        groups = 1 if gemm_type == GemmType.NORMAL else 8
        config = config_for(gemm_type, rows, n, k, groups, 132)
        assert fits_registers(config.block_m, config.block_n)
        assert config.smem_bytes == smem_bytes(config.block_m, config.block_n, config.num_stages)
        assert config.smem_bytes <= SMEM_BYTES_PER_BLOCK
        if gemm_type in (GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM):
            assert config.block_m <= 128  # groups start on 128-row boundaries
        if rows <= 128:
            assert config.block_m <= 128
        if (gemm_type == GemmType.MASKED and rows <= SHORT_ROWS) or \
                (gemm_type == GemmType.NORMAL and rows <= DENSE_SHORT_ROWS):
            assert config.block_m == 64
        if config.multicast == 2:
            assert config.multicast_b and gemm_type in (GemmType.CONTIGUOUS_PSUM, GemmType.NORMAL)
        assert config == config_for(gemm_type, rows, n, k, groups, 132)  # deterministic
    assert config_for(GemmType.CONTIGUOUS_PSUM, 4096, n, k, 8, 131).multicast == 1  # clusters need an even count


def test_prefix_sum_groups_of_256_rows_share_b_at_small_k() -> None:
    # 32 x 256 rows at 7168 x 2048: the shape where sharing B measured 452.8 us against 478.1 (H100).
    config = config_for(GemmType.CONTIGUOUS_PSUM, 256, 7168, 2048, 32, 132)
    assert (config.block_m, config.multicast, config.multicast_b) == (128, 2, True)
    assert config_for(GemmType.CONTIGUOUS_PSUM, 128, 7168, 2048, 32, 132).multicast == 1


@pytest.mark.parametrize("gemm_type,rows,n,k,groups", [
    (GemmType.NORMAL, 4096, 24576, 1536, 1), (GemmType.CONTIGUOUS_PSUM, 256, 7168, 2048, 32),
    (GemmType.NORMAL, 4096, 2112, 7168, 1)])
def test_short_k_and_192_wide_calls_share_b_on_192_wide_tiles(gemm_type, rows, n, k, groups) -> None:
    """v22's measured cases (128 x 192 sharing B 5-12 % faster than the model's tile); K = 7168 with a
    256-wide choice, MN-major B, fewer than a wave of shared tiles and an odd SM count keep the model's."""
    config = config_for(gemm_type, rows, n, k, groups, 132)
    assert (config.block_m, config.block_n, config.multicast, config.multicast_b) == (128, SHARED_B_BLOCK_N, 2, True)
    assert config.smem_bytes == smem_bytes(128, 192, config.num_stages) <= SMEM_BYTES_PER_BLOCK
    assert not config_for(gemm_type, rows, n, k, groups, 131).multicast_b
    mn_major_b = config_for(gemm_type, rows, n, k, groups, 132, majors=Majors(b_mn=True))
    assert not (mn_major_b.multicast_b and mn_major_b.block_n == SHARED_B_BLOCK_N)
    assert config_for(GemmType.NORMAL, 4096, 4096, 7168, 1, 132).block_n == 256
    assert not config_for(GemmType.NORMAL, 4096, 4096, 7168, 1, 132).multicast_b
    assert not config_for(GemmType.NORMAL, 256, 7168, 2048, 1, 132).multicast_b


def test_hand_derived_host_constants() -> None:
    c = hc.host_constants(GemmType.NORMAL, _config(128, 128), 4096, 7168)
    # 6 stages of (128 + 128) rows x 128 bytes, a 32 KB D tile, 12 barriers, 1024 bytes of alignment slack.
    assert c.layout_bytes == 6 * 32768 + 32768 + 12 * 8 + 1024
    assert (c.box_rows_a, c.box_rows_b, c.d_span_bytes, c.d_span_cols, c.block_threads) == (128, 128, 128, 64, 384)
    assert (c.pair_m, c.num_n_slots) == (1, 32)
    c = hc.host_constants(GemmType.CONTIGUOUS_PSUM, _config(128, 256, 2, True), 4096, 7168)
    assert (c.box_rows_a, c.box_rows_b, c.pair_m, c.num_n_slots, c.block_threads) == (128, 128, 2, 16, 384)
    assert c.group_table and c.max_dynamic_shared == SMEM_BYTES_PER_BLOCK
    c = hc.host_constants(GemmType.CONTIGUOUS, _config(128, 128, 2), 7232, 2176)
    assert (c.box_rows_a, c.box_rows_b, c.pair_m, c.num_n_slots) == (64, 128, 1, 29)  # 57 n-blocks padded to 58
    c = hc.host_constants(GemmType.MASKED, _config(64, 16), 7168, 2048)
    assert (c.box_rows_a, c.d_span_bytes, c.block_threads, c.num_n_slots) == (64, 32, 256, 448)


def test_fp32_d_tiles_leave_room_for_min_stages() -> None:
    # A 128 KB FP32 D tile leaves room for two stages of 128 x 256 or 256 x 128: never a candidate.
    assert max_stages(128, 256, FP32_D) == max_stages(256, 128, FP32_C) == 2
    assert max_stages(128, 128, FP32_C) == 5 and max_stages(64, 256, FP32_D) == 4


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=str)
@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("rows", [1, 64, 129, 1024, 4096])
def test_epilogue_choices_fit(epilogue, n, k, rows):
    for gemm_type in [GemmType.NORMAL] if epilogue.accumulate else list(GemmType):
        groups = 1 if gemm_type == GemmType.NORMAL else 8
        config = config_for(gemm_type, rows, n, k, groups, 132, epilogue)
        assert fits_registers(config.block_m, config.block_n)
        assert config.num_stages >= MIN_STAGES
        assert config.smem_bytes == smem_bytes(config.block_m, config.block_n, config.num_stages, epilogue)
        assert config.smem_bytes <= SMEM_BYTES_PER_BLOCK
        assert config == config_for(gemm_type, rows, n, k, groups, 132, epilogue)  # deterministic


def test_epilogue_template_args() -> None:
    config = _config(128, 128, epilogue=FP32_C)
    args = template_args(GemmType.NORMAL, config, 2112, 7168, FP32_C)
    assert (args["D_TYPE"], args["ACCUMULATE"], args["D_SPAN_COLS"]) == ("float", True, 32)
    # 5 stages of (128 + 128) rows x 128 bytes, a 64 KB FP32 D tile, 10 stage barriers and one C barrier per
    # math warpgroup, 1024 bytes of alignment slack.
    assert args["SMEM_BYTES"] == 5 * 32768 + 65536 + 12 * 8 + 1024
    plain = template_args(GemmType.NORMAL, config, 2112, 7168)
    assert (plain["D_TYPE"], plain["ACCUMULATE"]) == ("__nv_bfloat16", False)
    # Every epilogue is its own variant (the template arguments are the JIT cache key).
    keys = {tuple(sorted(template_args(GemmType.NORMAL, _config(64, 32, epilogue=e), 2112, 7168, e).items()))
            for e in EPILOGUES}
    assert len(keys) == len(EPILOGUES)
    c = hc.host_constants(GemmType.NORMAL, _config(64, 32, epilogue=FP32_C), 2112, 7168, FP32_C)
    # 8 stages of 96 rows x 128 bytes, an 8 KB D tile, 16 stage barriers and one C barrier (one warpgroup).
    assert c.layout_bytes == 8 * 12288 + 8192 + 17 * 8 + 1024
    with pytest.raises(ValueError, match="only Normal GEMMs accumulate C"):
        template_args(GemmType.MASKED, _config(64, 32, epilogue=BF16_C), 2112, 7168, BF16_C)


HOST_VARIANTS = [
    (GemmType.CONTIGUOUS_PSUM, _config(128, 256, 2, True), 4096, 7168),
    (GemmType.NORMAL, _config(256, 128, 2), 2112, 7168),
    (GemmType.NORMAL, _config(128, 128, 2, epilogue=FP32_C), 2112, 7168, FP32_C),
    (GemmType.MASKED, _config(64, 16, epilogue=FP32_D), 7168, 2048, FP32_D),
]


@pytest.mark.nvrtc
@pytest.mark.parametrize("variant", HOST_VARIANTS,
                         ids=["psum-128x256-mcB", "normal-256x128-mcA", "normal-fp32-c-mcA", "masked-64x16-fp32"])
def test_nvrtc_accepts_the_mirror(nvrtc_cache: Path, variant) -> None:
    assert jit.compile_only(FAMILY, template_args(*variant)).is_file()


@pytest.mark.nvrtc
@pytest.mark.parametrize(
    "name",
    ["SMEM_BYTES", "BOX_ROWS_A", "BOX_ROWS_B", "D_SPAN_COLS", "BLOCK_THREADS", "PAIR_M", "NUM_N_SLOTS", "PARAMS_BYTES"],
)
def test_nvrtc_rejects_a_wrong_constant(nvrtc_cache: Path, name: str) -> None:
    args = template_args(*HOST_VARIANTS[0])
    args[name] = args[name] + (1 if name != "PAIR_M" else -1)
    with pytest.raises(CompileError, match="static assertion failed"):
        jit.compile_only(FAMILY, args)


def test_ci_shapes_cover_every_layout() -> None:
    assert {shape[0] for shape in CI_SHAPES} == set(GemmType)


@pytest.mark.nvrtc
@pytest.mark.parametrize("name,wrong", [
    ("D_SPAN_COLS", 64),  # a 128-byte slab of BF16, not of FP32
    ("SMEM_BYTES", smem_bytes(128, 128, 5, FP32_D)),  # without C's two barriers
])
def test_nvrtc_rejects_an_epilogue_drift(nvrtc_cache: Path, name: str, wrong: int) -> None:
    args = template_args(*HOST_VARIANTS[2])
    assert args[name] != wrong
    args[name] = wrong
    with pytest.raises(CompileError, match="static assertion failed"):
        jit.compile_only(FAMILY, args)


def test_ci_epilogue_shapes_cover_every_layout_and_c() -> None:
    assert {shape[0] for shape in CI_EPILOGUE_SHAPES if shape[5].d_float} == set(GemmType)
    assert {shape[5] for shape in CI_EPILOGUE_SHAPES if shape[5].accumulate} == {BF16_C, FP32_C}


MN_A, MN_B, MN_AB = Majors(a_mn=True), Majors(b_mn=True), Majors(a_mn=True, b_mn=True)


def test_majors_template_args_and_rules() -> None:
    config = _config(128, 128)
    plain = template_args(GemmType.NORMAL, config, 2112, 7168)
    assert (plain["MN_MAJOR_A"], plain["MN_MAJOR_B"]) == (False, False)
    tn = template_args(GemmType.NORMAL, config, 2112, 7168, majors=MN_AB)
    assert (tn["MN_MAJOR_A"], tn["MN_MAJOR_B"]) == (True, True)
    # The majors change neither the shared layout nor the boxes' row counts: same host constants.
    assert {k: v for k, v in tn.items() if not k.startswith("MN_MAJOR")} == \
        {k: v for k, v in plain.items() if not k.startswith("MN_MAJOR")}
    with pytest.raises(ValueError, match="only Normal GEMMs read an MN-major A"):
        template_args(GemmType.CONTIGUOUS, config, 2112, 7168, majors=MN_A)
    with pytest.raises(ValueError, match="masked GEMMs read a K-major B only"):
        template_args(GemmType.MASKED, _config(64, 64), 2112, 7168, majors=MN_B)


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("rows", [1, 64, 300, 4096])
def test_mn_major_b_gets_whole_chunk_tiles(n, k, rows) -> None:
    """An MN-major B's tile is whole 64-wide chunks, and a B-sharing pair's half of it too."""
    for gemm_type in (GemmType.NORMAL, GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM):
        config = config_for(gemm_type, rows, n, k, 8, 132, majors=MN_B)
        assert config.block_n % 64 == 0
        assert not config.multicast_b or config.block_n % 128 == 0
    # A K-major B keeps every width, an MN-major A changes nothing.
    assert config_for(GemmType.NORMAL, 16, 2112, 7168, 1, 132, majors=MN_A) == \
        config_for(GemmType.NORMAL, 16, 2112, 7168, 1, 132)


def test_ci_major_shapes_cover_every_major_op() -> None:
    majors = {(shape[0], shape[6]) for shape in CI_MAJOR_SHAPES}
    assert {(GemmType.NORMAL, MN_A), (GemmType.NORMAL, MN_B), (GemmType.NORMAL, MN_AB)} <= majors
    assert any(t in (GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM) and m == MN_B for t, m in majors)
    assert sum(args["MN_MAJOR_A"] or args["MN_MAJOR_B"] for args in ci_variants()) == len(CI_MAJOR_SHAPES)


def test_params_struct_is_the_kernels() -> None:
    assert ctypes.sizeof(ce.Params) == hc.PARAMS_BYTES == 32
    assert [ce.Params.m.offset, ce.Params.d_stride.offset, ce.Params.group_table.offset] == [16, 24, 28]


def test_tensor_maps() -> None:
    # make_tensor_map_2d(map, dtype, base, inner, outer, row_stride_bytes, box_inner, box_outer, swizzle):
    # A (K, rows) box 64 x kBoxRowsA; B (K, G * N); D (N, rows) box kSpanCols x 64; strides in bytes.
    # Without accumulation the fourth map, C's, is D's (the kernel reads it only when accumulating).
    c = hc.host_constants(GemmType.NORMAL, _config(64, 32), 2112, 7168)
    d_map = TensorMap2D(BF16, 2112, 100, 4224, 32, 64, SW64)
    assert ce.tensor_map_specs(c, 100, 1, 7168, 7168, 2112) == (
        TensorMap2D(BF16, 7168, 100, 14336, 64, 64, SW128),
        TensorMap2D(BF16, 7168, 2112, 14336, 64, 32, SW128),
        d_map,
        d_map,
    )
    # Masked: A and D hold G * max_m rows; row strides of views into wider buffers pass through.
    c = hc.host_constants(GemmType.MASKED, _config(64, 16), 7168, 2048)
    a, b, d, _ = ce.tensor_map_specs(c, 48, 4, 2056, 2048, 7200)
    assert (a.outer, a.row_stride_bytes, b.outer, d.outer, d.row_stride_bytes) == (192, 4112, 4 * 7168, 192, 14400)
    assert (d.box_inner, d.swizzle) == (16, SW32)
    # B-sharing clusters load half of B's tile per CTA.
    c = hc.host_constants(GemmType.CONTIGUOUS_PSUM, _config(128, 256, 2, True), 4096, 7168)
    a, b, d, _ = ce.tensor_map_specs(c, 1024, 8, 7168, 7168, 4096)
    assert (a.box_outer, b.box_outer, b.outer, d.box_inner) == (128, 128, 8 * 4096, 64)


def test_tensor_maps_of_fp32_d_and_c() -> None:
    # FP32 D: 4-byte elements, slabs of 32 columns (128 bytes) and 64 rows; C has D's boxes and swizzle over
    # its own base and row stride, so it lands in the D tile's layout.
    c = hc.host_constants(GemmType.NORMAL, _config(128, 128, epilogue=FP32_C), 2112, 7168, FP32_C)
    assert (c.d_span_bytes, c.d_span_cols) == (128, 32)
    _, _, d, c_map = ce.tensor_map_specs(c, 300, 1, 7168, 7168, 2112, FP32_C, 2152)
    assert d == TensorMap2D(FP32, 2112, 300, 2112 * 4, 32, 64, SW128)
    assert c_map == TensorMap2D(FP32, 2112, 300, 2152 * 4, 32, 64, SW128)
    # BF16 C: D's BF16 map over C's stride; a 16-wide FP32 tile: one 64-byte slab.
    c = hc.host_constants(GemmType.NORMAL, _config(128, 256, epilogue=BF16_C), 4096, 7168, BF16_C)
    _, _, d, c_map = ce.tensor_map_specs(c, 64, 1, 7168, 7168, 4096, BF16_C, 4096)
    assert d == c_map == TensorMap2D(BF16, 4096, 64, 8192, 64, 64, SW128)
    c = hc.host_constants(GemmType.MASKED, _config(64, 16, epilogue=FP32_D), 7168, 2048, FP32_D)
    assert (c.d_span_bytes, c.d_span_cols) == (64, 16)
    _, _, d, c_map = ce.tensor_map_specs(c, 48, 4, 2048, 2048, 7168, FP32_D)
    assert d == c_map == TensorMap2D(FP32, 7168, 192, 7168 * 4, 16, 64, SW64)


def test_tensor_maps_of_mn_major_operands() -> None:
    # make_tensor_map_2d(map, dtype, base, inner, outer, ...): an MN-major A is [K, M], M inner, in boxes of
    # 64 indices x 64 K rows; make_tensor_map_3d: an MN-major B is G matrices [K, N], K * b_stride apart.
    c = hc.host_constants(GemmType.NORMAL, _config(128, 256), 4096, 7168)
    a, b, d, _ = ce.tensor_map_specs(c, 1000, 1, 1008, 4096, 4096, majors=MN_AB)
    assert a == TensorMap2D(BF16, 1000, 7168, 2016, 64, 64, SW128)
    assert b == TensorMap3D(BF16, 4096, 7168, 8192, 64, 64, SW128, depth=1, depth_stride_bytes=7168 * 8192)
    assert d == TensorMap2D(BF16, 4096, 1000, 8192, 64, 64, SW128)
    # Grouped: B is a stack of 8; A stays K-major.
    c = hc.host_constants(GemmType.CONTIGUOUS_PSUM, _config(128, 256, 2, True), 4096, 2120)
    a, b, _, _ = ce.tensor_map_specs(c, 1024, 8, 2120, 4096, 4096, majors=MN_B)
    assert a == TensorMap2D(BF16, 2120, 1024, 4240, 64, 128, SW128)
    assert b == TensorMap3D(BF16, 4096, 2120, 8192, 64, 64, SW128, depth=8, depth_stride_bytes=2120 * 8192)


def test_a_mn_major_launch_encodes_a_3d_map(tmp_path: Path) -> None:
    driver = FakeDriver(ce.Params, 4, 132)
    kernel = fake_kernel(tmp_path, FAMILY, driver)
    c = hc.host_constants(GemmType.CONTIGUOUS, _config(128, 128), 4096, 7168)
    entry = ce.CubinEntry(kernel, c, majors=MN_B)
    entry(0x10000, 0x20000, 0x30000, None, 0x40000, 1024, 8, 7168, 4096, 4096, 0, 132, 0)
    # (dtype, base, dims, strides, box, swizzle) of A, B, D.
    assert driver.encoded[1] == (BF16, 0x20000, (4096, 7168, 8), (8192, 7168 * 8192), (64, 64, 1), SW128)
    assert driver.encoded[0][2:5] == ((7168, 1024), (14336,), (64, 128))


def test_a_launch_as_the_nvcc_entry_makes_it(tmp_path: Path) -> None:
    driver = FakeDriver(ce.Params, 4, 60)
    kernel = fake_kernel(tmp_path, FAMILY, driver)
    c = hc.host_constants(GemmType.CONTIGUOUS_PSUM, _config(128, 256, 2, True), 4096, 7168)
    entry = ce.CubinEntry(kernel, c)
    a, b, d, layout = 0x10000, 0x20000, 0x30000, 0x40000
    entry(a, b, d, None, layout, 1024, 8, 7168, 7168, 4096, 0, 132, 0x7777)
    assert driver.attributes == [(cu.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, SMEM_BYTES_PER_BLOCK, 0xC0DE, 0)]
    (launch,) = driver.launches
    # 66 clusters of 2 capped to the 60 resident ones; the group table (9 words) follows the layout.
    assert (launch["grid"], launch["block"], launch["attribute"][1]) == ((120, 1, 1), (384, 1, 1), 2)
    assert launch["shared"] == c.layout_bytes + 36 and launch["stream"] == 0x7777
    assert launch["params"] == (layout, d, 1024, 8, 4096, 1)
    assert launch["maps"] == [a, b, d, d]  # C's map is D's: one encoding serves both
    entry(a, b, d, None, layout, 1024, 8, 7168, 7168, 4096, 0, 132, 0x7777)  # memoised: nothing encoded again
    assert len(driver.encoded) == 3 and len(driver.launches) == 2
    with pytest.raises(CudaError, match="dg_moe_sm90_bf16_gemm failed.*m=0"):
        entry(a, b, d, None, layout, 0, 8, 7168, 7168, 4096, 0, 132, 0x7777)


@pytest.mark.parametrize("in_place", [False, True])
def test_an_accumulating_launch(tmp_path: Path, in_place: bool) -> None:
    driver = FakeDriver(ce.Params, 4, 132)
    kernel = fake_kernel(tmp_path, FAMILY, driver)
    consts = hc.host_constants(GemmType.NORMAL, _config(128, 128, epilogue=FP32_C), 2112, 7168, FP32_C)
    entry = ce.CubinEntry(kernel, consts, FP32_C)
    a, b, d = 0x10000, 0x20000, 0x30000
    c, c_stride = (d, 2112) if in_place else (0x50000, 2120)
    entry(a, b, d, c, None, 300, 1, 7168, 7168, 2112, c_stride, 132, 0x7777)
    (launch,) = driver.launches
    # 3 m-blocks x 17 n-blocks = 51 tiles: 51 CTAs of 384 threads; no group table for Normal.
    assert (launch["grid"], launch["block"], launch["shared"]) == ((51, 1, 1), (384, 1, 1), consts.layout_bytes)
    assert launch["params"] == (None, d, 300, 1, 2112, 0)
    assert launch["maps"] == [a, b, d, c]
    d_spec, c_spec = driver.encoded[2], driver.encoded[-1]
    assert d_spec[0] == c_spec[0] == FP32 and c_spec[1] == c and c_spec[3] == (c_stride * 4,)
    assert len(driver.encoded) == (3 if in_place else 4)  # in place, C's map is D's: encoded once
    with pytest.raises(CudaError, match="c=None"):
        entry(a, b, d, None, None, 300, 1, 7168, 7168, 2112, 0, 132, 0x7777)


@pytest.mark.parametrize("shape,strides,expected", [
    ((4, 64), (64, 1), 64),
    ((4, 64), (72, 1), 72),  # a row slice of a wider buffer
    ((1, 64), (1, 1), 64),  # one row: any stride, read as K
    ((3, 4, 64), (256, 64, 1), 64),
    ((3, 4, 64), (512, 64, 1), None),  # groups not back to back
    ((4, 64), (1, 4), None),  # column-major: not K-major
    ((4, 64), (32, 1), None),  # overlapping rows
])
def test_row_stride(shape, strides, expected) -> None:
    t = torch.empty_strided(shape, strides, dtype=torch.bfloat16)
    assert launcher.row_stride(t) == expected


def test_kernel_rows_name_the_rule() -> None:
    with pytest.raises(KernelNotAvailableError, match=r"bf16_gemm_nt: .*a with strides \(1, 4\).*contiguous"):
        launcher.kernel_rows("bf16_gemm_nt", "a", torch.empty(64, 4, dtype=torch.bfloat16).T)
    with pytest.raises(KernelNotAvailableError, match="multiple of 8.*pad K"):
        launcher.kernel_rows("bf16_gemm_nt", "b", torch.empty(4, 60, dtype=torch.bfloat16))
    with pytest.raises(KernelNotAvailableError, match="16-byte aligned"):
        launcher.kernel_rows("bf16_gemm_nt", "a", torch.empty(4, 72, dtype=torch.bfloat16)[:, 4:68])
    assert launcher.kernel_rows("bf16_gemm_nt", "a", torch.empty(4, 72, dtype=torch.bfloat16)[:, 8:72]) == 72


def test_kernel_rows_of_fp32_d_and_c() -> None:
    """A float32 row needs 4 elements per 16 bytes, not 8; c is held to d's rule, named as c."""
    assert launcher.kernel_rows("bf16_gemm_nt", "d", torch.empty(4, 12)) == 12
    assert launcher.kernel_rows("bf16_gemm_nt", "c", torch.empty(4, 20)[:, 4:16]) == 20
    with pytest.raises(KernelNotAvailableError, match=r"d \(torch.float32\) rows of 6.*multiple of 4.*pad N"):
        launcher.kernel_rows("bf16_gemm_nt", "d", torch.empty(4, 6))
    with pytest.raises(KernelNotAvailableError, match=r"c \(torch.float32\) rows of 8 elements 10 apart"):
        launcher.kernel_rows("bf16_gemm_nt", "c", torch.empty(4, 10)[:, :8])
    with pytest.raises(KernelNotAvailableError, match="c at an address not 16-byte aligned"):
        launcher.kernel_rows("bf16_gemm_nt", "c", torch.empty(4, 16)[:, 2:14])
    with pytest.raises(KernelNotAvailableError, match=r"bf16_gemm_nt: .*c with strides \(1, 4\).*c.contiguous"):
        launcher.kernel_rows("bf16_gemm_nt", "c", torch.empty(8, 4).T)


def test_operand_rows_reads_either_major() -> None:
    op = "bf16_gemm_nt"
    a = torch.empty(100, 72, dtype=torch.bfloat16)
    assert launcher.operand_rows(op, "a", a, "M") == (False, 72)
    # [K, M] storage (rows padded to 104) seen as [M, K]: MN-major, rows of M 104 apart.
    stored = torch.empty(72, 104, dtype=torch.bfloat16)[:, :100]
    assert launcher.operand_rows(op, "a", stored.T, "M") == (True, 104)
    # [G, K, N] seen as [G, N, K]: MN-major when the groups are back to back.
    b = torch.empty(3, 200, 256, dtype=torch.bfloat16)
    assert launcher.operand_rows(op, "b", b.transpose(1, 2), "N") == (True, 256)
    # One row reads K-major (either stride is 1); MN-major rows must be 16 bytes apart, named along M.
    assert launcher.operand_rows(op, "a", torch.empty(1, 64, dtype=torch.bfloat16), "M") == (False, 64)
    with pytest.raises(KernelNotAvailableError, match="the stride a multiple of 8.*pad M"):
        launcher.operand_rows(op, "a", torch.empty(64, 100, dtype=torch.bfloat16).T, "M")
    with pytest.raises(KernelNotAvailableError, match=r"strides \(2, 256\).*contiguous"):
        launcher.operand_rows(op, "a", torch.empty_strided((64, 128), (2, 256), dtype=torch.bfloat16), "M")


def test_transposed_ops_run_the_nt_kernel_on_views(monkeypatch) -> None:
    """Each transposed op launches the nt form with the majors its stored operands give."""
    seen = []
    monkeypatch.setattr(launcher, "_entry", lambda *key: seen.append(key[-1]) or (lambda *args: None))
    monkeypatch.setattr(launcher._device, "num_sms_for", lambda device: 132)
    monkeypatch.setattr(launcher._device, "stream_handle", lambda device: 0)
    m, n, k = 64, 128, 256
    stored = {"nt": ((m, k), (n, k)), "nn": ((m, k), (k, n)), "tn": ((k, m), (k, n)), "tt": ((k, m), (n, k))}
    for op, (a_shape, b_shape) in stored.items():
        a, b = torch.empty(a_shape, dtype=torch.bfloat16), torch.empty(b_shape, dtype=torch.bfloat16)
        getattr(launcher, f"bf16_gemm_{op}_kernel")(a, b, torch.empty(m, n, dtype=torch.bfloat16), None, "nk")
    assert seen == [K_MAJOR, MN_B, MN_AB, MN_A]
    b = torch.empty(4, k, n, dtype=torch.bfloat16)
    launcher.m_grouped_bf16_gemm_nn_contiguous_kernel(torch.empty(512, k, dtype=torch.bfloat16), b,
                                                      torch.empty(512, n, dtype=torch.bfloat16),
                                                      torch.zeros(512, dtype=torch.int32), "nk", False)
    assert seen[-1] == MN_B


def test_k_major_only_operands_name_the_rule() -> None:
    a = torch.empty(256, 128, dtype=torch.bfloat16).T  # [M, K] stored [K, M]
    b = torch.empty(2, 64, 128, dtype=torch.bfloat16)
    with pytest.raises(KernelNotAvailableError, match=r"a stored \[K, M\].*grouped.*a.contiguous"):
        launcher.m_grouped_bf16_gemm_nt_contiguous_kernel(a, b, torch.empty(128, 64, dtype=torch.bfloat16),
                                                          torch.zeros(128, dtype=torch.int32), "nk", False)
    x = torch.empty(2, 32, 128, dtype=torch.bfloat16)
    with pytest.raises(KernelNotAvailableError, match=r"b stored \[G, K, N\].*masked.*b.contiguous"):
        launcher.m_grouped_bf16_gemm_nt_masked_kernel(x, b.transpose(1, 2).contiguous().transpose(1, 2),
                                                      torch.empty(2, 32, 64, dtype=torch.bfloat16),
                                                      torch.zeros(2, dtype=torch.int32), 16, "nk")


def test_epilogue_for() -> None:
    d16, d32 = torch.empty(4, 8, dtype=torch.bfloat16), torch.empty(4, 8)
    assert launcher.epilogue_for(d16, None) == BF16_D
    assert launcher.epilogue_for(d32, None) == FP32_D
    assert launcher.epilogue_for(d16, d16) == BF16_C  # in place
    assert launcher.epilogue_for(d32, torch.empty(4, 8)) == FP32_C


def test_kernel_args() -> None:
    a = torch.empty(3, 40, 64, dtype=torch.bfloat16)
    b = torch.empty(3, 128, 64, dtype=torch.bfloat16)
    d = torch.empty(3, 40, 128, dtype=torch.bfloat16)
    masked_m = torch.zeros(3, dtype=torch.int32)
    args = launcher.kernel_args(GemmType.MASKED, a, b, d, None, masked_m, (64, 64, 128, 0), 132, 5)
    assert args == (a.data_ptr(), b.data_ptr(), d.data_ptr(), None, masked_m.data_ptr(), 40, 3, 64, 64, 128, 0,
                    132, 5)
    args = launcher.kernel_args(GemmType.NORMAL, a[0], b[0], d[0], None, None, (64, 64, 128, 0), 132, 5)
    assert args[3:7] == (None, None, 40, 1)
    # Accumulating: c's address and row stride; in place, both are d's.
    c = torch.empty(40, 136)[:, :128]
    args = launcher.kernel_args(GemmType.NORMAL, a[0], b[0], d[0].float(), c, None, (64, 64, 128, 136), 132, 5)
    assert (args[3], args[4], args[10]) == (c.data_ptr(), None, 136)
    d32 = torch.empty(40, 128)
    args = launcher.kernel_args(GemmType.NORMAL, a[0], b[0], d32, d32, None, (64, 64, 128, 128), 132, 5)
    assert args[2] == args[3] == d32.data_ptr() and args[9] == args[10] == 128


def test_warmup_lists_the_bf16_variants_on_request() -> None:
    from dg_moe.moe import warmup
    from dg_moe.moe.shapes import MODEL_SHAPES

    shape, batches = MODEL_SHAPES["deepseek-v3"], [1, 64, 4096]
    variants = warmup.unique_variants([shape], batches, 132, bf16=True)
    assert variants and variants != warmup.unique_variants([shape], batches, 132)
    for v in variants:  # the BF16 family's shared-memory formula, which its compile static_asserts
        assert v["SMEM_BYTES"] == smem_bytes(v["BLOCK_M"], v["BLOCK_N"], v["NUM_STAGES"])
    assert warmup.build_parser().parse_args(["--bf16"]).bf16
    assert not warmup.build_parser().parse_args([]).bf16


def _dense(m: int, n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.randn(m, k).to(torch.bfloat16)
    b = torch.randn(n, k).to(torch.bfloat16)
    return a, b, torch.randn(m, n).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_op_checks_c_against_d(dtype: torch.dtype) -> None:
    """What reaches the kernel with c: the op rejects a c of another dtype or shape than d, or aliasing d
    through other strides, naming c; d itself as c (in place) is accepted."""
    a, b, d = _dense(16, 24, 32, dtype)
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    with pytest.raises(TypeError, match=r"bf16_gemm_nt: c must have dtype"):
        dg_moe.bf16_gemm_nt(a, b, d, c=d.to(other))
    with pytest.raises(ValueError, match=r"bf16_gemm_nt: c has shape \(16, 16\)"):
        dg_moe.bf16_gemm_nt(a, b, d, c=d[:, :16])
    with pytest.raises(ValueError, match="c must"):
        dg_moe.bf16_gemm_nt(a, b, d, c=d.T.contiguous().T)
    flat = torch.zeros(16 * 25, dtype=dtype)
    with pytest.raises(ValueError, match="c aliases d"):
        dg_moe.bf16_gemm_nt(a, b, flat[:384].view(16, 24), c=flat.as_strided((16, 24), (25, 1)))
    expected = reference.round_to_dtype(reference.ref_bf16_gemm_nt(a, b, d), dtype)
    dg_moe.bf16_gemm_nt(a, b, d, c=d)
    assert torch.equal(d, expected)


def test_grouped_ops_take_an_fp32_d() -> None:
    """The grouped BF16 ops' reference path writes a float32 d as the kernel does (rounded once from
    float64); rows the layout does not hold stay untouched."""
    k, n = 64, 24
    a = torch.randn(512, k).to(torch.bfloat16)
    b = torch.randn(3, n, k).to(torch.bfloat16)
    per_row = torch.full((512,), -1, dtype=torch.int32)
    per_row[:3], per_row[256:386] = 0, 2  # group 1 empty; group 2's 130 rows span two tiles
    d = torch.full((512, n), float("nan"))
    dg_moe.m_grouped_bf16_gemm_nt_contiguous(a, b, d, per_row)
    ref = reference.ref_m_grouped_bf16_gemm_nt_contiguous(a, b, per_row)
    assert torch.equal(torch.isnan(d), torch.isnan(ref))
    assert torch.equal(d[~torch.isnan(d)], ref[~torch.isnan(ref)].float())
    x = torch.randn(3, 8, k).to(torch.bfloat16)
    masked_m = torch.tensor([8, 0, 5], dtype=torch.int32)
    d = torch.full((3, 8, n), float("nan"))
    dg_moe.m_grouped_bf16_gemm_nt_masked(x, b, d, masked_m, expected_m=4)
    ref = reference.ref_m_grouped_bf16_gemm_nt_masked(x, b, masked_m)
    assert torch.equal(torch.isnan(d), torch.isnan(ref))
    assert torch.equal(d[~torch.isnan(d)], ref[~torch.isnan(ref)].float())


def test_bound_launch_passes_kernel_args_and_reads_the_stream_per_call(monkeypatch) -> None:
    from dg_moe import device as dg_device

    streams = iter(range(100, 110))
    monkeypatch.setattr(dg_device, "stream_handle", lambda device: next(streams))
    a = torch.zeros(4, 256, dtype=torch.bfloat16)
    b = torch.zeros(3, 64, 256, dtype=torch.bfloat16)
    d = torch.empty(4, 64, dtype=torch.float32)
    layout = torch.zeros(4, dtype=torch.int32)
    calls = []
    launch = launcher.bound_launch(lambda *args: calls.append(args), GemmType.CONTIGUOUS, a, b, d, layout, 132)
    assert calls == []  # nothing runs until called
    launch()
    launch()
    first = launcher.kernel_args(GemmType.CONTIGUOUS, a, b, d, None, layout, (256, 256, 64, 0), 132, 100)
    assert calls == [first, first[:-1] + (101,)]


def test_bound_launch_refuses_rows_tma_cannot_read() -> None:
    a = torch.zeros(4, 256, dtype=torch.bfloat16)[:, :250]
    b = torch.zeros(64, 256, dtype=torch.bfloat16)
    d = torch.empty(4, 64, dtype=torch.bfloat16)
    with pytest.raises(KernelNotAvailableError, match="multiple of 8"):
        launcher.bound_launch(lambda *args: None, GemmType.NORMAL, a, b, d, None, 132)

