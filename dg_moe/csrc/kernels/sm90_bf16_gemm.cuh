#pragma once
// SM90 BF16 GEMM: D[bf16 or fp32] = A[bf16] @ B[bf16]^T with FP32 accumulation, for one problem
// (Normal) or for the M-grouped MoE layouts (contiguous, contiguous prefix-sum, masked); for Normal
// also D = C + A @ B^T (kAccumulate, C of D's type and shape; C may be D itself).
//
// Roles (a persistent grid, one CTA per SM; every role walks the same tile sequence through its own
// copy of the scheduler, so they agree on every tile without communicating):
// - producer warpgroup (the last 128 threads; 40 registers each after setmaxnreg): one elected lane of
//   its first warp issues the TMA loads of A and B into a kNumStages-deep ring of shared-memory stages,
//   one stage per 64-wide K block. Each operand is K-major (a row of 64 K values per M or N index) or
//   MN-major (a row of 64 M or N values per K index, in 64-wide chunks of 64 rows; the transposed ops
//   bf16_gemm_nn/tn/tt and m_grouped_bf16_gemm_nn_contiguous); either way 128B-swizzled 128-byte rows,
//   and the 64-row chunk of M or N index r starts at byte r * 128 of the operand's stage in both;
// - one or two math warpgroups (232 registers each): wgmma m64nNk16 on each K block, accumulating in
//   the wgmma registers across the whole K extent (BF16 products are exact in FP32, so there is no
//   scale to apply and nothing to promote), then the epilogue.
//
// A math warpgroup owns 64 rows of the tile (BLOCK_M 64 or 128) or 128 rows as two m64 wgmmas per K
// step (BLOCK_M 256). Per K block it waits for the stage, issues its wgmmas as one commit group, then
// waits until only that group is in flight and releases the previous stage: the tensor cores always
// have the next block queued while the stage before is handed back to the producer.
// The epilogue writes D through shared memory (stmatrix for BF16, 8-byte stores for FP32) and a TMA
// store, or, for tiles holding padding rows or rows past masked_m, with predicated 16-byte stores that
// never touch them. With kAccumulate, C's tile is TMA-loaded into that shared-memory tile first, and
// each thread adds the values at the addresses it then overwrites (see load_c).
#include <cuda_bf16.h>
#include <cstdint>
#include <type_traits>

#include "common/elect.cuh"
#include "common/gemm_roles.cuh"
#include "common/ldmatrix.cuh"
#include "common/mbarrier.cuh"
#include "common/named_barrier.cuh"
#include "common/scheduler.cuh"
#include "common/stmatrix.cuh"
#include "common/tma.cuh"
#include "common/unroll.cuh"
#include "common/wgmma.cuh"
#include "kernels/sm90_bf16_gemm_constants.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error \
    "sm90_bf16_gemm needs wgmma and setmaxnreg, which exist on sm_90a only: build with -gencode=arch=compute_90a,code=sm_90a"
#endif

namespace dg_moe::sm90_bf16_gemm {

using sched::GemmType;

constexpr uint32_t kNumProducerThreads = 128;
// With two math warpgroups: 128 x 40 + 256 x 232 = 64512 of the SM's 65536 registers.
constexpr uint32_t kProducerRegisters = 40;
constexpr uint32_t kMathRegisters = 232;
// Bytes of one K block's row of A or B in shared memory (and the 128B swizzle span).
constexpr uint32_t kRowBytes = kBlockK * sizeof(__nv_bfloat16);
static_assert(kRowBytes == 128, "a stage row must be exactly one 128-byte swizzle span");
// An MN-major operand's K block: chunks of 64 M or N indices (one 128-byte row per K index), each one TMA
// box of kBlockK rows, kChunkBytes apart.
constexpr uint32_t kChunkIndices = kRowBytes / sizeof(__nv_bfloat16);
constexpr uint32_t kChunkBytes = kBlockK * kRowBytes;

// An operand's smem descriptor at byte `addr` of a stage, and its advance per k16 step in the descriptor's
// 16-byte address units: 32 bytes along a K-major row, 16 rows down an MN-major chunk.
template <bool kMnMajor>
struct OperandDesc {
    static constexpr uint32_t kStep = (kMnMajor ? 16 * kRowBytes : 16 * sizeof(__nv_bfloat16)) >> 4;
    __device__ __forceinline__ static uint64_t at(uint32_t addr) {
        if constexpr (kMnMajor)
            return wgmma::smem_desc_mn_major_sw128(addr, kChunkBytes);
        else
            return wgmma::smem_desc_k_major_sw128(addr);
    }
};

template <uint32_t BLOCK_M>
struct MathShape {
    static constexpr uint32_t kWarpgroups = BLOCK_M == 64 ? 1 : 2;
    static constexpr uint32_t kThreads = kWarpgroups * 128;
    static constexpr uint32_t kWarpgroupRows = BLOCK_M / kWarpgroups;
    // m64 wgmmas per K step of one warpgroup, each with its own accumulators.
    static constexpr uint32_t kMmaRows = kWarpgroupRows / 64;
    static constexpr uint32_t kBlockThreads = kThreads + kNumProducerThreads;
};

struct Params {
    const int* layout;  // per-row groups, psum ends or masked_m; unused for Normal
    void* d;            // D's elements (Variant::OutT), for the predicated epilogue: row r starts at d + r * d_stride
    uint32_t m;         // rows of A, or max_m for masked
    uint32_t num_groups;
    uint32_t d_stride;     // elements between rows of D
    uint32_t group_table;  // 1: the launch added num_groups + 1 words of shared memory for the group table
};

// kDBytes: bytes of one D element; kNumCBarriers: barriers of C's loads (one per math warpgroup with
// kAccumulate, else none).
template <uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kNumStages, uint32_t kDBytes, uint32_t kNumCBarriers>
struct SharedLayout {
    static constexpr uint32_t kBytesA = BLOCK_M * kRowBytes;
    static constexpr uint32_t kBytesB = BLOCK_N * kRowBytes;
    // Both multiples of 1024 (BLOCK_N >= 16): every operand tile starts on a swizzle-atom boundary.
    static constexpr uint32_t kStageBytes = kBytesA + kBytesB;
    static constexpr uint32_t kBytesD = BLOCK_M * BLOCK_N * kDBytes;
    static constexpr uint32_t kOffsetD = kNumStages * kStageBytes;
    static constexpr uint32_t kOffsetBarriers = kOffsetD + ((kBytesD + 1023) / 1024) * 1024;
    // Barriers: full and empty per stage, then C's.
    static constexpr uint32_t kNumBarriers = 2 * kNumStages + kNumCBarriers;
    // The masked and prefix-sum layouts' group table (Scheduler::build_block_table) follows, sized at
    // launch: (num_groups + 1) words when they fit, none otherwise; kTotalBytes excludes it.
    static constexpr uint32_t kOffsetGroupTable = kOffsetBarriers + kNumBarriers * sizeof(uint64_t);
    // +1024: the dynamic shared-memory base is only 16-byte aligned; 128B swizzle needs 1024.
    static constexpr uint32_t kTotalBytes = kOffsetGroupTable + 1024;
    static constexpr uint32_t kTxBytes = kBytesA + kBytesB;
    static_assert(kBytesA % 1024 == 0 && kBytesB % 1024 == 0, "operand tiles must keep 1024-byte alignment");
};

// The D tile (elements of kDBytes) is stored as BLOCK_N / kSpanCols column slabs of [BLOCK_M rows x
// kSpanBytes], each swizzled the way TMA expects for that span (the FP8 family's D layout), which also
// keeps the stmatrix rows of a warp free of bank conflicts. C, with kAccumulate, arrives in the same
// layout (its tensor map has D's boxes and swizzle).
template <uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kDBytes>
struct DTile {
    static constexpr uint32_t kSpanBytes = BLOCK_N * kDBytes < 128 ? BLOCK_N * kDBytes : 128;
    static constexpr uint32_t kSpanCols = kSpanBytes / kDBytes;
    static constexpr uint32_t kChunks = kSpanBytes / 16;
    // Columns of one 16-byte chunk, the unit the swizzle permutes.
    static constexpr uint32_t kChunkCols = 16 / kDBytes;
    static_assert(kSpanBytes == 32 || kSpanBytes == 64 || kSpanBytes == 128,
                  "a D slab row must be 32, 64 or 128 bytes: BLOCK_N must be 16, 32 or a multiple of 64");

    // Byte offset of column `col` (a multiple of kChunkCols) of row `row` inside the tile.
    __device__ __forceinline__ static uint32_t offset(uint32_t row, uint32_t col) {
        const uint32_t slab = col / kSpanCols;
        const uint32_t in_span = (col % kSpanCols) * kDBytes;
        const uint32_t chunk = (in_span / 16) ^ (((row * kSpanBytes) >> 7) & (kChunks - 1));
        return slab * BLOCK_M * kSpanBytes + row * kSpanBytes + chunk * 16;
    }
};

// Compile-time facts of one variant, shared by every role.
template <uint32_t SHAPE_N_, uint32_t SHAPE_K_, uint32_t BLOCK_M_, uint32_t BLOCK_N_, uint32_t kNumStages_,
          GemmType kType_, uint32_t kMulticast_, bool kMulticastB_, typename OutT_, bool kAccumulate_,
          bool kMnMajorA_, bool kMnMajorB_>
struct Variant {
    static constexpr uint32_t SHAPE_N = SHAPE_N_, SHAPE_K = SHAPE_K_, BLOCK_M = BLOCK_M_, BLOCK_N = BLOCK_N_;
    static constexpr uint32_t kNumStages = kNumStages_, kMulticast = kMulticast_;
    // With kMulticast = 2, the cluster's CTAs share A (two n-blocks of one m-block) or, with kMulticastB,
    // B (two m-blocks of one n-block; see sched::Scheduler).
    static constexpr bool kMulticastB = kMulticastB_;
    static constexpr GemmType kType = kType_;
    // D's element type, and whether D = C + A @ B^T with C of that type.
    using OutT = OutT_;
    static constexpr bool kFloatD = std::is_same_v<OutT, float>;
    static constexpr bool kAccumulate = kAccumulate_;
    static_assert(kFloatD || std::is_same_v<OutT, __nv_bfloat16>, "D holds bfloat16 or float");
    // Grouped callers have no C: the predicated epilogue of partial tiles would need its own C path.
    static_assert(!kAccumulate || kType == GemmType::Normal, "accumulating C is for Normal GEMMs only");
    // Operand majors: an MN-major A is [K, M] (bf16_gemm_tn/tt), an MN-major B [K, N] or [G, K, N]
    // (bf16_gemm_nn/tn, m_grouped_bf16_gemm_nn_contiguous); grouped A and masked B are K-major only, as
    // the ops that read them.
    static constexpr bool kMnMajorA = kMnMajorA_, kMnMajorB = kMnMajorB_;
    static_assert(!kMnMajorA || kType == GemmType::Normal, "an MN-major A is for Normal GEMMs only");
    static_assert(!kMnMajorB || kType != GemmType::MGroupedMasked, "masked GEMMs read a K-major B only");
    // An MN-major operand arrives as 64-wide chunks (one 128-byte swizzle row each), so its tile, and the
    // half of it each CTA of a sharing pair loads, must be whole chunks.
    static_assert(!kMnMajorB || BLOCK_N % 64 == 0, "an MN-major B needs BLOCK_N a multiple of 64");
    static_assert(!kMnMajorB || !kMulticastB_ || BLOCK_N % 128 == 0,
                  "a B-sharing pair splits an MN-major B tile into whole 64-wide chunks: BLOCK_N 128 or 256");
    static_assert(!kMnMajorA || kMulticast_ == 1 || kMulticastB_ || BLOCK_M % 128 == 0,
                  "an A-sharing pair splits an MN-major A tile into whole 64-wide chunks: BLOCK_M 128 or 256");

    static_assert(BLOCK_M == 64 || BLOCK_M == 128 || BLOCK_M == 256,
                  "BLOCK_M must be 64 (one math warpgroup), 128 (two) or 256 (two, 128 rows each)");
    static_assert(BLOCK_M <= sched::kContiguousAlignment || kType == GemmType::Normal ||
                      kType == GemmType::MGroupedMasked,
                  "contiguous groups start on 128-row boundaries: a taller tile could span two experts");
    static_assert(BLOCK_N == 16 || BLOCK_N == 32 || BLOCK_N == 64 || BLOCK_N == 128 || BLOCK_N == 192 ||
                      BLOCK_N == 256,
                  "BLOCK_N must be 16, 32, 64, 128, 192 or 256 (the BF16MMA shapes)");
    // K need not be a multiple of kBlockK: TMA fills the last block's columns past K with zeros in
    // both operands, which add nothing to the sums.
    static_assert(SHAPE_K > 0 && (SHAPE_K % 8 == 0 || (kMnMajorA && kMnMajorB)),
                  "K must be a positive multiple of 8 where an operand is K-major (16-byte TMA rows)");
    static_assert(SHAPE_N * sizeof(OutT) % 16 == 0,
                  "N must make D rows a multiple of 16 bytes (8 BF16 or 4 FP32 values): TMA's row rule");
    static_assert(kNumStages >= 2, "the pipeline needs at least two stages");
    static_assert(kMulticast == 1 || kMulticast == 2, "A or B is shared across clusters of 1 or 2 CTAs");
    static_assert(!kMulticastB || kMulticast == 2, "sharing B needs a 2-CTA cluster");
    static_assert(!kMulticastB || BLOCK_N % 16 == 0,
                  "each CTA of a B-sharing pair loads BLOCK_N / 2 rows of B, a multiple of 8");

    using Math = MathShape<BLOCK_M>;
    static constexpr uint32_t kNumMathThreads = Math::kThreads;
    static constexpr uint32_t kNumMathWarps = kNumMathThreads / 32;
    static constexpr uint32_t kNumKBlocks = sched::ceil_div(SHAPE_K, kBlockK);

    using Layout = SharedLayout<BLOCK_M, BLOCK_N, kNumStages, sizeof(OutT), kAccumulate ? Math::kWarpgroups : 0>;
    using MMA = wgmma::BF16MMA<BLOCK_N, kMnMajorA, kMnMajorB>;
    using D = DTile<BLOCK_M, BLOCK_N, sizeof(OutT)>;
    using Scheduler = sched::Scheduler<kType, BLOCK_M, BLOCK_N, SHAPE_N, kMulticast, kMulticastB>;
    static_assert(MMA::kNumAccum * Math::kMmaRows <= kAccumRegisterBudget,
                  "the tile's accumulators exceed the register budget of a math thread");
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
    __device__ __forceinline__ uint8_t* d_tile() const { return base + Layout::kOffsetD; }
    __device__ __forceinline__ uint64_t* full() const {
        return reinterpret_cast<uint64_t*>(base + Layout::kOffsetBarriers);
    }
    __device__ __forceinline__ uint64_t* empty() const { return full() + V::kNumStages; }
    // kAccumulate: one per math warpgroup, completed by the TMA loads of its rows of C.
    __device__ __forceinline__ uint64_t* c_full() const { return empty() + V::kNumStages; }
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
    if constexpr (V::kAccumulate) {
        for (uint32_t w = 0; w < V::Math::kWarpgroups; ++w)
            mbarrier_init(smem.c_full() + w, 1);
    }
    mbarrier_init_fence();
}

// One operand's M or N indices [mn0, mn0 + kRows) of the K block at k0 into `dst`, delivered to both CTAs
// of the pair when `multicast`. K-major: one box of kRows rows of 64 K values (a grouped B's rows are
// group * N + n of one 2-D map). MN-major: kRows / 64 boxes of 64 indices x kBlockK K rows, one per chunk;
// kStacked: the map is 3-D, a stack of per-group [K, N] matrices (so a K block past K reads zeros rather
// than the next group's rows), and `group` picks the matrix.
template <bool kMnMajor, bool kStacked, uint32_t kRows>
__device__ __forceinline__ void load_rows(const CUtensorMap* map, uint8_t* dst, uint64_t* bar, int32_t k0, uint32_t mn0,
                                          uint32_t group, bool multicast) {
    static_assert(kMnMajor || !kStacked, "K-major operands fold groups into the rows of a 2-D map");
    if constexpr (!kMnMajor) {
        if (multicast)
            tma_load_2d_multicast(map, dst, bar, k0, mn0, 0b11);
        else
            tma_load_2d(map, dst, bar, k0, mn0);
    } else if constexpr (!kStacked) {
        static_assert(kRows % kChunkIndices == 0, "an MN-major load is whole 64-wide chunks");
        tma_load_mn_chunks<kRows / kChunkIndices, kChunkBytes>(map, dst, bar, static_cast<int32_t>(mn0), k0, multicast);
    } else {
        static_assert(kRows % kChunkIndices == 0, "an MN-major load is whole 64-wide chunks");
        DG_MOE_UNROLL
        for (uint32_t c = 0; c < kRows / kChunkIndices; ++c) {
            const int32_t mn = static_cast<int32_t>(mn0 + c * kChunkIndices);
            if (multicast)
                tma_load_3d_multicast(map, dst + c * kChunkBytes, bar, mn, k0, static_cast<int32_t>(group), 0b11);
            else
                tma_load_3d(map, dst + c * kChunkBytes, bar, mn, k0, static_cast<int32_t>(group));
        }
    }
}

// Producer thread: every TMA load of A and B, one stage per K block of every tile.
template <typename V>
__device__ __forceinline__ void load_operands(const SharedState<V>& smem, typename V::Scheduler& scheduler,
                                              const CUtensorMap* tmap_a, const CUtensorMap* tmap_b,
                                              uint32_t cta_rank) {
    constexpr bool kMnA = V::kMnMajorA, kMnB = V::kMnMajorB;
    sched::Tile tile;
    uint64_t* full = smem.full();
    uint64_t* empty = smem.empty();
    uint32_t iter = 0;
    while (scheduler.next(tile)) {
        const uint32_t b_row = (kMnB ? 0 : tile.group * V::SHAPE_N) + tile.n_block * V::BLOCK_N;
        // Not unrolled: the producer runs on 40 registers.
        DG_MOE_NO_UNROLL
        for (uint32_t k = 0; k < V::kNumKBlocks; ++k, ++iter) {
            const uint32_t s = iter % V::kNumStages, phase = (iter / V::kNumStages) & 1;
            const int32_t k0 = static_cast<int32_t>(k * kBlockK);
            mbarrier_wait(empty + s, phase ^ 1);
            mbarrier_arrive_expect_tx(full + s, V::Layout::kTxBytes);
            if constexpr (V::kMulticast == 1 || V::kMulticastB) {
                load_rows<kMnA, false, V::BLOCK_M>(tmap_a, smem.stage_a(s), full + s, k0, tile.row, 0, false);
            } else {
                // Each CTA fetches its half of A's rows into both CTAs (same offsets).
                constexpr uint32_t kHalf = V::BLOCK_M / 2;
                load_rows<kMnA, false, kHalf>(tmap_a, smem.stage_a(s) + cta_rank * kHalf * kRowBytes, full + s, k0,
                                              tile.row + cta_rank * kHalf, 0, true);
            }
            if constexpr (!V::kMulticastB) {
                load_rows<kMnB, kMnB, V::BLOCK_N>(tmap_b, smem.stage_b(s), full + s, k0, b_row, tile.group, false);
            } else {
                // A K-major B's map loads half a tile: each CTA fetches its half into both CTAs, or, where
                // the pair's tiles read different B rows, both halves into its own stage.
                constexpr uint32_t kHalf = V::BLOCK_N / 2;
                if (tile.multicast_b) {
                    load_rows<kMnB, kMnB, kHalf>(tmap_b, smem.stage_b(s) + cta_rank * kHalf * kRowBytes, full + s,
                                                 k0, b_row + cta_rank * kHalf, tile.group, true);
                } else {
                    load_rows<kMnB, kMnB, kHalf>(tmap_b, smem.stage_b(s), full + s, k0, b_row, tile.group, false);
                    load_rows<kMnB, kMnB, kHalf>(tmap_b, smem.stage_b(s) + kHalf * kRowBytes, full + s, k0,
                                                 b_row + kHalf, tile.group, false);
                }
            }
        }
    }
}

// One math warpgroup: warpgroup w owns rows [w * kWarpgroupRows, (w + 1) * kWarpgroupRows) of each tile.
template <typename V>
struct MathWarpgroup {
    using MMA = typename V::MMA;
    using Layout = typename V::Layout;
    using D = typename V::D;
    using OutT = typename V::OutT;
    static constexpr uint32_t kWarpgroupRows = V::Math::kWarpgroupRows;
    static constexpr uint32_t kMmaRows = V::Math::kMmaRows;
    // Named barriers of math warpgroups 0 and 1: kBarrierEpilogue and the next id (0 is __syncthreads).
    static constexpr uint32_t kBarrierEpilogue = 1;

    const SharedState<V>& smem;
    const Params& params;
    const CUtensorMap* tmap_d;
    const CUtensorMap* tmap_c;  // kAccumulate only
    typename V::Scheduler& scheduler;
    const uint32_t cta_rank, warp, lane;
    // Broadcast from lane 0 so ptxas knows the value is warp-uniform: the A descriptors built from it
    // then live in uniform registers.
    const uint32_t math_wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
    const bool store_leader = threadIdx.x % 128 == 0;
    // The descriptors are built from this integer address rather than converted from the generic
    // pointer at every issue.
    const uint32_t smem_addr = smem_u32(smem.base);
    const uint32_t smem_d_addr = smem_addr + Layout::kOffsetD;

    float accum[kMmaRows][MMA::kNumAccum];
    uint32_t iter = 0;
    uint32_t c_phase = 0;  // kAccumulate: parity of this warpgroup's C barrier for the current tile

    __device__ __forceinline__ MathWarpgroup(const SharedState<V>& smem_, const Params& params_,
                                             const CUtensorMap* tmap_d_, const CUtensorMap* tmap_c_,
                                             typename V::Scheduler& scheduler_, uint32_t cta_rank_, uint32_t warp_,
                                             uint32_t lane_)
        : smem(smem_),
          params(params_),
          tmap_d(tmap_d_),
          tmap_c(tmap_c_),
          scheduler(scheduler_),
          cta_rank(cta_rank_),
          warp(warp_),
          lane(lane_) {}

    __device__ __forceinline__ void fence_accumulators() {
        DG_MOE_UNROLL
        for (uint32_t r = 0; r < kMmaRows; ++r)
            DG_MOE_UNROLL
        for (uint32_t i = 0; i < MMA::kNumAccum; ++i)
            wgmma::fence_operand(accum[r][i]);
    }

    // The K block in stage s, as one commit group; `first`: the tile's first block, whose first k16
    // step overwrites the accumulators instead of adding to them.
    __device__ __forceinline__ void issue(uint32_t s, bool first) {
        using DescA = OperandDesc<V::kMnMajorA>;
        using DescB = OperandDesc<V::kMnMajorB>;
        const uint32_t stage = smem_addr + s * Layout::kStageBytes;
        const uint64_t desc_b = DescB::at(stage + Layout::kBytesA);
        fence_accumulators();
        wgmma::fence();
        DG_MOE_UNROLL
        for (uint32_t kk = 0; kk < kBlockK / 16; ++kk) {
            DG_MOE_UNROLL
            for (uint32_t r = 0; r < kMmaRows; ++r) {
                const uint64_t desc_a = DescA::at(stage + (math_wg * kWarpgroupRows + r * 64) * kRowBytes);
                MMA::mma(desc_a + kk * DescA::kStep, desc_b + kk * DescB::kStep, accum[r], !first || kk > 0);
            }
        }
        wgmma::commit_group();
        fence_accumulators();
    }

    // This warp is done reading stage s (its wgmmas completed): tell the producer of every CTA that
    // multicasts into it.
    __device__ __forceinline__ void release(uint32_t s) const {
        if (lane == 0) {
            mbarrier_arrive(smem.empty() + s);
            if constexpr (V::kMulticast == 2)
                mbarrier_arrive_cluster(smem.empty() + s, cta_rank ^ 1);
        }
    }

    __device__ __forceinline__ void wait_full(uint32_t it) const {
        mbarrier_wait(smem.full() + it % V::kNumStages, (it / V::kNumStages) & 1);
    }

    // kAccumulate: this warpgroup's rows of C's tile, TMA-loaded into its rows of the D tile in D's own
    // swizzled layout, where the epilogue adds them (each thread reading exactly the addresses it then
    // overwrites, so no thread needs another's values). C goes through TMA rather than per-thread global
    // loads because TMA already knows D's layout and bounds: the box, swizzle and clipping of D's map
    // (rows past M and columns past N arrive as zeros and are never stored), coalesced reads, no
    // bounds arithmetic and no registers beyond the accumulators'. The loads must wait until this
    // warpgroup's previous TMA stores have read the tile.
    __device__ __forceinline__ void load_c(const sched::Tile& tile) const {
        if (!store_leader)
            return;
        tma_store_wait_read<0>();
        uint64_t* bar = smem.c_full() + math_wg;
        mbarrier_arrive_expect_tx(bar, kWarpgroupRows * V::BLOCK_N * sizeof(OutT));
        const uint32_t col0 = tile.n_block * V::BLOCK_N;
        uint8_t* smem_d = smem.d_tile();
        DG_MOE_UNROLL
        for (uint32_t slab = 0; slab < V::BLOCK_N / D::kSpanCols; ++slab)
            DG_MOE_UNROLL
        for (uint32_t r = 0; r < kMmaRows; ++r) {
            const uint32_t row = math_wg * kWarpgroupRows + r * 64;
            tma_load_2d(tmap_c, smem_d + slab * V::BLOCK_M * D::kSpanBytes + row * D::kSpanBytes, bar,
                        col0 + slab * D::kSpanCols, tile.row + row);
        }
    }

    // Every K block of one tile into the accumulators; on return they hold the tile's sums.
    __device__ __forceinline__ void k_loop(const sched::Tile& tile) {
        wait_full(iter);
        issue(iter % V::kNumStages, true);
        // Issued once the tensor cores hold the tile's first block, so that the wait for the previous
        // tile's stores and C's load latency overlap the K loop instead of the epilogue.
        if constexpr (V::kAccumulate)
            load_c(tile);
        ++iter;
        for (uint32_t k = 1; k < V::kNumKBlocks; ++k, ++iter) {
            wait_full(iter);
            issue(iter % V::kNumStages, false);
            // The previous block's group is done once at most this one is pending.
            wgmma::wait_group<1>();
            release((iter - 1) % V::kNumStages);
        }
        wgmma::wait_group<0>();
        fence_accumulators();
        release((iter - 1) % V::kNumStages);
    }

    __device__ __forceinline__ void warpgroup_sync() const {
        if (math_wg == 0)
            named_barrier_sync<kBarrierEpilogue, 128>();
        else
            named_barrier_sync<kBarrierEpilogue + 1, 128>();
    }

    // Epilogue, per math warpgroup: each writes its own rows of the D tile and issues their TMA stores,
    // with barriers among its own 128 threads only.
    // BF16 D: sixteen columns per stmatrix.x4: accumulators 8j..8j+7 are rows 0-7 and 8-15 of column
    // chunks 2j and 2j + 1, the four 8x8 matrices in stmatrix's order. Accumulator i of an m64nN wgmma
    // holds row (lane / 4) + 8 * ((i / 2) % 2), column 8 * (i / 4) + 2 * (lane % 4) + i % 2. With C, the
    // ldmatrix.x4 at the same lane addresses returns C's values in those same registers' places.
    __device__ __forceinline__ void stage_bf16() {
        DG_MOE_UNROLL
        for (uint32_t r = 0; r < kMmaRows; ++r)
            DG_MOE_UNROLL
        for (uint32_t j = 0; j < V::BLOCK_N / 16; ++j) {
            const uint32_t row =
                math_wg * kWarpgroupRows + r * 64 + (warp % 4) * 16 + lane % 8 + 8 * ((lane / 8) % 2);
            const uint32_t col = 16 * j + 8 * (lane / 16);
            const float* acc = accum[r] + 8 * j;
            const uint32_t addr = smem_d_addr + D::offset(row, col);
            if constexpr (V::kAccumulate) {
                uint32_t c[4];
                ldmatrix_x4(addr, c[0], c[1], c[2], c[3]);
                float sum[8];
                DG_MOE_UNROLL
                for (uint32_t i = 0; i < 4; ++i) {
                    sum[2 * i] = acc[2 * i] + bf16_pair_lo(c[i]);
                    sum[2 * i + 1] = acc[2 * i + 1] + bf16_pair_hi(c[i]);
                }
                stmatrix_x4(addr, pack_bf16x2(sum[0], sum[1]), pack_bf16x2(sum[2], sum[3]), pack_bf16x2(sum[4], sum[5]),
                            pack_bf16x2(sum[6], sum[7]));
            } else {
                stmatrix_x4(addr, pack_bf16x2(acc[0], acc[1]), pack_bf16x2(acc[2], acc[3]), pack_bf16x2(acc[4], acc[5]),
                            pack_bf16x2(acc[6], acc[7]));
            }
        }
    }

    // FP32 D: stmatrix moves 16-bit elements only, so each thread stores its own column pairs, 8 bytes
    // each: accumulators 4j..4j+3 are columns 8j + 2 (lane % 4) and the next of rows lane / 4 and
    // lane / 4 + 8 (of the warp's 16). A pair never straddles a 16-byte chunk, the swizzle's unit.
    __device__ __forceinline__ void stage_fp32() {
        uint8_t* smem_d = smem.d_tile();
        DG_MOE_UNROLL
        for (uint32_t r = 0; r < kMmaRows; ++r)
            DG_MOE_UNROLL
        for (uint32_t j = 0; j < V::BLOCK_N / 8; ++j) {
            const uint32_t col = 8 * j + 2 * (lane % 4);
            const uint32_t in_chunk = (col % D::kChunkCols) * sizeof(float);
            DG_MOE_UNROLL
            for (uint32_t half = 0; half < 2; ++half) {
                const uint32_t row = math_wg * kWarpgroupRows + r * 64 + (warp % 4) * 16 + lane / 4 + 8 * half;
                float2* pair = reinterpret_cast<float2*>(smem_d + D::offset(row, col - col % D::kChunkCols) + in_chunk);
                float2 value{accum[r][4 * j + 2 * half], accum[r][4 * j + 2 * half + 1]};
                if constexpr (V::kAccumulate) {
                    const float2 c = *pair;
                    value.x += c.x;
                    value.y += c.y;
                }
                *pair = value;
            }
        }
    }

    __device__ __forceinline__ void write_out(const sched::Tile& out) {
        if constexpr (V::kAccumulate) {
            // C's loads went out after this warpgroup's previous stores had read the D tile (load_c):
            // their arrival also frees the tile.
            mbarrier_wait(smem.c_full() + math_wg, c_phase);
            c_phase ^= 1;
        } else {
            // This warpgroup's previous TMA stores must have finished reading its rows of the D tile.
            if (store_leader)
                tma_store_wait_read<0>();
            warpgroup_sync();
        }
        if constexpr (V::kFloatD)
            stage_fp32();
        else
            stage_bf16();
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
                for (uint32_t r = 0; r < kMmaRows; ++r) {
                    const uint32_t row = math_wg * kWarpgroupRows + r * 64;
                    tma_store_2d(tmap_d, smem_d + slab * V::BLOCK_M * D::kSpanBytes + row * D::kSpanBytes,
                                 col0 + slab * D::kSpanCols, out.row + row);
                }
                tma_store_commit();
            }
        } else {
            // Tiles with padding rows or rows past masked_m: only real rows are written.
            constexpr uint32_t kChunksPerRow = V::BLOCK_N / D::kChunkCols;
            for (uint32_t idx = threadIdx.x % 128; idx < kWarpgroupRows * kChunksPerRow; idx += 128) {
                const uint32_t c = (idx % kChunksPerRow) * D::kChunkCols;
                const uint32_t r = math_wg * kWarpgroupRows + idx / kChunksPerRow;
                bool write = r < out.valid_rows && col0 + c < V::SHAPE_N;
                if (out.check_rows && write)
                    write = __ldg(params.layout + out.row + r) >= 0;
                if (write)
                    *reinterpret_cast<uint4*>(static_cast<OutT*>(params.d) +
                                              static_cast<uint64_t>(out.row + r) * params.d_stride + col0 + c) =
                        *reinterpret_cast<const uint4*>(smem_d + D::offset(r, c));
            }
        }
    }

    __device__ __forceinline__ void run() {
        sched::Tile tile;
        while (scheduler.next(tile)) {
            k_loop(tile);
            write_out(tile);
        }
        if (store_leader)
            tma_store_wait<0>();
    }
};

// tmap_c: C's map with kAccumulate (D's boxes and swizzle over C); otherwise unused (the host passes D's).
template <uint32_t SHAPE_N, uint32_t SHAPE_K, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kNumStages, GemmType kType,
          uint32_t kMulticast, bool kMulticastB, typename OutT, bool kAccumulate, bool kMnMajorA, bool kMnMajorB>
__global__ void __launch_bounds__(MathShape<BLOCK_M>::kBlockThreads, 1)
    bf16_gemm_kernel(const Params params, const __grid_constant__ CUtensorMap tmap_a,
                     const __grid_constant__ CUtensorMap tmap_b, const __grid_constant__ CUtensorMap tmap_d,
                     const __grid_constant__ CUtensorMap tmap_c) {
    using V = Variant<SHAPE_N, SHAPE_K, BLOCK_M, BLOCK_N, kNumStages, kType, kMulticast, kMulticastB, OutT,
                      kAccumulate, kMnMajorA, kMnMajorB>;
    using Scheduler = typename V::Scheduler;
    run_gemm_roles<V, SharedState, kProducerRegisters, kMathRegisters>(
        params,
        [&](const SharedState<V>& smem) {
            tma_prefetch_tensor_map(&tmap_a);
            tma_prefetch_tensor_map(&tmap_b);
            tma_prefetch_tensor_map(&tmap_d);
            if constexpr (kAccumulate)
                tma_prefetch_tensor_map(&tmap_c);
            init_barriers(smem);
        },
        [&](const SharedState<V>& smem, Scheduler& scheduler, uint32_t cta_rank, uint32_t warp, uint32_t lane) {
            if (warp == V::kNumMathWarps && elect_one_sync())
                load_operands(smem, scheduler, &tmap_a, &tmap_b, cta_rank);
        },
        [&](const SharedState<V>& smem, Scheduler& scheduler, uint32_t cta_rank, uint32_t warp, uint32_t lane) {
            MathWarpgroup<V> math{smem, params, &tmap_d, &tmap_c, scheduler, cta_rank, warp, lane};
            math.run();
        });
}

}  // namespace dg_moe::sm90_bf16_gemm
