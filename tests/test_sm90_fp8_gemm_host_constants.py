"""The host constants Python computes for cubin launches (host_constants.py) against the kernel's C++:
NVRTC compiles accept the mirror's values for variants covering each formula's branches, and reject
a compile where any one of them is off (no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dg_moe import jit
from dg_moe.errors import CompileError
from dg_moe.kernels.sm90_fp8_gemm import host_constants as hc
from dg_moe.kernels.sm90_fp8_gemm.constants import GemmType
from dg_moe.kernels.sm90_fp8_gemm.heuristic import GemmConfig, max_stages, smem_bytes
from dg_moe.kernels.sm90_fp8_gemm.variants import FAMILY, template_args

pytestmark = pytest.mark.nvrtc


def _config(block_m: int, block_n: int, multicast: int = 1, multicast_b: bool = False, k: int = 7168) -> GemmConfig:
    stages = max_stages(block_m, block_n, k)
    return GemmConfig(block_m, block_n, stages, multicast, smem_bytes(block_m, block_n, stages, k), 0.0, multicast_b)


# (type, config, N, K): one-warpgroup and two-wave tiles, A shared (n-block pairs), B shared (m-block
# pairs, half-height B boxes), D spans of 32, 64 and 128 bytes, an odd n-block count.
VARIANTS = [
    (GemmType.NORMAL, _config(64, 32), 2112, 7168),
    (GemmType.NORMAL, _config(256, 128, 2), 2112, 7168),
    (GemmType.CONTIGUOUS, _config(128, 192, 2, True), 4096, 7168),
    (GemmType.MASKED, _config(64, 16, k=2048), 7168, 2048),
]
IDS = ["normal-64x32", "normal-256x128-mcA", "contiguous-128x192-mcB", "masked-64x16"]


def test_hand_derived_values() -> None:
    """The formulas on two variants, worked out from launch/sm90_fp8_gemm.cu and the kernel's headers."""
    c = hc.host_constants(*VARIANTS[1])  # 256 x 128, A shared: each CTA loads half of A's rows
    assert (c.box_rows_a, c.box_rows_b, c.d_span_bytes, c.d_span_cols, c.block_threads) == (128, 128, 128, 64, 384)
    assert (c.pair_m, c.num_n_slots) == (1, 9)  # ceil(2112 / 128) = 17 n-blocks, padded to 18, in pairs
    c = hc.host_constants(*VARIANTS[2])  # 128 x 192, B shared: each CTA loads half of B's rows
    assert (c.box_rows_a, c.box_rows_b, c.d_span_cols, c.block_threads, c.pair_m, c.num_n_slots) == (
        128,
        96,
        64,
        384,
        2,
        22,
    )
    c = hc.host_constants(*VARIANTS[3])
    assert (c.box_rows_a, c.box_rows_b, c.d_span_bytes, c.block_threads, c.pair_m, c.num_n_slots) == (
        64,
        16,
        32,
        256,
        1,
        448,
    )
    assert c.group_table and c.max_dynamic_shared == hc.SMEM_BYTES_PER_BLOCK


def test_template_args_carry_every_host_constant() -> None:
    for variant in VARIANTS:
        args = template_args(*variant)
        assert hc.template_args(hc.host_constants(*variant)).items() <= args.items()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_nvrtc_accepts_the_mirror(nvrtc_cache: Path, variant) -> None:
    assert jit.compile_only(FAMILY, template_args(*variant)).is_file()


@pytest.mark.parametrize(
    "name",
    ["SMEM_BYTES", "BOX_ROWS_A", "BOX_ROWS_B", "D_SPAN_COLS", "BLOCK_THREADS", "PAIR_M", "NUM_N_SLOTS", "PARAMS_BYTES"],
)
def test_nvrtc_rejects_a_wrong_constant(nvrtc_cache: Path, name: str) -> None:
    args = template_args(*VARIANTS[2])
    args[name] = args[name] + (1 if name != "PAIR_M" else -1)
    with pytest.raises(CompileError, match="static assertion failed"):
        jit.compile_only(FAMILY, args)
