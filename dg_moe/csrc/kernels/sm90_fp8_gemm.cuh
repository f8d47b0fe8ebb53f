#pragma once
// SM90 FP8 GEMM with (1, 128, 128) block scaling: D[bf16] = A[e4m3] @ B[e4m3]^T, for one problem
// (Normal) or for the M-grouped MoE layouts (contiguous, contiguous prefix-sum, masked).
//
// One producer warpgroup issues TMA loads of A, B (128B-swizzled, K-major) and SFA into a
// kNumStages-deep ring of shared-memory stages and fills each tile's SFB table; one or two math
// warpgroups run wgmma on each 128-wide K block (256-row tiles in two 128-row waves), then
// promote: the block's FP32 result is scaled by sfa[row] * sfb[block] and added into separate
// FP32 registers on the CUDA cores, so FP8 accumulation error never builds up across K. The
// epilogue writes BF16 through shared memory with a TMA store, or, for tiles
// holding padding rows or rows past masked_m, with predicated 16-byte stores that never touch them;
// the next tile's first K block is already on the tensor cores while it runs. A last column block
// at most half a tile wide runs on half-width wgmmas, in a K loop of its own.
#include <cuda_bf16.h>
#include <cstdint>
#include <type_traits>

#include "common/cluster.cuh"
#include "common/mbarrier.cuh"
#include "common/named_barrier.cuh"
#include "common/scheduler.cuh"
#include "common/stmatrix.cuh"
#include "common/tma.cuh"
#include "common/wgmma.cuh"
#include "kernels/sm90_fp8_gemm_constants.cuh"

namespace dg_moe::sm90_fp8_gemm {

using sched::GemmType;

constexpr uint32_t kNumProducerThreads = 128;

// A 256-row tile runs as two 128-row waves on the same two math warpgroups: each warpgroup keeps
// one wave's wgmma accumulators and both waves' promoted sums (a second accumulator set would not
// fit in 232 registers), and the tile reads 25 % fewer L2 bytes per FLOP than a 128 x 128 one.
template <uint32_t BLOCK_M>
struct MathShape {
    static constexpr uint32_t kWarpgroups = BLOCK_M == 64 ? 1 : 2;
    static constexpr uint32_t kThreads = kWarpgroups * 128;
    static constexpr uint32_t kWaves = BLOCK_M / (kWarpgroups * 64);
    static constexpr uint32_t kBlockThreads = kThreads + kNumProducerThreads;
};

struct Params {
    const float* sfb;         // [G, ceil(N/128), K/128], K-major
    const int* layout;        // per-row groups, psum ends or masked_m; unused for Normal
    __nv_bfloat16* d;         // for the predicated epilogue: row r starts at d + r * N
    uint32_t m;               // rows of A, or max_m for masked
    uint32_t num_groups;
    uint32_t group_table;     // 1: the launch added num_groups + 1 words of shared memory for the group table
};

template <uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kNumStages, uint32_t SHAPE_K>
struct SharedLayout {
    static constexpr uint32_t kBytesA = BLOCK_M * kBlockK;
    static constexpr uint32_t kBytesB = BLOCK_N * kBlockK;
    static constexpr uint32_t kBytesSFA = BLOCK_M * sizeof(float);
    static constexpr uint32_t kStageBytes = kBytesA + kBytesB + ((kBytesSFA + 1023) / 1024) * 1024;
    static constexpr uint32_t kBytesD = BLOCK_M * BLOCK_N * sizeof(__nv_bfloat16);
    static constexpr uint32_t kOffsetD = kNumStages * kStageBytes;
    // A tile's SFB: one row of K/128 scales per 128-column block it touches (at most two); two
    // tables, so the next tile's is filled while this one's K loop reads it.
    static constexpr uint32_t kOffsetSFB = kOffsetD + ((kBytesD + 1023) / 1024) * 1024;
    static constexpr uint32_t kFloatsSFBTable = 2 * (SHAPE_K / kBlockK);
    static constexpr uint32_t kBytesSFB = 2 * kFloatsSFBTable * sizeof(float);
    static constexpr uint32_t kOffsetBarriers = kOffsetSFB + ((kBytesSFB + 7) / 8) * 8;
    // Barriers: full and empty per stage, then full and empty per SFB table.
    static constexpr uint32_t kNumBarriers = 2 * kNumStages + 4;
    // The masked and prefix-sum layouts' group table (Scheduler::build_block_table) follows, sized at
    // launch: (num_groups + 1) words when they fit, none otherwise; kTotalBytes excludes it.
    static constexpr uint32_t kOffsetGroupTable = kOffsetBarriers + kNumBarriers * sizeof(uint64_t);
    // +1024: the dynamic shared-memory base is only 16-byte aligned; 128B swizzle needs 1024.
    static constexpr uint32_t kTotalBytes = kOffsetGroupTable + 1024;
    static constexpr uint32_t kTxBytes = kBytesA + kBytesB + kBytesSFA;
};

// The D tile is stored as BLOCK_N / kSpan column slabs of [BLOCK_M rows x kSpanBytes], each
// swizzled the way TMA expects for that span, which also keeps the math threads' 4-byte writes
// free of bank conflicts.
template <uint32_t BLOCK_M, uint32_t BLOCK_N>
struct DTile {
    static constexpr uint32_t kSpanBytes = BLOCK_N * 2 < 128 ? BLOCK_N * 2 : 128;
    static constexpr uint32_t kSpanCols = kSpanBytes / 2;
    static constexpr uint32_t kChunks = kSpanBytes / 16;
    static_assert(kSpanBytes == 32 || kSpanBytes == 64 || kSpanBytes == 128, "BLOCK_N must be 16, 32 or a multiple of 64");

    // Byte offset of column `col` (even) of row `row` inside the tile.
    __device__ __forceinline__ static uint32_t offset(uint32_t row, uint32_t col) {
        const uint32_t slab = col / kSpanCols;
        const uint32_t in_span = (col % kSpanCols) * 2;
        const uint32_t chunk = (in_span / 16) ^ (((row * kSpanBytes) >> 7) & (kChunks - 1));
        return slab * BLOCK_M * kSpanBytes + row * kSpanBytes + chunk * 16 + in_span % 16;
    }
};

template <uint32_t SHAPE_N, uint32_t SHAPE_K, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kNumStages,
          GemmType kType, uint32_t kMulticast>
__global__ void __launch_bounds__(MathShape<BLOCK_M>::kBlockThreads, 1)
fp8_gemm_kernel(const Params params, const __grid_constant__ CUtensorMap tmap_a,
                const __grid_constant__ CUtensorMap tmap_b, const __grid_constant__ CUtensorMap tmap_sfa,
                const __grid_constant__ CUtensorMap tmap_d) {
    static_assert(BLOCK_M == 64 || BLOCK_M == 128 || BLOCK_M == 256,
                  "BLOCK_M must be 64 (one math warpgroup), 128 (two) or 256 (two, in two waves)");
    static_assert(BLOCK_M <= sched::kContiguousAlignment || kType == GemmType::Normal ||
                      kType == GemmType::MGroupedMasked,
                  "contiguous groups start on 128-row boundaries: a taller tile could span two experts");
    static_assert(BLOCK_N == 16 || BLOCK_N == 32 || BLOCK_N == 64 || BLOCK_N == 128 || BLOCK_N == 192,
                  "BLOCK_N must divide 128 (one SFB block per tile) or be 192 (two: n0 % 128 is 0 or 64)");
    static_assert(SHAPE_K % kBlockK == 0, "K must be a multiple of 128");
    static_assert(SHAPE_N % 8 == 0, "N must be a multiple of 8 (16-byte BF16 output rows)");
    static_assert(kNumStages >= 2, "the pipeline needs at least two stages");
    static_assert(kMulticast == 1 || kMulticast == 2, "A is shared across clusters of 1 or 2 CTAs");

    using Math = MathShape<BLOCK_M>;
    // Named barriers of math warpgroups 0 and 1: kBarrierEpilogue and the next id (0 is __syncthreads).
    constexpr uint32_t kBarrierEpilogue = 1;
    constexpr uint32_t kNumMathThreads = Math::kThreads;
    constexpr uint32_t kNumWaves = Math::kWaves;
    constexpr uint32_t kNumKBlocks = SHAPE_K / kBlockK;
    constexpr uint32_t kNumSFBBlocksN = sched::ceil_div(SHAPE_N, 128);
    constexpr uint32_t kNumMathWarps = kNumMathThreads / 32;
    constexpr bool kTwoSFB = 128 % BLOCK_N != 0;
    // N = 2112 (and 576, 7232) ends in a 64-wide column block: on 128-wide tiles its wgmmas run at
    // n64, so its tiles cost about half, and the scheduler puts them last, where its serpentine order
    // pairs them up on the same SMs (4096 x 2112: 272 tiles of 256 x 128 are 2.06 waves at full
    // width, 2.0 this way). No multicast: the CTAs of a cluster would disagree on the tile kind.
    constexpr uint32_t kTailCols = SHAPE_N % BLOCK_N;
    constexpr bool kNarrowTail = kTailCols > 0 && 2 * kTailCols <= BLOCK_N && BLOCK_N >= 64 && !kTwoSFB &&
                                 kMulticast == 1;
    constexpr uint32_t kLastNBlock = sched::ceil_div(SHAPE_N, BLOCK_N) - 1;
    using Layout = SharedLayout<BLOCK_M, BLOCK_N, kNumStages, SHAPE_K>;
    using MMA = wgmma::FP8MMA<BLOCK_N>;
    using NarrowMMA = wgmma::FP8MMA<kNarrowTail ? BLOCK_N / 2 : BLOCK_N>;
    static_assert(MMA::kNumAccum * (kNumWaves + 1) <= kAccumRegisterBudget,
                  "one wave's accumulators plus every wave's sums exceed the register budget");
    using D = DTile<BLOCK_M, BLOCK_N>;

    extern __shared__ uint8_t smem_raw[];
    // Offset the array itself rather than round an integer address: derived from smem_raw, every
    // pointer below stays known to be shared, so accesses compile to LDS/STS, not generic LD/ST.
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    auto stage_a = [&](uint32_t s) { return smem + s * Layout::kStageBytes; };
    auto stage_b = [&](uint32_t s) { return smem + s * Layout::kStageBytes + Layout::kBytesA; };
    auto stage_sfa = [&](uint32_t s) {
        return reinterpret_cast<float*>(smem + s * Layout::kStageBytes + Layout::kBytesA + Layout::kBytesB);
    };
    uint8_t* smem_d = smem + Layout::kOffsetD;
    float* smem_sfb = reinterpret_cast<float*>(smem + Layout::kOffsetSFB);
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + Layout::kOffsetBarriers);
    uint64_t* empty = full + kNumStages;
    uint64_t* sfb_full = empty + kNumStages;
    uint64_t* sfb_empty = sfb_full + 2;

    using Scheduler = sched::Scheduler<kType, BLOCK_M, BLOCK_N, SHAPE_N, kMulticast, kNarrowTail>;
    uint32_t* group_table = nullptr;
    if constexpr (Scheduler::kGroupCursor) {
        if (params.group_table != 0)
            group_table = reinterpret_cast<uint32_t*>(smem + Layout::kOffsetGroupTable);
    }

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == kNumMathThreads) {
        tma_prefetch_tensor_map(&tmap_a);
        tma_prefetch_tensor_map(&tmap_b);
        tma_prefetch_tensor_map(&tmap_sfa);
        tma_prefetch_tensor_map(&tmap_d);
        for (uint32_t s = 0; s < kNumStages; ++s) {
            mbarrier_init(full + s, 1);
            // A stage is refilled once the math warps of every CTA it is multicast into released it.
            mbarrier_init(empty + s, kNumMathWarps * kMulticast);
        }
        for (uint32_t b = 0; b < 2; ++b) {
            mbarrier_init(sfb_full + b, 32);  // every lane of the loading warp
            mbarrier_init(sfb_empty + b, kNumMathWarps);
        }
        mbarrier_init_fence();
    }
    // The peer CTA arrives on these barriers and receives multicast copies: both must be set up.
    auto block_sync = [] {
        if constexpr (kMulticast > 1)
            cluster_sync();
        else
            __syncthreads();
    };
    if (group_table != nullptr) {
        Scheduler::build_block_table(group_table, params.layout, params.m, params.num_groups, block_sync);
        __syncthreads();
    } else {
        block_sync();
    }

    Scheduler scheduler(params.layout, params.m, params.num_groups, group_table);
    sched::Tile tile;
    const uint32_t cta_rank = blockIdx.x % kMulticast;

    if (threadIdx.x >= kNumMathThreads) {
        // Producer warpgroup: registers go to the math warpgroups; one thread issues every TMA copy,
        // the next warp fills the SFB tables.
        if constexpr (kNumMathThreads == 256)
            asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == kNumMathThreads) {
            uint32_t iter = 0;
            while (scheduler.next(tile)) {
                const uint32_t b_row = tile.group * SHAPE_N + tile.n_block * BLOCK_N;
                const uint32_t sfa_row = kType == GemmType::MGroupedMasked ? tile.local_row : tile.row;
                const uint32_t sfa_k0 = kType == GemmType::MGroupedMasked ? tile.group * kNumKBlocks : 0;
                // Not unrolled: at 40 registers an unrolled copy loop spilled (128 x 64 tiles, K = 2048).
                #pragma unroll 1
                for (uint32_t k = 0; k < kNumKBlocks; ++k, ++iter) {
                    const uint32_t s = iter % kNumStages, phase = (iter / kNumStages) & 1;
                    mbarrier_wait(empty + s, phase ^ 1);
                    mbarrier_arrive_expect_tx(full + s, Layout::kTxBytes);
                    if constexpr (kMulticast == 1) {
                        tma_load_2d(&tmap_a, stage_a(s), full + s, k * kBlockK, tile.row);
                    } else {
                        // Each CTA fetches its half of A's rows into both CTAs (same offsets).
                        constexpr uint32_t kHalf = BLOCK_M / kMulticast;
                        tma_load_2d_multicast(&tmap_a, stage_a(s) + cta_rank * kHalf * kBlockK, full + s,
                                              k * kBlockK, tile.row + cta_rank * kHalf, (1u << kMulticast) - 1);
                    }
                    tma_load_2d(&tmap_b, stage_b(s), full + s, k * kBlockK, b_row);
                    tma_load_2d(&tmap_sfa, stage_sfa(s), full + s, sfa_row, sfa_k0 + k);
                }
            }
        } else if (warp == kNumMathWarps + 1) {
            // The second producer warp fills each tile's SFB table ahead of its K loop: loaded by the
            // math warps at the tile's start, the L2 round trip and a CTA barrier stalled every tile.
            for (uint32_t t = 0; scheduler.next(tile); ++t) {
                const uint32_t b = t % 2;
                mbarrier_wait(sfb_empty + b, ((t / 2) & 1) ^ 1);
                // A padding n-block of a multicast pair lies past N: clamp its (unused) scale rows.
                const uint32_t sfb_block = min(tile.n_block * BLOCK_N / 128, kNumSFBBlocksN - 1);
                const float* sfb = params.sfb + (tile.group * kNumSFBBlocksN + sfb_block) * kNumKBlocks;
                // A 192-wide tile spans two SFB blocks: the second row holds the next block's scales.
                const float* sfb_next = params.sfb + (tile.group * kNumSFBBlocksN + min(sfb_block + 1, kNumSFBBlocksN - 1)) *
                                                         kNumKBlocks;
                float* table = smem_sfb + b * Layout::kFloatsSFBTable;
                for (uint32_t i = lane; i < kNumKBlocks; i += 32) {
                    table[i] = __ldg(sfb + i);
                    if constexpr (kTwoSFB)
                        table[kNumKBlocks + i] = __ldg(sfb_next + i);
                }
                mbarrier_arrive(sfb_full + b);
            }
        }
    } else {

    // Math warpgroups: warpgroup w owns rows [128 v + 64 w, 128 v + 64 w + 64) of wave v.
    if constexpr (kNumMathThreads == 256)
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    // Broadcast from lane 0 so ptxas knows the value is warp-uniform: the A descriptors built from it
    // then live in uniform registers, and a wave's four wgmmas issue back to back instead of each
    // waiting on R2UR moves of a descriptor built in per-thread registers.
    const uint32_t math_wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
    const uint32_t row_in_wave = math_wg * 64 + (warp % 4) * 16 + lane / 4;  // and row_in_wave + 8
    constexpr uint32_t kWaveRows = BLOCK_M / kNumWaves;
    // Single-wave tiles whose accumulators fit twice run the K loop in pairs of K blocks: the
    // second block's wgmmas run on the tensor cores while the first block is promoted (H100:
    // 128 x 128 tiles 8-14 % faster, 4096^2 x 7168 1039 -> 1126 TFLOPS). Across loop iterations
    // ptxas cannot tell which wgmma a wait_group<1> retires and serialises them all (warning
    // C7514); inside one iteration it can. Two-wave tiles would need 256 registers for this, and a
    // single K block has no partner.
    constexpr bool kPairs = kNumWaves == 1 && 3 * MMA::kNumAccum <= kAccumRegisterBudget && kNumKBlocks >= 2;
    float result[kNumWaves][MMA::kNumAccum];
    uint32_t iter = 0, tile_count = 0;
    // The descriptors are built from this integer address: converted from the generic pointer at
    // every issue, it cost an S2UR of the CTA's shared window on each K loop's critical path.
    const uint32_t smem_addr = smem_u32(smem);
    const uint32_t smem_d_addr = smem_addr + Layout::kOffsetD;

    // Wave v of the K block in stage s, into acc: one commit group. A narrow tile's n64 fragment
    // has the layout of a full-width one's first 64 columns.
    auto issue = [&](auto narrow, uint32_t s, uint32_t v, auto& acc) {
        const uint32_t stage = smem_addr + s * Layout::kStageBytes;
        const uint64_t desc_a = wgmma::smem_desc_k_major_sw128(stage + (v * kWaveRows + math_wg * 64) * kBlockK);
        const uint64_t desc_b = wgmma::smem_desc_k_major_sw128(stage + Layout::kBytesA);
        #pragma unroll
        for (uint32_t i = 0; i < sizeof(acc) / sizeof(float); ++i)
            wgmma::fence_operand(acc[i]);
        wgmma::fence();
        #pragma unroll
        for (uint32_t kk = 0; kk < kBlockK / 32; ++kk) {
            if constexpr (decltype(narrow)::value)
                NarrowMMA::mma(desc_a + kk * 2, desc_b + kk * 2, acc, kk > 0);
            else
                MMA::mma(desc_a + kk * 2, desc_b + kk * 2, acc, kk > 0);  // +32 bytes along K
        }
        wgmma::commit_group();
    };
    auto is_narrow = [&](const sched::Tile& t) { return kNarrowTail && t.n_block == kLastNBlock; };
    // A tile's first K block (first two with pairs), wave 0, is issued before the previous tile's
    // epilogue, so the tensor cores work while the math threads write that tile out (H200, 256 x 128
    // tiles: 4096^2 x 7168 1159 -> 1252 TFLOPS, 4096 x 32768 x 512 955 -> 1004).
    auto issue_ahead = [&](auto narrow, auto& accum) {
        mbarrier_wait(full + iter % kNumStages, (iter / kNumStages) & 1);
        issue(narrow, iter % kNumStages, 0, accum[0]);
        if constexpr (kPairs) {
            mbarrier_wait(full + (iter + 1) % kNumStages, ((iter + 1) / kNumStages) & 1);
            issue(narrow, (iter + 1) % kNumStages, 0, accum[kPairs ? 1 : 0]);
        }
    };

    // Epilogue, per math warpgroup: each writes its own rows of the D tile and issues their TMA
    // stores, with barriers among its own 128 threads only. A CTA-wide barrier here put the two
    // warpgroups back in step at every tile, promoting at the same time while the tensor cores idle.
    // Storing D straight from the accumulator registers (no D tile, one more stage) was measured 2x
    // slower at K = 512: 16-byte fragments of 8 rows per warp store cost more than this round trip.
    const bool store_leader = threadIdx.x % 128 == 0;
    auto warpgroup_sync = [&]() {
        if (math_wg == 0)
            named_barrier_sync<kBarrierEpilogue, 128>();
        else
            named_barrier_sync<kBarrierEpilogue + 1, 128>();
    };
    auto write_out = [&](const sched::Tile& out) {
        // This warpgroup's previous TMA stores must have finished reading its rows of smem_d.
        if (store_leader)
            tma_store_wait_read<0>();
        warpgroup_sync();
        // Sixteen columns per stmatrix.x4: accumulators 8j..8j+7 are rows 0-7 and 8-15 of column
        // chunks 2j and 2j + 1, the four 8x8 matrices in stmatrix's order (a quarter of the
        // instructions of 4-byte stores).
        #pragma unroll
        for (uint32_t v = 0; v < kNumWaves; ++v)
            #pragma unroll
            for (uint32_t j = 0; j < BLOCK_N / 16; ++j) {
                const uint32_t row = v * kWaveRows + math_wg * 64 + (warp % 4) * 16 + lane % 8 + 8 * ((lane / 8) % 2);
                const uint32_t col = 16 * j + 8 * (lane / 16);
                const float* acc = result[v] + 8 * j;
                stmatrix_x4(smem_d_addr + D::offset(row, col), pack_bf16x2(acc[0], acc[1]), pack_bf16x2(acc[2], acc[3]),
                            pack_bf16x2(acc[4], acc[5]), pack_bf16x2(acc[6], acc[7]));
            }
        tma_fence_shared();
        warpgroup_sync();

        const uint32_t col0 = out.n_block * BLOCK_N;
        // Normal tiles always take the TMA store: it clips rows past M and columns past N itself.
        if (kType == GemmType::Normal || (out.valid_rows == BLOCK_M && !out.check_rows)) {
            if (store_leader) {
                #pragma unroll
                for (uint32_t slab = 0; slab < BLOCK_N / D::kSpanCols; ++slab)
                    #pragma unroll
                    for (uint32_t v = 0; v < kNumWaves; ++v) {
                        const uint32_t row = v * kWaveRows + math_wg * 64;
                        tma_store_2d(&tmap_d, smem_d + slab * BLOCK_M * D::kSpanBytes + row * D::kSpanBytes,
                                     col0 + slab * D::kSpanCols, out.row + row);
                    }
                tma_store_commit();
            }
        } else {
            // Tiles with padding rows or rows past masked_m: only real rows are written.
            constexpr uint32_t kChunksPerRow = BLOCK_N / 8;
            for (uint32_t idx = threadIdx.x % 128; idx < kNumWaves * 64 * kChunksPerRow; idx += 128) {
                const uint32_t j = idx / kChunksPerRow, c = (idx % kChunksPerRow) * 8;
                const uint32_t r = (j / 64) * kWaveRows + math_wg * 64 + j % 64;
                bool write = r < out.valid_rows && col0 + c < SHAPE_N;
                if (out.check_rows && write)
                    write = __ldg(params.layout + out.row + r) >= 0;
                if (write)
                    *reinterpret_cast<uint4*>(params.d + static_cast<uint64_t>(out.row + r) * SHAPE_N + col0 + c) =
                        *reinterpret_cast<const uint4*>(smem_d + D::offset(r, c));
            }
        }
    };

    // Runs `tile` and the tiles after it while they are of one kind (narrow or not); returns whether
    // another tile follows (then in `tile`). Each kind has its own loop: a K loop that branched
    // between n64 and n128 wgmmas made ptxas serialise them (C7511). The scheduler orders every
    // narrow tile after the full ones, so a CTA runs each loop at most once.
    // A loop is entered, and re-entered, only with the tile's first wgmmas in flight: where a path
    // without them merged in, ptxas waited for them right after the issue (C7517).
    auto run_tiles = [&](auto narrow) -> bool {
        // Each kind has its own accumulators: sharing them between n64 and n128 wgmmas left ptxas short
        // of registers for the wgmma pipeline (C7511).
        constexpr uint32_t kNumAccum = decltype(narrow)::value ? NarrowMMA::kNumAccum : MMA::kNumAccum;
        float accum[kPairs ? 2 : 1][kNumAccum];
        issue_ahead(narrow, accum);
        for (;; ++tile_count) {
            // Columns of a 192-wide tile at or past `split` take the second SFB row.
            const uint32_t split = 128 - (tile.n_block * BLOCK_N) % 128;
            const uint32_t table_index = tile_count % 2;
            const float* table = smem_sfb + table_index * Layout::kFloatsSFBTable;
            mbarrier_wait(sfb_full + table_index, (tile_count / 2) & 1);
            #pragma unroll
            for (uint32_t v = 0; v < kNumWaves; ++v)
                #pragma unroll
                for (uint32_t i = 0; i < MMA::kNumAccum; ++i)
                    result[v][i] = 0.0f;

            // sfa * sfb of this thread's two rows, for the tile's first and second SFB block; computed
            // while the tensor cores work, and before the stage (which holds the SFA) is released.
            auto scales = [&](uint32_t s, uint32_t v, uint32_t k) {
                const uint32_t row = v * kWaveRows + row_in_wave;
                const float sfa_0 = stage_sfa(s)[row], sfa_1 = stage_sfa(s)[row + 8];
                const float scale_b = table[k], scale_b2 = kTwoSFB ? table[kNumKBlocks + k] : 0.0f;
                return float4{sfa_0 * scale_b, sfa_1 * scale_b, sfa_0 * scale_b2, sfa_1 * scale_b2};
            };
            // This warp is done reading stage s (its wgmmas completed, and its SFA values were consumed
            // by `scales`, in a converged warp): tell the producer of every CTA that multicasts into it.
            auto release = [&](uint32_t s) {
                if (lane == 0) {
                    mbarrier_arrive(empty + s);
                    if constexpr (kMulticast == 2)
                        mbarrier_arrive_cluster(empty + s, cta_rank ^ 1);
                }
            };
            // Accumulator i of m64nNk32 holds row (lane / 4) + 8 * ((i / 2) % 2), column 8 * (i / 4) + 2 * (lane % 4) + i % 2.
            // A narrow tile's sums past its half width stay zero: those columns lie past N.
            auto promote = [&](const float4& scale, uint32_t v, float (&acc)[kNumAccum]) {
                #pragma unroll
                for (uint32_t i = 0; i < kNumAccum; ++i)
                    wgmma::fence_operand(acc[i]);
                #pragma unroll
                for (uint32_t i = 0; i < kNumAccum; ++i) {
                    const bool second_block = kTwoSFB && 8 * (i / 4) >= split;
                    const float sc = (i / 2) % 2 == 0 ? (second_block ? scale.z : scale.x) : (second_block ? scale.w : scale.y);
                    result[v][i] += sc * acc[i];
                }
            };
            // One K block, every wave in turn through one accumulator set; `ahead`: wave 0 already issued.
            auto single_block = [&](uint32_t k, bool ahead) {
                const uint32_t s = iter % kNumStages;
                if (!ahead)
                    mbarrier_wait(full + s, (iter / kNumStages) & 1);
                #pragma unroll
                for (uint32_t v = 0; v < kNumWaves; ++v) {
                    if (v > 0 || !ahead)
                        issue(narrow, s, v, accum[0]);
                    const float4 scale = scales(s, v, k);
                    wgmma::wait_group<0>();
                    if (v == kNumWaves - 1)
                        release(s);
                    promote(scale, v, accum[0]);
                }
                ++iter;
            };
            // K blocks k and k + 1: the second one's wgmmas run while the first is promoted.
            auto pair = [&](uint32_t k, bool ahead) {
                const uint32_t s0 = iter % kNumStages, s1 = (iter + 1) % kNumStages;
                if (!ahead) {
                    mbarrier_wait(full + s0, (iter / kNumStages) & 1);
                    issue(narrow, s0, 0, accum[0]);
                }
                const float4 scale0 = scales(s0, 0, k);
                if (!ahead) {
                    mbarrier_wait(full + s1, ((iter + 1) / kNumStages) & 1);
                    issue(narrow, s1, 0, accum[kPairs ? 1 : 0]);
                }
                const float4 scale1 = scales(s1, 0, k + 1);
                wgmma::wait_group<1>();
                release(s0);
                promote(scale0, 0, accum[0]);
                wgmma::wait_group<0>();
                release(s1);
                promote(scale1, 0, accum[kPairs ? 1 : 0]);
                iter += 2;
            };

            if constexpr (kPairs) {
                pair(0, true);
                for (uint32_t k = 2; k + 1 < kNumKBlocks; k += 2)
                    pair(k, false);
                if constexpr (kNumKBlocks % 2 == 1)
                    single_block(kNumKBlocks - 1, false);
            } else {
                single_block(0, true);
                for (uint32_t k = 1; k < kNumKBlocks; ++k)
                    single_block(k, false);
            }

            // The K loop's last read of the SFB table is done in every lane of this warp.
            __syncwarp();
            if (lane == 0)
                mbarrier_arrive(sfb_empty + table_index);

            sched::Tile next_tile;
            const bool more = scheduler.next(next_tile);
            if (!more || is_narrow(next_tile) != decltype(narrow)::value) {
                write_out(tile);
                tile = next_tile;
                ++tile_count;
                return more;
            }
            // The wgmmas issued here stay in flight through the epilogue. Every path back to the loop
            // head has them in flight (ptxas otherwise waits for them where the paths merge, C7517).
            issue_ahead(narrow, accum);
            write_out(tile);
            tile = next_tile;
        }  // tile loop
    };

    bool more = scheduler.next(tile);
    if (more && !is_narrow(tile))
        more = run_tiles(std::false_type{});
    if constexpr (kNarrowTail) {
        if (more)
            run_tiles(std::true_type{});
    }
    if (store_leader)
        tma_store_wait<0>();
    }
    // No CTA may leave while its peer can still multicast into it or arrive on its barriers.
    if constexpr (kMulticast > 1)
        cluster_sync();
}

}  // namespace dg_moe::sm90_fp8_gemm
