"""Deterministic cost model choosing the SM90 BF16 GEMM configuration from the shape and SM count.

A first model, checked on a GPU at eight shapes only (docs/perf-log.md v18): each candidate
(BLOCK_M, BLOCK_N) is priced as the largest of
- tensor-core time: waves of tiles (the last wave costs as much as a full one) times one tile's MMA
  work at the per-SM BF16 rate (H100 SXM dense peak), derated for a 64-row tile (one math
  warpgroup) and for narrow tiles (fixed issue cost per wgmma);
- memory time: every byte of A, B, D (and C when accumulating) once at HBM bandwidth, of which a grid
  with fewer tiles than SMs gets a share (one SM cannot pull more than twice its share);
- L2 time: every tile streams its A and B rows from L2, bounded per SM and over the chip;
plus a fixed cost per wave. Ties go to the larger tile, then the taller one. Stages: as many as fit
beside the D tile, at most MAX_STAGES; a tile with room for fewer than MIN_STAGES is not a candidate
(only FP32 D tiles of 128 x 256 and 256 x 128 elements, 128 KB, leave room for just two).

Layout rules on top, the FP8 family's where their reason is layout, not FP8 (docs/sm90-fp8-gemm.md):
contiguous layouts take tiles of at most 128 rows (groups start on 128-row boundaries); masked groups of
a few expected rows and dense calls of at most 64 rows take 64-row tiles (decode streams weights, and
a 128-row tile would spend half of each stage on rows that do not exist); 256-row tiles only over more
than 128 rows and at least 128 columns; prefix-sum contiguous groups of many rows share B
across a 2-CTA cluster (each weight tile read from L2 once for two m-blocks of one group). An MN-major B
arrives in 64-wide chunks: its tiles are 64, 128, 192 or 256 columns wide, and a B-sharing pair (each CTA
loading half the tile) needs 128 or 256.
"""

from __future__ import annotations

from collections.abc import Callable

from ...layout.math import ceil_div
from ..sm90_fp8_gemm.heuristic import GemmConfig, candidate_tiles, rank_config
from .constants import ACCUM_REGISTER_BUDGET, BF16_D, BLOCK_K, K_MAJOR, SMEM_BYTES_PER_BLOCK, Epilogue, GemmType, Majors

PEAK_BF16_FLOPS_PER_SM = 989e12 / 132
HBM_BYTES_PER_S = 3.0e12
SM_CLOCK_HZ = 1.83e9
L2_TO_SM_BYTES_PER_S = 11.3e12
L2_BYTES_PER_S_PER_SM = 64 * SM_CLOCK_HZ
_MAX_SM_BANDWIDTH_SHARE = 2.0
_WAVE_OVERHEAD_S = 0.4e-6
MAX_STAGES = 8
MIN_STAGES = 3
"""Fewest stages a candidate tile may run: with two, the producer refills a stage only once the wgmmas of
the block before it are done, so every TMA load's latency would sit between two K blocks."""

BLOCK_MS = (64, 128, 256)
# 192 columns: 11 column blocks fill N = 2112 in 2.7 waves of 128-row tiles where 128 x 128 needs 4.1
# (H100, 4096 x 2112 x 7168: 185.7 us against 254.7, bitwise equal; the model picks it there and nowhere
# else on tools/bench_bf16.py's cases, where the measured best was already the model's choice).
BLOCK_NS = (16, 32, 64, 128, 192, 256)
MN_MAJOR_BLOCK_NS = tuple(n for n in BLOCK_NS if n % 64 == 0)
"""Tile widths an MN-major B can fill: whole 64-wide chunks (one TMA box and swizzle row each)."""

SHORT_ROWS = 32
"""Masked groups of at most this many expected rows run 64-row tiles (decode: weight streaming)."""
DENSE_SHORT_ROWS = 64
"""Dense calls of at most this many rows run 64-row tiles."""
SHARED_B_MIN_ROWS = 256
"""Prefix-sum contiguous groups of at least this many expected rows share B, at every K (the scheduler
pairs m-blocks within one group). H100, 32 groups x 256 rows, 7168 x 2048: 128 x 256 sharing B 452.8 us
against 478.1 unshared, bitwise equal (perf-log v19); the K >= 4096 bound the FP8 family needs did not
carry over."""
SHARED_B_BLOCK_N = 192
SHARED_B_MAX_K = 2048
"""Dense and prefix-sum contiguous calls of at least SHARED_B_MIN_ROWS rows (per group) and a wave of such
tiles run 128 x SHARED_B_BLOCK_N tiles sharing B where K <= SHARED_B_MAX_K, or where the cost model picks
128 x 192 anyway (N = 2112). H100, tools/bench_bf16.py beside the model's tiles in one run (perf-log v22):
4096 x 24576 x 1536 435.1 us against 457.0 (128 x 256), 32 x 256 rows at 7168 x 2048 422.3 against 459.5
(128 x 256 sharing B), 4096 x 2112 x 7168 174.1 against 197.8 (128 x 192); at K = 7168 with a 256-wide
choice it lost (4096 x 4096: 365.4 against 325.9; 8 x 512 rows: 384.0 against 365.4), so those keep the
model's tile. An MN-major B keeps it too (a pair splits B into whole 128-wide chunks)."""


def _round_up(x: int, y: int) -> int:
    return ceil_div(x, y) * y


def warpgroups(block_m: int) -> int:
    """Math warpgroups of a tile (MathShape::kWarpgroups): one for 64 rows, else two."""
    return 1 if block_m == 64 else 2


def smem_bytes(block_m: int, block_n: int, num_stages: int, epilogue: Epilogue = BF16_D) -> int:
    """Shared memory of one CTA (the group table aside). The kernel's SharedLayout must agree: every
    compile passes this number (template argument SMEM_BYTES) and the host entry static_asserts it."""
    stage = (block_m + block_n) * BLOCK_K * 2
    d_tile = _round_up(block_m * block_n * epilogue.d_bytes, 1024)
    barriers = 2 * num_stages + (warpgroups(block_m) if epilogue.accumulate else 0)
    return num_stages * stage + d_tile + barriers * 8 + 1024


def mma_rows(block_m: int) -> int:
    """m64 wgmmas per K step of one math warpgroup (MathShape::kMmaRows): 2 for 256-row tiles."""
    return 2 if block_m == 256 else 1


def fits_registers(block_m: int, block_n: int) -> bool:
    """Whether a math thread's accumulators (BLOCK_N / 2 floats per m64 wgmma) fit kAccumRegisterBudget."""
    return mma_rows(block_m) * block_n // 2 <= ACCUM_REGISTER_BUDGET


def max_stages(block_m: int, block_n: int, epilogue: Epilogue = BF16_D) -> int:
    """Most pipeline stages (up to MAX_STAGES, at least the kernel's 2) that fit beside the D tile in
    shared memory."""
    stages = MAX_STAGES
    while stages > 2 and smem_bytes(block_m, block_n, stages, epilogue) > SMEM_BYTES_PER_BLOCK:
        stages -= 1
    return stages


def _mma_efficiency(block_m: int, block_n: int) -> float:
    warpgroups = 0.6 if block_m == 64 else 0.85
    return warpgroups * block_n / (block_n + 16)


def predict_us(block_m: int, block_n: int, rows_per_group: int, n: int, k: int, num_groups: int,
               num_sms: int, epilogue: Epilogue = BF16_D) -> float:
    """Predicted kernel time in microseconds for ``num_groups`` problems of ``rows_per_group`` rows."""
    m_blocks = num_groups * ceil_div(rows_per_group, block_m)
    tiles = m_blocks * ceil_div(n, block_n)
    waves = ceil_div(tiles, num_sms)
    compute_s = waves * 2.0 * block_m * block_n * k / (PEAK_BF16_FLOPS_PER_SM * _mma_efficiency(block_m, block_n))
    total_rows = num_groups * rows_per_group
    out_bytes = epilogue.d_bytes * (2 if epilogue.accumulate else 1)
    bytes_moved = 2 * (num_groups * n * k + total_rows * k) + out_bytes * total_rows * n
    streaming_share = min(1.0, min(tiles, num_sms) * _MAX_SM_BANDWIDTH_SHARE / num_sms)
    memory_s = bytes_moved / (HBM_BYTES_PER_S * streaming_share)
    tile_l2_bytes = 2 * (min(block_m, rows_per_group) + block_n) * k
    sm_l2_rate = min(L2_TO_SM_BYTES_PER_S / min(tiles, num_sms), L2_BYTES_PER_S_PER_SM)
    l2_s = waves * tile_l2_bytes / sm_l2_rate
    return (max(compute_s, memory_s, l2_s) + waves * _WAVE_OVERHEAD_S) * 1e6


def _fits(epilogue: Epilogue) -> Callable[[int, int], bool]:
    """Whether a tile is a candidate: accumulators within the registers, MIN_STAGES beside the D tile."""
    def fits(block_m: int, block_n: int) -> bool:
        return fits_registers(block_m, block_n) and max_stages(block_m, block_n, epilogue) >= MIN_STAGES
    return fits


def choose_config(rows_per_group: int, n: int, k: int, num_groups: int, num_sms: int,
                  max_block_m: int = 256, epilogue: Epilogue = BF16_D,
                  block_ns: tuple[int, ...] = BLOCK_NS) -> GemmConfig:
    """Cheapest single-CTA configuration for the problem; deterministic in its arguments.

    rows_per_group: M for a dense GEMM, the mean rows per expert for contiguous layouts, or ``expected_m``
    for masked ones. max_block_m: 128 for contiguous layouts, 64 for short (decode) calls. ``epilogue``:
    D's dtype and C, which size the D tile (and so the stages) and the output bytes. ``block_ns``: the
    tile widths to price.
    """
    rows = max(rows_per_group, 1)
    candidates = []
    for block_m, block_n in candidate_tiles(BLOCK_MS, block_ns, max_block_m, rows, _fits(epilogue)):
        stages = max_stages(block_m, block_n, epilogue)
        candidates.append(GemmConfig(block_m, block_n, stages, 1, smem_bytes(block_m, block_n, stages, epilogue),
                                     predict_us(block_m, block_n, rows, n, k, num_groups, num_sms, epilogue)))
    # Every candidate has multicast 1, so the FP8 order's last key never decides here.
    return min(candidates, key=rank_config)


def config_for(gemm_type: GemmType, rows_hint: int, n: int, k: int, num_groups: int, num_sms: int,
               epilogue: Epilogue = BF16_D, majors: Majors = K_MAJOR) -> GemmConfig:
    """The variant one call shape of one layout runs, for a D and C as ``epilogue`` says and operands of
    ``majors``: the cost model's choice under the layout rules of the module docstring."""
    rows = max(rows_hint, 1)
    contiguous = gemm_type in (GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM)
    short = (gemm_type == GemmType.MASKED and rows <= SHORT_ROWS) or \
        (gemm_type == GemmType.NORMAL and rows <= DENSE_SHORT_ROWS)
    max_block_m = 64 if short else 128 if contiguous else 256
    block_ns = MN_MAJOR_BLOCK_NS if majors.b_mn else BLOCK_NS
    chosen = choose_config(rows, n, k, num_groups, num_sms, max_block_m=max_block_m, epilogue=epilogue,
                           block_ns=block_ns)
    pairs = rows >= SHARED_B_MIN_ROWS and num_sms % 2 == 0
    # At least a wave of the shared tiles: fewer (M = 256 against N = 7168: 76) leave SMs the model's
    # narrower choice would fill.
    wave = num_groups * ceil_div(rows, 128) * ceil_div(n, SHARED_B_BLOCK_N) >= num_sms
    if pairs and wave and gemm_type in (GemmType.NORMAL, GemmType.CONTIGUOUS_PSUM) and not majors.b_mn and (
            k <= SHARED_B_MAX_K or (chosen.block_m, chosen.block_n) == (128, SHARED_B_BLOCK_N)):
        stages = max_stages(128, SHARED_B_BLOCK_N, epilogue)
        return GemmConfig(128, SHARED_B_BLOCK_N, stages, 2, smem_bytes(128, SHARED_B_BLOCK_N, stages, epilogue),
                          predict_us(128, SHARED_B_BLOCK_N, rows, n, k, num_groups, num_sms, epilogue),
                          multicast_b=True)
    if gemm_type == GemmType.CONTIGUOUS_PSUM and pairs and chosen.block_m == 128 \
            and not (majors.b_mn and chosen.block_n % 128 != 0):
        return GemmConfig(chosen.block_m, chosen.block_n, chosen.num_stages, 2, chosen.smem_bytes,
                          chosen.predicted_us, multicast_b=True)
    return chosen
