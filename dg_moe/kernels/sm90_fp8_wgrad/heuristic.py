"""Deterministic cost model choosing the SM90 weight-gradient GEMM's configuration from the shape (FP8
operands; BF16 ones priced alike at half the tensor rate and twice the bytes, tiles BF16_BLOCK_NS).

The tile is 128 rows (two math warpgroups) by BLOCK_N 128 or 64 columns (BLOCK_NS); 136, 144 and 152 are
built for forced runs (BUILT_BLOCK_NS) and not priced, but two measured rules take them: K-grouped FP8 calls
run 128 x 144 tiles in clusters sharing B (SHARED_B_BLOCK_N), and dense FP8 calls run 128 x 152 where that
saves whole waves of column work (WIDE_BLOCK_N). Nothing wider fits the registers (a math thread
holds one K block's accumulators, the promoted sums and the block's SFB values: BLOCK_N / 2 + BLOCK_N / 2
+ BLOCK_N / 4 floats, 190 of a 192 budget at 152). Each candidate is priced, as the (1, 128, 128) family's
model does (dg_moe/kernels/sm90_fp8_gemm/heuristic.py, whose hardware rates this one shares), as the
largest of
- tensor-core time: whole waves of tiles times one tile's MMA work at the per-SM FP8 rate, derated for a
  narrow tile (fixed issue cost per wgmma);
- L2 time: whole waves of tiles, each streaming its A and B rows from L2 at one SM's share of it;
- memory time: A and B once, D written (and C read) once, at the HBM rate;
plus a fixed cost per wave. The group sizes of a K-grouped call never enter (only their mean, from the
tensor shapes): the choice, and with it the captured launch, stays valid whatever sizes the device
array holds. Ties go to the wider tile. Stages: as many as fit, at most MAX_STAGES.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ...jit.env import print_configs_enabled
from ...layout.math import align, ceil_div
from ..sm90_fp8_gemm.constants import BLOCK_K, SMEM_BYTES_PER_BLOCK
from ..sm90_fp8_gemm.heuristic import (
    HBM_BYTES_PER_S,
    L2_BYTES_PER_S_PER_SM,
    L2_TO_SM_BYTES_PER_S,
    PEAK_FP8_FLOPS_PER_SM,
)

BLOCK_M = 128
BLOCK_NS = (128, 64)
BF16_BLOCK_NS = (128, 64)
"""Tile widths of the BF16 operands' variants (compiled and priced); FP8 ones build BUILT_BLOCK_NS."""
BUILT_BLOCK_NS = (64, 128, 136, 144, 152)
"""Every tile width the kernel compiles. The cost model chooses among BLOCK_NS; the wider ones (DeepGEMM's
widths on these shapes, 152 the most whose accumulators, sums and SFB values fit the register budget) run
when forced (tools/bench_wgrad.py --block-n) until measurements price them."""
SHARED_B_BLOCK_N = 144
"""K-grouped FP8 calls whose m-block count is even run 128 x 144 tiles in 2-CTA clusters sharing B (each CTA
loads half of B's rows and multicasts them). H100 (docs/perf-log.md v21, tools/bench_wgrad.py): 3-16 %
faster than the cost model's 128 x 128 on all six K-grouped DeepSeek-V3 cases (4-32 groups, M 4096 and
7168); on the eleven dense cases it won five and lost four by more than the 3 % run-to-run spread, so dense
calls keep the model's tile. BF16 operands keep theirs (a BF16 pair splits B into whole 64-wide chunks)."""
WIDE_BLOCK_N = 152
WIDE_MAX_COLUMN_WORK = 0.97
"""Dense FP8 calls run 128 x WIDE_BLOCK_N tiles when their column work (whole waves of tiles times the tile
width) is at most WIDE_MAX_COLUMN_WORK of the cost model's tile's. H100 (docs/perf-log.md v21, the eleven
dense DeepSeek-V3 cases, 152 forced against 128): the two cases this picks gained 11 % (7168 x 2112, 8 -> 6
waves) and 22 % (576 x 7168, 3 -> 2 waves), and none of the cases it leaves alone would have gained more than
their 3 % spread except at N = 7168 with many m-blocks (4-9 %, against a predicted 1-2 % loss), which the wave
count does not explain, so no rule takes those. Where the waves barely drop (7168 x 16384: 0.99 of the work)
152 measured 4 % slower: a 152-wide tile is not quite 152/128 of a 128-wide one's speed, hence the margin."""
MAX_STAGES = 8
ROW_BYTES = 128
"""Bytes of one operand row of a stage: one 128B swizzle span, BLOCK_K FP8 or BLOCK_K / 2 BF16 values."""
_WAVE_OVERHEAD_S = 0.5e-6


@dataclass(frozen=True)
class WgradConfig:
    """One compiled variant of the weight-gradient GEMM: tile shape and pipeline depth."""

    block_m: int
    block_n: int
    num_stages: int
    smem_bytes: int
    predicted_us: float
    bf16: bool = False
    """BF16 operands (no scales, K blocks of 64) instead of FP8 with recipe (1, 1, 128)."""
    share_b: bool = False
    """2-CTA clusters on m-blocks 2u and 2u + 1 sharing B (each loads half and multicasts it), only where
    ceil(M / 128) is even: chosen for K-grouped FP8 calls (SHARED_B_BLOCK_N), else forced
    (tools/bench_wgrad.py --share-b)."""


def stage_bytes(block_m: int, block_n: int, bf16: bool = False) -> int:
    """One pipeline stage: A and B tiles of one K block (a 128-byte row each), then (FP8) their scale
    vectors, padded to 1024 bytes (the next stage's tiles keep the 128B swizzle's alignment)."""
    scales = 0 if bf16 else block_m * 4 + block_n * 4
    return align((block_m + block_n) * ROW_BYTES + scales, 1024)


def smem_bytes(block_m: int, block_n: int, num_stages: int, bf16: bool = False) -> int:
    """Shared memory of one CTA; the kernel's SharedLayout must agree (every compile static_asserts it)."""
    return num_stages * stage_bytes(block_m, block_n, bf16) + 2 * num_stages * 8 + 1024


def max_stages(block_m: int, block_n: int, bf16: bool = False) -> int:
    """Most pipeline stages (up to MAX_STAGES) that fit in one SM's shared memory."""
    stages = MAX_STAGES
    while stages > 2 and smem_bytes(block_m, block_n, stages, bf16) > SMEM_BYTES_PER_BLOCK:
        stages -= 1
    return stages


def predict_us(block_n: int, m: int, n: int, k_per_group: int, num_groups: int, num_sms: int,
               bf16: bool = False) -> float:
    """Predicted time in microseconds of ``num_groups`` [m, n] outputs over ``k_per_group`` K rows each."""
    tiles = num_groups * ceil_div(m, BLOCK_M) * ceil_div(n, block_n)
    waves = ceil_div(tiles, num_sms)
    element_bytes = 2 if bf16 else 1
    k_padded = ceil_div(max(k_per_group, 1), BLOCK_K) * BLOCK_K
    tile_flops = 2.0 * BLOCK_M * block_n * k_padded
    # BF16 wgmma runs at half the FP8 rate.
    peak = PEAK_FP8_FLOPS_PER_SM / element_bytes
    compute_s = waves * tile_flops / (peak * 0.85 * block_n / (block_n + 16))
    sm_l2_rate = min(L2_TO_SM_BYTES_PER_S / min(tiles, num_sms), L2_BYTES_PER_S_PER_SM)
    l2_s = waves * (BLOCK_M + block_n) * k_padded * element_bytes / sm_l2_rate
    # D written and C read (a weight gradient usually accumulates): the same for every tile shape.
    out_bytes = num_groups * m * n * 4 * 2
    memory_s = (num_groups * k_per_group * (m + n) * element_bytes + out_bytes) / HBM_BYTES_PER_S
    return (max(compute_s, l2_s, memory_s) + waves * _WAVE_OVERHEAD_S) * 1e6


def choose_config(m: int, n: int, k_per_group: int, num_groups: int, num_sms: int, bf16: bool = False,
                  k_grouped: bool = False) -> WgradConfig:
    """Cheapest configuration for ``num_groups`` problems [m, n] of ``k_per_group`` (mean) K rows, FP8 or
    (``bf16``) BF16 operands; ``k_grouped``: a K-grouped call (SHARED_B_BLOCK_N's rule). Deterministic in
    its arguments."""
    def config(block_n: int, share_b: bool = False) -> WgradConfig:
        stages = max_stages(BLOCK_M, block_n, bf16)
        return WgradConfig(BLOCK_M, block_n, stages, smem_bytes(BLOCK_M, block_n, stages, bf16),
                           predict_us(block_n, m, n, k_per_group, num_groups, num_sms, bf16), bf16, share_b)

    if k_grouped and not bf16 and ceil_div(m, BLOCK_M) % 2 == 0 and num_sms % 2 == 0:
        return config(SHARED_B_BLOCK_N, share_b=True)
    candidates = [config(block_n) for block_n in (BF16_BLOCK_NS if bf16 else BLOCK_NS)]
    # Within 0.1 %: the wider tile (fewer CTAs read each row of A).
    best = min(candidates, key=lambda c: (round(c.predicted_us * 1000) / 1000, -c.block_n))
    dense_fp8 = not bf16 and not k_grouped and num_groups == 1
    if dense_fp8 and _column_work(WIDE_BLOCK_N, m, n, num_sms) <= WIDE_MAX_COLUMN_WORK * _column_work(
            best.block_n, m, n, num_sms):
        return config(WIDE_BLOCK_N)
    return best


def _column_work(block_n: int, m: int, n: int, num_sms: int) -> int:
    """Whole waves of one dense problem's tiles times the tile width: WIDE_BLOCK_N's rule."""
    return ceil_div(ceil_div(m, BLOCK_M) * ceil_div(n, block_n), num_sms) * block_n


def print_config_if_asked(name: str, shape: str, config: WgradConfig) -> None:
    """Print the choice to stderr when DG_MOE_PRINT_CONFIGS=1."""
    if print_configs_enabled():
        print(f"[dg_moe] {name} {shape}: BLOCK_M={config.block_m} BLOCK_N={config.block_n} "
              f"stages={config.num_stages} smem={config.smem_bytes} predicted={config.predicted_us:.1f}us",
              file=sys.stderr)
