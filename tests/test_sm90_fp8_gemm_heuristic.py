"""The cost model's choices obey the kernel's limits: registers, shared memory, and the layouts a tile
height may serve. CPU only."""

from __future__ import annotations

import pytest

from dg_moe.kernels.sm90_fp8_gemm.constants import SMEM_BYTES_PER_BLOCK, GemmType
from dg_moe.kernels.sm90_fp8_gemm.heuristic import (
    DENSE_SHORT_ROWS,
    MASKED_SHARED_B_ROWS,
    MASKED_SHORT_GROUP_ROWS,
    MAX_STAGES,
    SHARED_B_MIN_K,
    SHARED_B_MIN_ROWS,
    SHARED_B_MIN_ROWS_PER_ROW,
    SHARED_B_SPILL_ROWS,
    choose_config,
    config_for,
    fits_registers,
    max_stages,
    narrow_tail,
    predict_us,
    smem_bytes,
)
from dg_moe.kernels.sm90_fp8_gemm.variants import DEEPSEEK_V3_NK


@pytest.mark.parametrize("block_m,block_n,fits", [
    (64, 128, True), (128, 192, True), (256, 128, True), (256, 64, True), (256, 192, False),
])
def test_fits_registers(block_m, block_n, fits):
    assert fits_registers(block_m, block_n) is fits


@pytest.mark.parametrize("block_m,block_n", [(64, 32), (128, 128), (128, 192), (256, 128)])
@pytest.mark.parametrize("k", [512, 2048, 7168, 16384])
def test_max_stages_is_the_most_that_fit(block_m, block_n, k):
    stages = max_stages(block_m, block_n, k)
    assert smem_bytes(block_m, block_n, stages, k) <= SMEM_BYTES_PER_BLOCK
    assert stages == MAX_STAGES or smem_bytes(block_m, block_n, stages + 1, k) > SMEM_BYTES_PER_BLOCK


@pytest.mark.parametrize("n,k", DEEPSEEK_V3_NK)
@pytest.mark.parametrize("rows", [1, 64, 128, 129, 1024, 4096, 8192])
def test_choices_fit_and_respect_the_layout(n, k, rows):
    for gemm_type in GemmType:
        config = config_for(gemm_type, rows, n, k, 1 if gemm_type == GemmType.NORMAL else 8, 132)
        assert fits_registers(config.block_m, config.block_n)
        assert config.smem_bytes == smem_bytes(config.block_m, config.block_n, config.num_stages, k)
        assert config.smem_bytes <= SMEM_BYTES_PER_BLOCK
        if gemm_type in (GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM):
            assert config.block_m <= 128  # groups start on 128-row boundaries
        if rows <= 128:
            assert config.block_m <= 128  # a 256-row tile would run a wave on missing rows
        if config.block_m == 256:
            assert config.block_n >= 128  # 256 x 64 lost to 128 x 128 wherever measured


@pytest.mark.parametrize("n,k", DEEPSEEK_V3_NK)
def test_decode_masked_groups_take_64_row_tiles(n, k):
    # Measured (tools/ab_masked.py): 64 x 128 streamed 13-18 % more weight bytes than 128 x 128 at 1-4 rows.
    for rows in (1, 4, MASKED_SHORT_GROUP_ROWS):
        assert config_for(GemmType.MASKED, rows, n, k, 256, 132).block_m == 64
    # Past the rule the cost model chooses again, and only the masked layout is affected.
    assert config_for(GemmType.MASKED, 1024, n, k, 8, 132).block_m > 64
    assert config_for(GemmType.CONTIGUOUS_PSUM, 128, n, k, 8, 132).block_m == \
        choose_config(128, n, k, 8, 132, max_block_m=128).block_m


@pytest.mark.parametrize("n,k", [(4096, 7168), (7168, 2048)])
def test_b_sharing_clusters_where_measured(n, k):
    # docs/perf-log.md v16 (H100, beside DeepGEMM): pairs of m-blocks within one group read B once.
    def shares_b(gemm_type, rows):
        config = config_for(gemm_type, rows, n, k, 16, 132)
        return config.multicast == 2 and config.multicast_b

    low, high = MASKED_SHARED_B_ROWS
    assert shares_b(GemmType.MASKED, high) and shares_b(GemmType.MASKED, low + 1)
    assert not shares_b(GemmType.MASKED, low) and not shares_b(GemmType.MASKED, high + 1)
    assert config_for(GemmType.MASKED, high, n, k, 16, 131).multicast == 1  # a cluster needs an even SM count
    assert shares_b(GemmType.CONTIGUOUS_PSUM, SHARED_B_MIN_ROWS) == (k >= SHARED_B_MIN_K)
    low, high = SHARED_B_SPILL_ROWS  # groups straddling one and two m-blocks share at every K
    assert shares_b(GemmType.CONTIGUOUS_PSUM, low + 1) and shares_b(GemmType.CONTIGUOUS_PSUM, high - 1)
    assert not shares_b(GemmType.CONTIGUOUS_PSUM, low)
    assert not shares_b(GemmType.CONTIGUOUS, 128)  # the per-row layout's pairs span groups: not measured there
    assert shares_b(GemmType.CONTIGUOUS, SHARED_B_MIN_ROWS_PER_ROW) == (k >= SHARED_B_MIN_K)
    assert not shares_b(GemmType.CONTIGUOUS, SHARED_B_MIN_ROWS_PER_ROW - 1)


@pytest.mark.parametrize("n,k", DEEPSEEK_V3_NK)
def test_short_dense_calls_take_64_row_tiles(n, k):
    # Measured (docs/perf-log.md v13b): 64-row tiles 10-29 % faster than 128-row ones at M = 64.
    for rows in (1, 16, DENSE_SHORT_ROWS):
        assert config_for(GemmType.NORMAL, rows, n, k, 1, 132).block_m == 64
    assert config_for(GemmType.NORMAL, DENSE_SHORT_ROWS + 1, n, k, 1, 132) == \
        choose_config(DENSE_SHORT_ROWS + 1, n, k, 1, 132)


def test_choice_is_deterministic_and_takes_tall_tiles_at_large_m():
    first = choose_config(4096, 4096, 7168, 1, 132)
    assert first == choose_config(4096, 4096, 7168, 1, 132)
    assert (first.block_m, first.block_n) == (256, 128)  # measured fastest (docs/perf-log.md, v8)
    assert choose_config(4096, 4096, 7168, 1, 132, max_block_m=128).block_m == 128


def test_n2112_at_large_m_takes_256x128_without_multicast():
    # Its 64-wide last column block runs at half width, so 272 tiles of 256 x 128 fill exactly two
    # waves on 132 SMs (H200: see docs/perf-log.md, v11); multicast measured slower (v9).
    config = choose_config(4096, 2112, 7168, 1, 132)
    assert (config.block_m, config.block_n, config.multicast) == (256, 128, 1)


@pytest.mark.parametrize("n,block_n,multicast,narrow", [
    (2112, 128, 1, True), (576, 128, 1, True), (2200, 64, 1, True), (2112, 128, 2, False),
    (2112, 64, 1, False), (2168, 128, 1, False), (4096, 128, 1, False), (2112, 192, 1, False),
    (2064, 32, 1, False),
])
def test_narrow_tail_mirrors_the_kernel_condition(n, block_n, multicast, narrow):
    assert narrow_tail(n, block_n, multicast) == narrow


def test_half_width_tail_tiles_count_as_half_a_tile():
    # 4096 x 2112 on 256 x 128 tiles: 256 full tiles and 16 half ones are two waves on 132 SMs, as
    # 4096 x 2048 is; counted whole they would make a third.
    with_tail = predict_us(256, 128, 1, 4096, 2112, 7168, 1, 132)
    without_tail = predict_us(256, 128, 1, 4096, 2048, 7168, 1, 132)
    assert with_tail < 1.1 * without_tail
    assert predict_us(256, 128, 2, 4096, 2112, 7168, 1, 132) > 1.3 * without_tail


def test_constants_are_read_from_the_kernel_header():
    """Python holds no copy of the kernel's numbers: they come from its header (the compile test checks
    the shared-memory formula, through the host entry's static_assert on SMEM_BYTES)."""
    from dg_moe.kernels.sm90_fp8_gemm import constants

    values = constants.read_constants()
    assert values == {"kBlockK": constants.BLOCK_K, "kAccumRegisterBudget": constants.ACCUM_REGISTER_BUDGET,
                      "kMaxSharedBytes": constants.SMEM_BYTES_PER_BLOCK}


def test_gemm_types_name_the_scheduler_enumerators():
    import re

    from dg_moe.jit.source import CSRC_DIR

    scheduler = (CSRC_DIR / "common" / "scheduler.cuh").read_text()
    body = re.search(r"enum class GemmType[^{]*\{(.*?)\};", scheduler, re.DOTALL).group(1)
    enumerators = set(re.findall(r"^\s*([A-Za-z]\w*)\b", body, re.MULTILINE))
    assert {t.value for t in GemmType} == enumerators
