#pragma once
// SM90 FP8 GEMM with (1, 128, 128) block scaling: D[bf16] = A[e4m3] @ B[e4m3]^T, for one problem
// (Normal) or for the M-grouped MoE layouts (contiguous, contiguous prefix-sum, masked).
//
// Roles (a persistent grid, one CTA per SM; every role walks the same tile sequence, so they agree
// on every tile without communicating):
// - producer warpgroup (the last 128 threads; 40 registers each after setmaxnreg):
//   - one elected lane of its first warp issues the TMA loads of A, B (128B-swizzled, K-major) and SFA into a
//     kNumStages-deep ring of shared-memory stages, one stage per 128-wide K block;
//   - its second warp copies each tile's SFB row(s) from global memory into one of two tables;
// - one or two math warpgroups (232 registers each): wgmma on each K block, then promotion: the
//   block's FP32 result is scaled by sfa[row] * sfb[block] and added into separate FP32 registers on
//   the CUDA cores, so FP8 accumulation error never builds up across K; then the epilogue.
//
// Timeline of one math warpgroup over a tile (a 256-row tile runs as two 128-row waves through one
// accumulator set; a single-wave tile runs K blocks in pairs through two):
//   tile t:   [K block 0, issued during tile t-1's epilogue] -> wait SFB table
//             -> per K block: wait full[s] -> wgmma x4 (one commit group) -> read sfa, sfb
//                             -> wait the group -> arrive empty[s] -> promote
//             -> release the SFB table -> issue tile t+1's K block 0 -> epilogue of tile t
//   producer: runs up to kNumStages K blocks ahead of the slower math warpgroup (empty[s] counts
//             every math warp of every CTA that reads stage s).
// The epilogue writes BF16 through shared memory (stmatrix) and a TMA store, or, for tiles holding
// padding rows or rows past masked_m, with predicated 16-byte stores that never touch them. A last
// column block at most half a tile wide runs on half-width wgmmas, in a K loop of its own.
#include <cuda_bf16.h>
#include <cstdint>
#include <type_traits>

#include "common/elect.cuh"
#include "common/gemm_roles.cuh"
#include "common/mbarrier.cuh"
#include "common/named_barrier.cuh"
#include "common/scheduler.cuh"
#include "common/stmatrix.cuh"
#include "common/tma.cuh"
#include "common/unroll.cuh"
#include "common/wgmma.cuh"
#include "kernels/sm90_fp8_gemm_constants.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error \
    "sm90_fp8_gemm needs wgmma and setmaxnreg, which exist on sm_90a only: build with -gencode=arch=compute_90a,code=sm_90a"
#endif

namespace dg_moe::sm90_fp8_gemm {

using sched::GemmType;

constexpr uint32_t kNumProducerThreads = 128;
// With two math warpgroups: 128 x 40 + 256 x 232 = 64512 of the SM's 65536 registers.
constexpr uint32_t kProducerRegisters = 40;
constexpr uint32_t kMathRegisters = 232;

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
    const float* sfb;   // [G, ceil(N/128), K/128], K-major
    const int* layout;  // per-row groups, psum ends or masked_m; unused for Normal
    __nv_bfloat16* d;   // for the predicated epilogue: row r starts at d + r * N
    uint32_t m;         // rows of A, or max_m for masked
    uint32_t num_groups;
    uint32_t group_table;  // 1: the launch added num_groups + 1 words of shared memory for the group table
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
    static_assert(kSpanBytes == 32 || kSpanBytes == 64 || kSpanBytes == 128,
                  "BLOCK_N must be 16, 32 or a multiple of 64");

    // Byte offset of column `col` (even) of row `row` inside the tile.
    __device__ __forceinline__ static uint32_t offset(uint32_t row, uint32_t col) {
        const uint32_t slab = col / kSpanCols;
        const uint32_t in_span = (col % kSpanCols) * 2;
        const uint32_t chunk = (in_span / 16) ^ (((row * kSpanBytes) >> 7) & (kChunks - 1));
        return slab * BLOCK_M * kSpanBytes + row * kSpanBytes + chunk * 16 + in_span % 16;
    }
};

// Compile-time facts of one variant, shared by every role.
template <uint32_t SHAPE_N_, uint32_t SHAPE_K_, uint32_t BLOCK_M_, uint32_t BLOCK_N_, uint32_t kNumStages_,
          GemmType kType_, uint32_t kMulticast_, bool kMulticastB_>
struct Variant {
    static constexpr uint32_t SHAPE_N = SHAPE_N_, SHAPE_K = SHAPE_K_, BLOCK_M = BLOCK_M_, BLOCK_N = BLOCK_N_;
    static constexpr uint32_t kNumStages = kNumStages_, kMulticast = kMulticast_;
    // With kMulticast = 2, the cluster's CTAs share A (two n-blocks of one m-block) or, with kMulticastB,
    // B (two m-blocks of one n-block; see sched::Scheduler).
    static constexpr bool kMulticastB = kMulticastB_;
    static constexpr GemmType kType = kType_;

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
    static_assert(kMulticast == 1 || kMulticast == 2, "A or B is shared across clusters of 1 or 2 CTAs");
    static_assert(!kMulticastB || kMulticast == 2, "sharing B needs a 2-CTA cluster");
    static_assert(!kMulticastB || BLOCK_N % 16 == 0,
                  "each CTA of a B-sharing pair loads BLOCK_N / 2 rows of B, a multiple of 8");

    using Math = MathShape<BLOCK_M>;
    static constexpr uint32_t kNumMathThreads = Math::kThreads;
    static constexpr uint32_t kNumMathWarps = kNumMathThreads / 32;
    static constexpr uint32_t kNumWaves = Math::kWaves;
    static constexpr uint32_t kWaveRows = BLOCK_M / kNumWaves;
    static constexpr uint32_t kNumKBlocks = SHAPE_K / kBlockK;
    static constexpr uint32_t kNumSFBBlocksN = sched::ceil_div(SHAPE_N, 128);
    static constexpr bool kTwoSFB = 128 % BLOCK_N != 0;
    // N = 2112 (and 576, 7232) ends in a 64-wide column block: on 128-wide tiles its wgmmas run at
    // n64, so its tiles cost about half, and the scheduler puts them last, where its serpentine order
    // pairs them up on the same SMs (4096 x 2112: 272 tiles of 256 x 128 are 2.06 waves at full
    // width, 2.0 this way). No multicast: the CTAs of a cluster would disagree on the tile kind.
    static constexpr uint32_t kTailCols = SHAPE_N % BLOCK_N;
    static constexpr bool kNarrowTail =
        kTailCols > 0 && 2 * kTailCols <= BLOCK_N&& BLOCK_N >= 64 && !kTwoSFB && kMulticast == 1;
    static constexpr uint32_t kLastNBlock = sched::ceil_div(SHAPE_N, BLOCK_N) - 1;

    using Layout = SharedLayout<BLOCK_M, BLOCK_N, kNumStages, SHAPE_K>;
    using MMA = wgmma::FP8MMA<BLOCK_N>;
    using NarrowMMA = wgmma::FP8MMA<kNarrowTail ? BLOCK_N / 2 : BLOCK_N>;
    using D = DTile<BLOCK_M, BLOCK_N>;
    using Scheduler = sched::Scheduler<kType, BLOCK_M, BLOCK_N, SHAPE_N, kMulticast, kMulticastB, kNarrowTail>;
    static_assert(MMA::kNumAccum * (kNumWaves + 1) <= kAccumRegisterBudget,
                  "one wave's accumulators plus every wave's sums exceed the register budget");
    // Single-wave tiles whose accumulators fit twice run the K loop in pairs of K blocks: the
    // second block's wgmmas run on the tensor cores while the first block is promoted (H100:
    // 128 x 128 tiles 8-14 % faster, 4096^2 x 7168 1039 -> 1126 TFLOPS). Across loop iterations
    // ptxas cannot tell which wgmma a wait_group<1> retires and serialises them all (warning
    // C7514); inside one iteration it can. Two-wave tiles would need 256 registers for this, and a
    // single K block has no partner.
    static constexpr bool kPairs = kNumWaves == 1 && 3 * MMA::kNumAccum <= kAccumRegisterBudget && kNumKBlocks >= 2;
};

// The CTA's shared memory, carved as SharedLayout says.
template <typename V>
struct SharedState {
    using Layout = typename V::Layout;
    uint8_t* base;  // 1024-byte aligned

    __device__ __forceinline__ uint8_t* stage_a(uint32_t s) const { return base + s * Layout::kStageBytes; }
    __device__ __forceinline__ uint8_t* stage_b(uint32_t s) const {
        return base + s * Layout::kStageBytes + Layout::kBytesA;
    }
    __device__ __forceinline__ float* stage_sfa(uint32_t s) const {
        return reinterpret_cast<float*>(base + s * Layout::kStageBytes + Layout::kBytesA + Layout::kBytesB);
    }
    __device__ __forceinline__ uint8_t* d_tile() const { return base + Layout::kOffsetD; }
    __device__ __forceinline__ float* sfb_tables() const { return reinterpret_cast<float*>(base + Layout::kOffsetSFB); }
    __device__ __forceinline__ uint64_t* full() const {
        return reinterpret_cast<uint64_t*>(base + Layout::kOffsetBarriers);
    }
    __device__ __forceinline__ uint64_t* empty() const { return full() + V::kNumStages; }
    __device__ __forceinline__ uint64_t* sfb_full() const { return empty() + V::kNumStages; }
    __device__ __forceinline__ uint64_t* sfb_empty() const { return sfb_full() + 2; }
    __device__ __forceinline__ uint32_t* group_table() const {
        return reinterpret_cast<uint32_t*>(base + Layout::kOffsetGroupTable);
    }
};

template <typename V>
__device__ __forceinline__ void init_barriers(const SharedState<V>& smem) {
    for (uint32_t s = 0; s < V::kNumStages; ++s) {
        mbarrier_init(smem.full() + s, 1);
        // A stage is refilled once the math warps of every CTA it is multicast into released it.
        mbarrier_init(smem.empty() + s, V::kNumMathWarps * V::kMulticast);
    }
    for (uint32_t b = 0; b < 2; ++b) {
        mbarrier_init(smem.sfb_full() + b, 32);  // every lane of the loading warp
        mbarrier_init(smem.sfb_empty() + b, V::kNumMathWarps);
    }
    mbarrier_init_fence();
}

// Producer thread: every TMA load of A, B and SFA, one stage per K block of every tile.
template <typename V>
__device__ __forceinline__ void load_operands(const SharedState<V>& smem, typename V::Scheduler& scheduler,
                                              const CUtensorMap* tmap_a, const CUtensorMap* tmap_b,
                                              const CUtensorMap* tmap_sfa, uint32_t cta_rank) {
    sched::Tile tile;
    uint64_t* full = smem.full();
    uint64_t* empty = smem.empty();
    uint32_t iter = 0;
    while (scheduler.next(tile)) {
        const uint32_t b_row = tile.group * V::SHAPE_N + tile.n_block * V::BLOCK_N;
        const uint32_t sfa_row = V::kType == GemmType::MGroupedMasked ? tile.local_row : tile.row;
        const uint32_t sfa_k0 = V::kType == GemmType::MGroupedMasked ? tile.group * V::kNumKBlocks : 0;
        // Not unrolled: at 40 registers an unrolled copy loop spilled (128 x 64 tiles, K = 2048).
        DG_MOE_NO_UNROLL
        for (uint32_t k = 0; k < V::kNumKBlocks; ++k, ++iter) {
            const uint32_t s = iter % V::kNumStages, phase = (iter / V::kNumStages) & 1;
            mbarrier_wait(empty + s, phase ^ 1);
            mbarrier_arrive_expect_tx(full + s, V::Layout::kTxBytes);
            if constexpr (V::kMulticast == 1 || V::kMulticastB) {
                tma_load_2d(tmap_a, smem.stage_a(s), full + s, k * kBlockK, tile.row);
            } else {
                // Each CTA fetches its half of A's rows into both CTAs (same offsets).
                constexpr uint32_t kHalf = V::BLOCK_M / V::kMulticast;
                tma_load_2d_multicast(tmap_a, smem.stage_a(s) + cta_rank * kHalf * kBlockK, full + s, k * kBlockK,
                                      tile.row + cta_rank * kHalf, (1u << V::kMulticast) - 1);
            }
            if constexpr (!V::kMulticastB) {
                tma_load_2d(tmap_b, smem.stage_b(s), full + s, k * kBlockK, b_row);
            } else {
                // B's map loads half a tile: each CTA fetches its half into both CTAs, or, where the
                // pair's tiles read different B rows, both halves into its own stage.
                constexpr uint32_t kHalf = V::BLOCK_N / 2;
                if (tile.multicast_b) {
                    tma_load_2d_multicast(tmap_b, smem.stage_b(s) + cta_rank * kHalf * kBlockK, full + s, k * kBlockK,
                                          b_row + cta_rank * kHalf, 0b11);
                } else {
                    tma_load_2d(tmap_b, smem.stage_b(s), full + s, k * kBlockK, b_row);
                    tma_load_2d(tmap_b, smem.stage_b(s) + kHalf * kBlockK, full + s, k * kBlockK, b_row + kHalf);
                }
            }
            tma_load_2d(tmap_sfa, smem.stage_sfa(s), full + s, sfa_row, sfa_k0 + k);
        }
    }
}

// Second producer warp: fills each tile's SFB table ahead of its K loop. Loaded by the math warps at
// the tile's start, the L2 round trip and a CTA barrier stalled every tile.
template <typename V>
__device__ __forceinline__ void fill_sfb_tables(const SharedState<V>& smem, typename V::Scheduler& scheduler,
                                                const Params& params, uint32_t lane) {
    sched::Tile tile;
    for (uint32_t t = 0; scheduler.next(tile); ++t) {
        const uint32_t b = t % 2;
        mbarrier_wait(smem.sfb_empty() + b, ((t / 2) & 1) ^ 1);
        // A padding n-block of a multicast pair lies past N: clamp its (unused) scale rows.
        const uint32_t sfb_block = min(tile.n_block * V::BLOCK_N / 128, V::kNumSFBBlocksN - 1);
        const float* sfb = params.sfb + (tile.group * V::kNumSFBBlocksN + sfb_block) * V::kNumKBlocks;
        // A 192-wide tile spans two SFB blocks: the second row holds the next block's scales.
        const float* sfb_next =
            params.sfb + (tile.group * V::kNumSFBBlocksN + min(sfb_block + 1, V::kNumSFBBlocksN - 1)) * V::kNumKBlocks;
        float* table = smem.sfb_tables() + b * V::Layout::kFloatsSFBTable;
        for (uint32_t i = lane; i < V::kNumKBlocks; i += 32) {
            table[i] = __ldg(sfb + i);
            if constexpr (V::kTwoSFB)
                table[V::kNumKBlocks + i] = __ldg(sfb_next + i);
        }
        mbarrier_arrive(smem.sfb_full() + b);
    }
}

// One math warpgroup: warpgroup w owns rows [128 v + 64 w, 128 v + 64 w + 64) of wave v.
template <typename V>
struct MathWarpgroup {
    using MMA = typename V::MMA;
    using NarrowMMA = typename V::NarrowMMA;
    using Layout = typename V::Layout;
    using D = typename V::D;
    // Named barriers of math warpgroups 0 and 1: kBarrierEpilogue and the next id (0 is __syncthreads).
    static constexpr uint32_t kBarrierEpilogue = 1;

    const SharedState<V>& smem;
    const Params& params;
    const CUtensorMap* tmap_d;
    typename V::Scheduler& scheduler;
    const uint32_t cta_rank, warp, lane;
    // Broadcast from lane 0 so ptxas knows the value is warp-uniform: the A descriptors built from it
    // then live in uniform registers, and a wave's four wgmmas issue back to back instead of each
    // waiting on R2UR moves of a descriptor built in per-thread registers.
    const uint32_t math_wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
    const uint32_t row_in_wave = math_wg * 64 + (warp % 4) * 16 + lane / 4;  // and row_in_wave + 8
    const bool store_leader = threadIdx.x % 128 == 0;
    // The descriptors are built from this integer address: converted from the generic pointer at
    // every issue, it cost an S2UR of the CTA's shared window on each K loop's critical path.
    const uint32_t smem_addr = smem_u32(smem.base);
    const uint32_t smem_d_addr = smem_addr + Layout::kOffsetD;

    float result[V::kNumWaves][MMA::kNumAccum];
    uint32_t iter = 0, tile_count = 0;
    sched::Tile tile;

    __device__ __forceinline__ MathWarpgroup(const SharedState<V>& smem_, const Params& params_,
                                             const CUtensorMap* tmap_d_, typename V::Scheduler& scheduler_,
                                             uint32_t cta_rank_, uint32_t warp_, uint32_t lane_)
        : smem(smem_),
          params(params_),
          tmap_d(tmap_d_),
          scheduler(scheduler_),
          cta_rank(cta_rank_),
          warp(warp_),
          lane(lane_) {}

    template <bool kNarrow>
    static constexpr uint32_t kNumAccum = kNarrow ? NarrowMMA::kNumAccum : MMA::kNumAccum;

    __device__ __forceinline__ static bool is_narrow(const sched::Tile& t) {
        return V::kNarrowTail && t.n_block == V::kLastNBlock;
    }

    // Wave v of the K block in stage s, into acc: one commit group. A narrow tile's n64 fragment
    // has the layout of a full-width one's first 64 columns.
    template <bool kNarrow, typename Accum>
    __device__ __forceinline__ void issue(uint32_t s, uint32_t v, Accum& acc) {
        const uint32_t stage = smem_addr + s * Layout::kStageBytes;
        const uint64_t desc_a = wgmma::smem_desc_k_major_sw128(stage + (v * V::kWaveRows + math_wg * 64) * kBlockK);
        const uint64_t desc_b = wgmma::smem_desc_k_major_sw128(stage + Layout::kBytesA);
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < sizeof(acc) / sizeof(float); ++i)
            wgmma::fence_operand(acc[i]);
        wgmma::fence();
        DG_MOE_UNROLL
        for (uint32_t kk = 0; kk < kBlockK / 32; ++kk) {
            if constexpr (kNarrow)
                NarrowMMA::mma(desc_a + kk * 2, desc_b + kk * 2, acc, kk > 0);
            else
                MMA::mma(desc_a + kk * 2, desc_b + kk * 2, acc, kk > 0);  // +32 bytes along K
        }
        wgmma::commit_group();
    }

    // A tile's first K block (first two with pairs), wave 0, is issued before the previous tile's
    // epilogue, so the tensor cores work while the math threads write that tile out (H200, 256 x 128
    // tiles: 4096^2 x 7168 1159 -> 1252 TFLOPS, 4096 x 32768 x 512 955 -> 1004).
    template <bool kNarrow, typename Accum>
    __device__ __forceinline__ void issue_ahead(Accum& accum) {
        mbarrier_wait(smem.full() + iter % V::kNumStages, (iter / V::kNumStages) & 1);
        issue<kNarrow>(iter % V::kNumStages, 0, accum[0]);
        if constexpr (V::kPairs) {
            mbarrier_wait(smem.full() + (iter + 1) % V::kNumStages, ((iter + 1) / V::kNumStages) & 1);
            issue<kNarrow>((iter + 1) % V::kNumStages, 0, accum[V::kPairs ? 1 : 0]);
        }
    }

    __device__ __forceinline__ void warpgroup_sync() const {
        if (math_wg == 0)
            named_barrier_sync<kBarrierEpilogue, 128>();
        else
            named_barrier_sync<kBarrierEpilogue + 1, 128>();
    }

    // Epilogue, per math warpgroup: each writes its own rows of the D tile and issues their TMA
    // stores, with barriers among its own 128 threads only. A CTA-wide barrier here put the two
    // warpgroups back in step at every tile, promoting at the same time while the tensor cores idle.
    // Storing D straight from the accumulator registers (no D tile, one more stage) was measured 2x
    // slower at K = 512: 16-byte fragments of 8 rows per warp store cost more than this round trip.
    __device__ __forceinline__ void write_out(const sched::Tile& out) {
        // This warpgroup's previous TMA stores must have finished reading its rows of smem_d.
        if (store_leader)
            tma_store_wait_read<0>();
        warpgroup_sync();
        // Sixteen columns per stmatrix.x4: accumulators 8j..8j+7 are rows 0-7 and 8-15 of column
        // chunks 2j and 2j + 1, the four 8x8 matrices in stmatrix's order (a quarter of the
        // instructions of 4-byte stores).
        DG_MOE_UNROLL
        for (uint32_t v = 0; v < V::kNumWaves; ++v)
            DG_MOE_UNROLL
        for (uint32_t j = 0; j < V::BLOCK_N / 16; ++j) {
            const uint32_t row = v * V::kWaveRows + math_wg * 64 + (warp % 4) * 16 + lane % 8 + 8 * ((lane / 8) % 2);
            const uint32_t col = 16 * j + 8 * (lane / 16);
            const float* acc = result[v] + 8 * j;
            stmatrix_x4(smem_d_addr + D::offset(row, col), pack_bf16x2(acc[0], acc[1]), pack_bf16x2(acc[2], acc[3]),
                        pack_bf16x2(acc[4], acc[5]), pack_bf16x2(acc[6], acc[7]));
        }
        tma_fence_shared();
        warpgroup_sync();

        const uint32_t col0 = out.n_block * V::BLOCK_N;
        uint8_t* smem_d = smem.d_tile();
        // Normal tiles always take the TMA store: it clips rows past M and columns past N itself.
        if (V::kType == GemmType::Normal || (out.valid_rows == V::BLOCK_M && !out.check_rows)) {
            if (store_leader) {
                DG_MOE_UNROLL
                for (uint32_t slab = 0; slab < V::BLOCK_N / D::kSpanCols; ++slab)
                    DG_MOE_UNROLL
                for (uint32_t v = 0; v < V::kNumWaves; ++v) {
                    const uint32_t row = v * V::kWaveRows + math_wg * 64;
                    tma_store_2d(tmap_d, smem_d + slab * V::BLOCK_M * D::kSpanBytes + row * D::kSpanBytes,
                                 col0 + slab * D::kSpanCols, out.row + row);
                }
                tma_store_commit();
            }
        } else {
            // Tiles with padding rows or rows past masked_m: only real rows are written.
            constexpr uint32_t kChunksPerRow = V::BLOCK_N / 8;
            for (uint32_t idx = threadIdx.x % 128; idx < V::kNumWaves * 64 * kChunksPerRow; idx += 128) {
                const uint32_t j = idx / kChunksPerRow, c = (idx % kChunksPerRow) * 8;
                const uint32_t r = (j / 64) * V::kWaveRows + math_wg * 64 + j % 64;
                bool write = r < out.valid_rows && col0 + c < V::SHAPE_N;
                if (out.check_rows && write)
                    write = __ldg(params.layout + out.row + r) >= 0;
                if (write)
                    *reinterpret_cast<uint4*>(params.d + static_cast<uint64_t>(out.row + r) * V::SHAPE_N + col0 + c) =
                        *reinterpret_cast<const uint4*>(smem_d + D::offset(r, c));
            }
        }
    }

    // sfa * sfb of this thread's two rows, for the tile's first and second SFB block; computed while
    // the tensor cores work, and before the stage (which holds the SFA) is released.
    __device__ __forceinline__ float4 scales(const float* table, uint32_t s, uint32_t v, uint32_t k) const {
        const uint32_t row = v * V::kWaveRows + row_in_wave;
        const float sfa_0 = smem.stage_sfa(s)[row], sfa_1 = smem.stage_sfa(s)[row + 8];
        const float scale_b = table[k], scale_b2 = V::kTwoSFB ? table[V::kNumKBlocks + k] : 0.0f;
        return float4{sfa_0 * scale_b, sfa_1 * scale_b, sfa_0 * scale_b2, sfa_1 * scale_b2};
    }

    // This warp is done reading stage s (its wgmmas completed, and its SFA values were consumed by
    // `scales`, in a converged warp): tell the producer of every CTA that multicasts into it.
    __device__ __forceinline__ void release(uint32_t s) const {
        if (lane == 0) {
            mbarrier_arrive(smem.empty() + s);
            if constexpr (V::kMulticast == 2)
                mbarrier_arrive_cluster(smem.empty() + s, cta_rank ^ 1);
        }
    }

    // Accumulator i of m64nNk32 holds row (lane / 4) + 8 * ((i / 2) % 2), column 8 * (i / 4) + 2 * (lane % 4) + i % 2.
    // A narrow tile's sums past its half width stay zero: those columns lie past N. Columns of a
    // 192-wide tile at or past kSplit take the second SFB block's scales.
    template <uint32_t kSplit, uint32_t kAccum>
    __device__ __forceinline__ void promote(const float4& scale, uint32_t v, float (&acc)[kAccum]) {
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < kAccum; ++i)
            wgmma::fence_operand(acc[i]);
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < kAccum; ++i) {
            const bool second_block = V::kTwoSFB && 8 * (i / 4) >= kSplit;
            const float sc = (i / 2) % 2 == 0 ? (second_block ? scale.z : scale.x) : (second_block ? scale.w : scale.y);
            result[v][i] += sc * acc[i];
        }
    }

    // One K block, every wave in turn through one accumulator set; `ahead`: wave 0 already issued.
    template <bool kNarrow, uint32_t kSplit, typename Accum>
    __device__ __forceinline__ void single_block(const float* table, Accum& accum, uint32_t k, bool ahead) {
        const uint32_t s = iter % V::kNumStages;
        if (!ahead)
            mbarrier_wait(smem.full() + s, (iter / V::kNumStages) & 1);
        DG_MOE_UNROLL
        for (uint32_t v = 0; v < V::kNumWaves; ++v) {
            if (v > 0 || !ahead)
                issue<kNarrow>(s, v, accum[0]);
            const float4 scale = scales(table, s, v, k);
            wgmma::wait_group<0>();
            if (v == V::kNumWaves - 1)
                release(s);
            promote<kSplit>(scale, v, accum[0]);
        }
        ++iter;
    }

    // K blocks k and k + 1: the second one's wgmmas run while the first is promoted.
    template <bool kNarrow, uint32_t kSplit, typename Accum>
    __device__ __forceinline__ void pair(const float* table, Accum& accum, uint32_t k, bool ahead) {
        const uint32_t s0 = iter % V::kNumStages, s1 = (iter + 1) % V::kNumStages;
        if (!ahead) {
            mbarrier_wait(smem.full() + s0, (iter / V::kNumStages) & 1);
            issue<kNarrow>(s0, 0, accum[0]);
        }
        const float4 scale0 = scales(table, s0, 0, k);
        if (!ahead) {
            mbarrier_wait(smem.full() + s1, ((iter + 1) / V::kNumStages) & 1);
            issue<kNarrow>(s1, 0, accum[V::kPairs ? 1 : 0]);
        }
        const float4 scale1 = scales(table, s1, 0, k + 1);
        wgmma::wait_group<1>();
        release(s0);
        promote<kSplit>(scale0, 0, accum[0]);
        wgmma::wait_group<0>();
        release(s1);
        promote<kSplit>(scale1, 0, accum[V::kPairs ? 1 : 0]);
        iter += 2;
    }

    // Every K block of the current tile; the first (two, with pairs) already issued.
    template <bool kNarrow, uint32_t kSplit, typename Accum>
    __device__ __forceinline__ void k_loop(const float* table, Accum& accum) {
        if constexpr (V::kPairs) {
            pair<kNarrow, kSplit>(table, accum, 0, true);
            for (uint32_t k = 2; k + 1 < V::kNumKBlocks; k += 2)
                pair<kNarrow, kSplit>(table, accum, k, false);
            if constexpr (V::kNumKBlocks % 2 == 1)
                single_block<kNarrow, kSplit>(table, accum, V::kNumKBlocks - 1, false);
        } else {
            single_block<kNarrow, kSplit>(table, accum, 0, true);
            // Eight K blocks per loop iteration: the stage index, phase and descriptor arithmetic of
            // consecutive blocks folds into uniform registers (156 -> 149 instructions per K block at
            // 128 x 192, 202 -> 191 at 256 x 128). H100, tools/ab_variants.py beside DeepGEMM: contiguous 4096 x 7168 1068 -> 1128
            // TFLOPS, dense 4096 x 24576 x 1536 1154 -> 1201; unrolling by 4 gained about half as much.
            DG_MOE_UNROLL_8
            for (uint32_t k = 1; k < V::kNumKBlocks; ++k)
                single_block<kNarrow, kSplit>(table, accum, k, false);
        }
    }

    // Runs `tile` and the tiles after it while they are of one kind (narrow or not); returns whether
    // another tile follows (then in `tile`). Each kind has its own loop: a K loop that branched
    // between n64 and n128 wgmmas made ptxas serialise them (C7511). The scheduler orders every
    // narrow tile after the full ones, so a CTA runs each loop at most once.
    // A loop is entered, and re-entered, only with the tile's first wgmmas in flight: where a path
    // without them merged in, ptxas waited for them right after the issue (C7517).
    template <bool kNarrow>
    __device__ __forceinline__ bool run_tiles() {
        // Each kind has its own accumulators: sharing them between n64 and n128 wgmmas left ptxas short
        // of registers for the wgmma pipeline (C7511).
        float accum[V::kPairs ? 2 : 1][kNumAccum<kNarrow>];
        issue_ahead<kNarrow>(accum);
        for (;; ++tile_count) {
            const uint32_t table_index = tile_count % 2;
            const float* table = smem.sfb_tables() + table_index * Layout::kFloatsSFBTable;
            mbarrier_wait(smem.sfb_full() + table_index, (tile_count / 2) & 1);
            DG_MOE_UNROLL
            for (uint32_t v = 0; v < V::kNumWaves; ++v)
                DG_MOE_UNROLL
            for (uint32_t i = 0; i < MMA::kNumAccum; ++i)
                result[v][i] = 0.0f;

            if constexpr (V::kTwoSFB) {
                // A 192-wide tile starts at column 0 or 64 of an SFB block (n-block even or odd), so its
                // second block's scales start at tile column 128 or 64: each case has its own copy of the
                // K loop, with no per-accumulator selection in the promotion (a run-time split cost a
                // compare and two selects per 4 accumulators, ~70 instructions per K block at 128 x 192).
                if ((tile.n_block * V::BLOCK_N) % 128 == 0)
                    k_loop<kNarrow, 128>(table, accum);
                else
                    k_loop<kNarrow, 64>(table, accum);
            } else {
                k_loop<kNarrow, V::BLOCK_N>(table, accum);
            }

            // The K loop's last read of the SFB table is done in every lane of this warp.
            __syncwarp();
            if (lane == 0)
                mbarrier_arrive(smem.sfb_empty() + table_index);

            sched::Tile next_tile;
            const bool more = scheduler.next(next_tile);
            if (!more || is_narrow(next_tile) != kNarrow) {
                write_out(tile);
                tile = next_tile;
                ++tile_count;
                return more;
            }
            // The wgmmas issued here stay in flight through the epilogue. Every path back to the loop
            // head has them in flight (ptxas otherwise waits for them where the paths merge, C7517).
            issue_ahead<kNarrow>(accum);
            write_out(tile);
            tile = next_tile;
        }
    }

    __device__ __forceinline__ void run() {
        bool more = scheduler.next(tile);
        if (more && !is_narrow(tile))
            more = run_tiles<false>();
        if constexpr (V::kNarrowTail) {
            if (more)
                run_tiles<true>();
        }
        if (store_leader)
            tma_store_wait<0>();
    }
};

template <uint32_t SHAPE_N, uint32_t SHAPE_K, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kNumStages, GemmType kType,
          uint32_t kMulticast, bool kMulticastB>
__global__ void __launch_bounds__(MathShape<BLOCK_M>::kBlockThreads, 1)
    fp8_gemm_kernel(const Params params, const __grid_constant__ CUtensorMap tmap_a,
                    const __grid_constant__ CUtensorMap tmap_b, const __grid_constant__ CUtensorMap tmap_sfa,
                    const __grid_constant__ CUtensorMap tmap_d) {
    using V = Variant<SHAPE_N, SHAPE_K, BLOCK_M, BLOCK_N, kNumStages, kType, kMulticast, kMulticastB>;
    using Scheduler = typename V::Scheduler;
    run_gemm_roles<V, SharedState, kProducerRegisters, kMathRegisters>(
        params,
        [&](const SharedState<V>& smem) {
            tma_prefetch_tensor_map(&tmap_a);
            tma_prefetch_tensor_map(&tmap_b);
            tma_prefetch_tensor_map(&tmap_sfa);
            tma_prefetch_tensor_map(&tmap_d);
            init_barriers(smem);
        },
        [&](const SharedState<V>& smem, Scheduler& scheduler, uint32_t cta_rank, uint32_t warp, uint32_t lane) {
            if (warp == V::kNumMathWarps) {
                if (elect_one_sync())
                    load_operands(smem, scheduler, &tmap_a, &tmap_b, &tmap_sfa, cta_rank);
            }
            else if (warp == V::kNumMathWarps + 1)
                fill_sfb_tables(smem, scheduler, params, lane);
        },
        [&](const SharedState<V>& smem, Scheduler& scheduler, uint32_t cta_rank, uint32_t warp, uint32_t lane) {
            MathWarpgroup<V> math{smem, params, &tmap_d, scheduler, cta_rank, warp, lane};
            math.run();
        });
}

}  // namespace dg_moe::sm90_fp8_gemm
