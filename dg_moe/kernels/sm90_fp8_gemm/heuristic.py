"""Deterministic cost model choosing the SM90 FP8 GEMM configuration from the shape and SM count.

Each candidate (BLOCK_M, BLOCK_N) is priced as the larger of two times, the same two numbers
docs/perf-log.md starts every kernel from:
- tensor-core time: waves of tiles (the last wave costs as much as a full one) times one tile's
  MMA work at the per-SM FP8 rate, derated for narrow tiles (a 64-row tile keeps one math
  warpgroup busy, not two; a narrow N spends more of each wgmma on fixed issue cost); a last
  column block at most half a tile wide (N = 2112 on 128-wide tiles) runs at half width and
  counts as half a tile, the scheduler putting those tiles where they pair up;
- memory time: every byte of A, B and D once, spread evenly over the tiles; a wave of tiles
  shares the HBM rate, so the memory time also comes in whole waves (v1 measured 192 tiles on
  132 SMs at 1.45 TB/s where 384 narrower tiles keep every SM streaming), and a wave of fewer
  tiles than SMs gets at most twice the per-SM share (one SM cannot pull the whole bandwidth);
- L2 time: every tile streams its A rows and B rows from L2 into shared memory, at about
  11 TB/s over the chip and at most 64 B/clk for one SM; a 2-CTA cluster multicasting A halves
  A's share (v3's A/B: multicast changed nothing at 128x128 tiles, so L2 was not the bound);
- no shared-memory term, and tiles wider than 128 run 16 % slower than their terms say (128x192
  measured 969 vs 1091 TFLOPS for 128x128 at equal waves, 4096^2 x 7168, H100; at 4096 x 2112 x
  7168 on an H200 its 3 waves lost to 128x128's 4.1: 933-950 vs 1006-1032 TFLOPS);
- 256-row tiles (two 128-row waves) read 25 % fewer L2 bytes per FLOP than 128 x 128 and won at
  M = 4096 (4096^2 x 7168: 1251 vs 1130 TFLOPS); never for 128 rows or fewer, nor contiguous
  layouts, nor narrower than 128 (256 x 64 lost to 128 x 128 wherever measured);
- a fixed cost per wave for filling the pipeline and the epilogue.
Ties go to the larger tile, then the taller one. Stages: as many as fit in shared memory, at most 8.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ...jit.env import print_configs_enabled
from ...layout.math import ceil_div
from .constants import ACCUM_REGISTER_BUDGET, BLOCK_K, SMEM_BYTES_PER_BLOCK, GemmType

PEAK_FP8_FLOPS_PER_SM = 1979e12 / 132
HBM_BYTES_PER_S = 3.0e12
SM_CLOCK_HZ = 1.83e9
L2_TO_SM_BYTES_PER_S = 11.3e12
L2_BYTES_PER_S_PER_SM = 64 * SM_CLOCK_HZ
# Multicast must be predicted this much faster to be chosen: never measured faster (v3 A/B on H100:
# 1042 vs 1101 TFLOPS at 4096^2 x 7168, 193 vs 219 at M=128, N=2112; H200, 128 x 64 tiles at
# 4096 x 2112 x 7168: 150 us, predicted 107, against 120 us for 128 x 128 without).
_MULTICAST_MIN_GAIN = 0.25
# A lone SM streams at most this many times its share of HBM bandwidth.
_MAX_SM_BANDWIDTH_SHARE = 2.0
_WAVE_OVERHEAD_S = 0.4e-6
# A 192-wide tile runs at this fraction of the speed its terms predict, compute- or memory-bound
# (H100: 969 vs 1091 TFLOPS against 128 x 128 at equal waves, 4096^2 x 7168; 22.2 vs 20.4 us
# against 128 x 64 at M = 128, N = 24576, K = 1536; H200: 131 vs 121 us against 128 x 128 at
# 4096 x 2112 x 7168, which 0.89 predicted the other way round).
_WIDE_TILE_SPEED = 0.84
MAX_STAGES = 16

BLOCK_MS = (64, 128, 256)
BLOCK_NS = (16, 32, 64, 128, 192)


@dataclass(frozen=True)
class GemmConfig:
    """One compiled variant of the SM90 FP8 GEMM: tile shape and pipeline depth."""

    block_m: int
    block_n: int
    num_stages: int
    multicast: int
    smem_bytes: int
    predicted_us: float
    multicast_b: bool = False
    """With ``multicast`` = 2: the cluster's CTAs share B (two m-blocks of one n-block) instead of A."""


def _round_up(x: int, y: int) -> int:
    return ceil_div(x, y) * y


def smem_bytes(block_m: int, block_n: int, num_stages: int, k: int) -> int:
    """Shared memory of one CTA. The kernel's SharedLayout must agree: every compile passes this
    number (template argument SMEM_BYTES) and the host entry static_asserts it."""
    stage = block_m * BLOCK_K + block_n * BLOCK_K + _round_up(block_m * 4, 1024)
    d_tile = _round_up(block_m * block_n * 2, 1024)
    sfb_tables = _round_up(2 * 2 * (k // BLOCK_K) * 4, 8)
    return num_stages * stage + d_tile + sfb_tables + (2 * num_stages + 4) * 8 + 1024


def fits_registers(block_m: int, block_n: int) -> bool:
    """Whether a math thread's accumulators fit: one wave's wgmma results (BLOCK_N / 2 floats) plus
    every wave's sums, within the kernel's kAccumRegisterBudget."""
    waves = 2 if block_m == 256 else 1
    return block_n // 2 * (waves + 1) <= ACCUM_REGISTER_BUDGET


def max_stages(block_m: int, block_n: int, k: int) -> int:
    """Most pipeline stages (up to MAX_STAGES) that fit beside the D tile in shared memory."""
    stages = MAX_STAGES
    while stages > 2 and smem_bytes(block_m, block_n, stages, k) > SMEM_BYTES_PER_BLOCK:
        stages -= 1
    return stages


def narrow_tail(n: int, block_n: int, multicast: int) -> bool:
    """Whether the last column block runs at half width (kNarrowTail in the kernel)."""
    tail = n % block_n
    return 0 < 2 * tail <= block_n and block_n >= 64 and 128 % block_n == 0 and multicast == 1


def _mma_efficiency(block_m: int, block_n: int) -> float:
    warpgroups = 0.6 if block_m == 64 else 0.85
    narrow = min(block_n, 128)
    return warpgroups * narrow / (narrow + 16)


def predict_us(block_m: int, block_n: int, multicast: int, rows_per_group: int, n: int, k: int, num_groups: int,
               num_sms: int, multicast_b: bool = False) -> float:
    """Predicted kernel time in microseconds for ``num_groups`` problems of ``rows_per_group`` rows.

    With ``multicast`` = 2 the n-blocks (or, sharing B, each group's m-blocks) are padded to pairs, one per
    CTA of a cluster.
    """
    share_a = multicast if not multicast_b else 1
    share_b = multicast if multicast_b else 1
    n_blocks = ceil_div(ceil_div(n, block_n), share_a) * share_a
    m_blocks = num_groups * ceil_div(ceil_div(rows_per_group, block_m), share_b) * share_b
    tiles = m_blocks * n_blocks
    half_tiles = m_blocks if narrow_tail(n, block_n, multicast) else 0
    waves = ceil_div(2 * tiles - half_tiles, 2 * num_sms)
    tile_flops = 2.0 * block_m * block_n * k
    compute_s = waves * tile_flops / (PEAK_FP8_FLOPS_PER_SM * _mma_efficiency(block_m, block_n))
    total_rows = num_groups * rows_per_group
    bytes_moved = num_groups * n * k + total_rows * k + total_rows * n * 2
    sharing_sms = max(min(tiles, num_sms), num_sms / _MAX_SM_BANDWIDTH_SHARE)
    memory_s = waves * (bytes_moved / tiles) / (HBM_BYTES_PER_S / sharing_sms)
    tile_l2_bytes = (min(block_m, rows_per_group) / share_a + block_n / share_b) * k
    sm_l2_rate = min(L2_TO_SM_BYTES_PER_S / min(tiles, num_sms), L2_BYTES_PER_S_PER_SM)
    l2_s = waves * tile_l2_bytes / sm_l2_rate
    time_s = max(compute_s, memory_s, l2_s) + waves * _WAVE_OVERHEAD_S
    return time_s * 1e6 / (_WIDE_TILE_SPEED if block_n > 128 else 1.0)


def rank_config(c: GemmConfig) -> tuple[float, int, int, int]:
    """The order of candidates, cheapest first: predicted time within 0.1 %, then the larger tile, then
    the taller one (fewer CTAs read each weight row: 128 x 64 beat 64 x 128 at M = 128, N = 7168,
    K = 16384, 54 vs 59 us), then the cluster."""
    return (round(c.predicted_us * 1000) / 1000, -c.block_m * c.block_n, -c.block_m, -c.multicast)


def candidate_tiles(block_ms: Sequence[int], block_ns: Sequence[int], max_block_m: int, rows: int,
                    fits: Callable[[int, int], bool]) -> Iterator[tuple[int, int]]:
    """The (BLOCK_M, BLOCK_N) worth pricing for ``rows`` rows per group: at most ``max_block_m`` rows,
    within the accumulator registers (``fits``), and 256-row tiles only over more than 128 rows and at
    least 128 columns."""
    for block_m in (bm for bm in block_ms if bm <= max_block_m):
        for block_n in block_ns:
            # A 256-row tile over at most 128 rows would run a wave of wgmmas on rows that do not exist;
            # one narrower than 128 lost to 128 x 128 at every shape measured (v8).
            if fits(block_m, block_n) and not (block_m == 256 and (rows <= 128 or block_n < 128)):
                yield block_m, block_n


def choose_config(rows_per_group: int, n: int, k: int, num_groups: int, num_sms: int,
                  max_block_m: int = 256) -> GemmConfig:
    """Cheapest configuration for the problem; deterministic in its arguments.

    rows_per_group: M for a dense GEMM, the mean rows per expert for contiguous layouts, or
    ``expected_m`` for masked ones. max_block_m: 128 for contiguous layouts, whose groups start on
    128-row boundaries (a taller tile could hold two experts' rows).
    """
    rows = max(rows_per_group, 1)
    candidates = []
    for block_m, block_n in candidate_tiles(BLOCK_MS, BLOCK_NS, max_block_m, rows, fits_registers):
        stages = max_stages(block_m, block_n, k)
        time_us = predict_us(block_m, block_n, 1, rows, n, k, num_groups, num_sms)
        multicast = 1
        # Single-wave problems never multicast: measured slower (M=128, N=2112: 16.5 vs 15.1 us).
        single_wave = num_groups * ceil_div(rows, block_m) * ceil_div(n, block_n) <= num_sms
        if ceil_div(n, block_n) >= 2 and num_sms % 2 == 0 and not single_wave:
            shared_us = predict_us(block_m, block_n, 2, rows, n, k, num_groups, num_sms)
            if shared_us < time_us * (1 - _MULTICAST_MIN_GAIN):
                time_us, multicast = shared_us, 2
        candidates.append(GemmConfig(block_m, block_n, stages, multicast, smem_bytes(block_m, block_n, stages, k),
                                     time_us))
    return min(candidates, key=rank_config)


MASKED_SHORT_GROUP_ROWS = 32
"""Masked groups of at most this many expected rows run 64-row tiles (one math warpgroup).

Decode streams weights: each SM's rate is bounded by the weight bytes it keeps in flight, and a 64-row
tile spends a stage's shared memory on weights rather than on A rows that do not exist. Measured
(tools/ab_masked.py, H200, DeepSeek-V3 experts, 1-4 rows in 8-252 of 256 experts): 64 x 128 (8
stages) against the cost model's 128 x 128 (5 stages) 1229 vs 1421 us (gate_up) and 604 vs 737 us
(down) at 2 rows per expert, 1929 vs 2120 and 924 vs 1094 at 4 rows, 68 vs 70 and 42 vs 45 at one
token; 3.8-4.0 TB/s of weights against 3.3-3.5. The cost model prices memory time by waves and
cannot see this. At 64 rows the 128-row tile wins again (tools/ab_variants.py, H100, 8 groups x 64
rows: 97 vs 123 us at N, K = 4096, 7168; 57 vs 58 at 7168, 2048).
"""

MASKED_TALL_TILE_ROWS = 1024
"""Masked groups of more than MASKED_SHORT_GROUP_ROWS and fewer than this many expected rows run
128-row tiles, 192 wide at K >= SHARED_B_MIN_K, else 128: 256-row tiles, one or so per SM, leave the
tensor cores idle while a tile's two waves are promoted (H100, tools/ab_variants.py, 4 groups x 256
rows at 4096 x 7168: 103 us on 256 x 128, 88 on 128 x 128, 79 on 128 x 192; at 7168 x 2048: 48, 45,
48; 16 x 128: 224, 209, 205 and 126, 115, 115; 8 x 64: 111, 97, 109 and 69, 57, 60)."""

DENSE_SHORT_ROWS = 64
"""Dense calls of at most this many rows run 64-row tiles, as short masked groups do: at M <= 64 the
cost model's 128-row tiles leave half of each stage to A rows past M (H100, tools/ab_variants.py, M = 64:
4096 x 7168 23.0 -> 16.3 us on 64 x 32 at 16 stages, 7168 x 16384 66.2 -> 50.9 on 64 x 64, 24576 x 1536
21.3 -> 19.2, 7168 x 2048 10.4 -> 8.9; docs/perf-log.md v13b)."""

WIDE_CONTIGUOUS_MIN_N = 192
SHARED_B_MIN_K = 4096
SHARED_B_MIN_ROWS = 256
"""Prefix-sum contiguous groups of at least this many expected rows share B across a 2-CTA cluster (at K >=
SHARED_B_MIN_K). Since the cluster pairs two m-blocks of one group (docs/perf-log.md v16), 32 x 256 rows at
4096 x 7168 runs 600 -> 539 us (H100, DG/ours 0.88 -> 0.98); at K = 2048 sharing still lost (0.95 -> 0.92)."""

SHARED_B_SPILL_ROWS = (64, 256)
"""Prefix-sum contiguous groups of more than the first and fewer than the second many expected rows share B at
every K: such groups straddle one and two m-blocks, and without the cluster a group's second m-block reads its
weights from HBM again (H100, tools/ab_variants.py, DeepSeek-V3 prefill, 256 groups x 128 rows: 4509 -> 2824 us
at 4096 x 7168, 1906 -> 1559 at 7168 x 2048, DG/ours 0.63 -> 1.00 and 0.82 -> 1.00; Mixtral, 8 x 128: 416 -> 386
at 28672 x 4096, 235 -> 227 at 4096 x 14336). DeepGEMM shares B there too."""

SHARED_B_MIN_ROWS_PER_ROW = 512
"""The same for the per-row layout, whose scheduler has no group table and pairs global m-blocks 2p and
2p + 1: at 256 rows per group those pairs often span two groups and share nothing (v13: no gain)."""

MASKED_SHARED_B_ROWS = (64, 128)
"""Masked groups of more than the first and at most the second many expected rows run 128 x 192 tiles
sharing B. About half such groups spill a few rows into a second m-block, and the cluster's pair reads that
group's weights once for both (H100, 16 x 128 rows: DG/ours 0.94 -> 1.00 at 4096 x 7168, 0.96 -> 1.00 at
7168 x 2048); at 64 rows no group has a second m-block and the cluster only costs (1.05 -> 0.96), at 256
rows it gained nothing (1.06 -> 1.06) or lost (1.04 -> 0.93 at K = 2048)."""


def _fixed(block_m: int, block_n: int, multicast: int, multicast_b: bool, rows: int, n: int, k: int, groups: int,
           num_sms: int) -> GemmConfig:
    stages = max_stages(block_m, block_n, k)
    return GemmConfig(block_m, block_n, stages, multicast, smem_bytes(block_m, block_n, stages, k),
                      predict_us(block_m, block_n, multicast, rows, n, k, groups, num_sms, multicast_b), multicast_b)


def config_for(gemm_type: GemmType, rows_hint: int, n: int, k: int, num_groups: int, num_sms: int) -> GemmConfig:
    """The variant one call shape of one layout runs: the cost model's choice, overridden where a
    measurement beside DeepGEMM showed it wrong (docs/perf-log.md, v13 and v16; H100, tools/ab_variants.py).

    - contiguous (N >= 192): 128 x 192 tiles, whose 2-SFB promotion is compile-time since v13, beat
      128 x 128 on all six bench cases (e.g. 8 x 4096 rows at 4096 x 7168: 2004 vs 2292 us); a 2-CTA
      cluster sharing B added 9-14 % at K = 7168 with 4096+ rows per group, 10 % at 256 rows (prefix-sum layout)
      since its pairs lie within one group (SHARED_B_MIN_ROWS), and lost 2-7 % at K = 2048; with about
      one m-block per group (SHARED_B_SPILL_ROWS) sharing gains at every K, up to 1.6x;
    - masked, about one 128-row tile per group (MASKED_SHARED_B_ROWS): 128 x 192 sharing B;
    - dense, M >= 2048: 256 x 128 tiles share A across a 2-CTA cluster at K >= 4096 (7168 x 16384:
      819 vs 869 us; 4096 x 7168: 187 vs 194), except where N ends in a narrow column block, which
      then runs 128 x 192 tiles sharing B (4096 x 2112 x 7168: 100 vs 111 us).
    """
    contiguous = gemm_type in (GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM)
    rows = max(rows_hint, 1)
    if contiguous and n >= WIDE_CONTIGUOUS_MIN_N:
        min_rows = SHARED_B_MIN_ROWS if gemm_type == GemmType.CONTIGUOUS_PSUM else SHARED_B_MIN_ROWS_PER_ROW
        spill = gemm_type == GemmType.CONTIGUOUS_PSUM and SHARED_B_SPILL_ROWS[0] < rows < SHARED_B_SPILL_ROWS[1]
        shared_b = (spill or (k >= SHARED_B_MIN_K and rows >= min_rows)) and num_sms % 2 == 0
        return _fixed(128, 192, 2 if shared_b else 1, shared_b, rows, n, k, num_groups, num_sms)
    masked = gemm_type == GemmType.MASKED
    if masked and MASKED_SHARED_B_ROWS[0] < rows <= MASKED_SHARED_B_ROWS[1] and n >= WIDE_CONTIGUOUS_MIN_N \
            and num_sms % 2 == 0:
        return _fixed(128, 192, 2, True, rows, n, k, num_groups, num_sms)
    if masked and MASKED_SHORT_GROUP_ROWS < rows < MASKED_TALL_TILE_ROWS:
        wide = k >= SHARED_B_MIN_K and rows >= 128 and n >= WIDE_CONTIGUOUS_MIN_N
        return _fixed(128, 192 if wide else 128, 1, False, rows, n, k, num_groups, num_sms)
    short = (masked and rows <= MASKED_SHORT_GROUP_ROWS) or (gemm_type == GemmType.NORMAL and rows <= DENSE_SHORT_ROWS)
    max_block_m = 64 if short else 128 if contiguous else 256
    chosen = choose_config(rows, n, k, num_groups, num_sms, max_block_m=max_block_m)
    if gemm_type == GemmType.NORMAL and rows >= 2048 and num_sms % 2 == 0:
        if chosen.block_m == 256 and chosen.block_n == 128 and narrow_tail(n, 128, 1):
            return _fixed(128, 192, 2, True, rows, n, k, num_groups, num_sms)
        if chosen.block_m == 256 and chosen.multicast == 1 and k >= SHARED_B_MIN_K:
            return _fixed(256, chosen.block_n, 2, False, rows, n, k, num_groups, num_sms)
    return chosen


def print_config_if_asked(name: str, shape: str, config: GemmConfig) -> None:
    """Print the choice to stderr when DG_MOE_PRINT_CONFIGS=1."""
    if print_configs_enabled():
        print(
            f"[dg_moe] {name} {shape}: BLOCK_M={config.block_m} BLOCK_N={config.block_n} "
            f"stages={config.num_stages} multicast={config.multicast}{' (B)' if config.multicast_b else ''} "
            f"smem={config.smem_bytes} "
            f"predicted={config.predicted_us:.1f}us",
            file=sys.stderr,
        )
