#pragma once
// SM90 weight-gradient GEMM, D[fp32] = C + A @ B^T, on FP8 operands with recipe (1, 1, 128) (A and B
// each carry one FP32 scale per row for every 128-wide K block) or on BF16 operands (Operands::Bf16: no
// scales, K blocks 64 wide). One problem (Normal), or groups concatenated along K (K-grouped, the MoE
// weight gradient): group g multiplies its own K rows into D[g], the K range read from a device array,
// so the launch needs no host copy of the group sizes.
//
// FP8 A and B are K-major (row r of A is K contiguous bytes), as FP8 wgmma needs both operands in shared
// memory; the scales are MN-major (one contiguous vector of M or N floats per K block), so the TMA
// loads each stage's scales as one box beside the operands. BF16 A and B are read MN-major, as the
// K-grouped op stores them ([sum_K, M], [sum_K, N]: wgmma transposes 16-bit operands), in boxes of 64
// M or N indices x 64 K rows, so no transposed copy is made of either.
//
// Roles (a persistent grid, one CTA per SM; every role walks the same tile sequence, TileWalker):
// - producer warpgroup (the last 128 threads, 40 registers after setmaxnreg): one elected lane issues
//   the TMA loads of A, B, SFA and SFB (FP8) into a kNumStages-deep ring, one stage per K block (FP8: one
//   128-byte swizzled row of 128 K values per M or N index; BF16: 64-wide chunks of M or N indices, one
//   128-byte row per K index, the chunk of index r at byte r * 128 as well);
// - two math warpgroups (232 registers), 64 rows of the 128-row tile each: per K block, wgmma into
//   FP32 accumulators, then promotion on the CUDA cores, sums += acc * (sfa[row] * sfb[col]); the two
//   scales form an outer product, so every accumulator has its own factor (one FMUL and one FFMA
//   each, where the (1, 128, 128) kernel needs one FFMA). At 128 wide and narrower the K loop is
//   software-pipelined over two accumulator sets: a warpgroup promotes one K block while its next one
//   runs on the tensor cores (v25: 0.77-0.90 -> 0.84-1.03 of DeepGEMM's speed). Wider tiles have no
//   registers for a second set; there, while one warpgroup promotes, only the other's wgmmas keep the
//   tensor cores busy. BF16 products are exact in FP32 and unscaled: their wgmmas accumulate straight
//   into the sums across the tile's K blocks, with nothing to promote.
// - epilogue: each math thread sends its FP32 sums straight to global memory in 8-byte column pairs
//   (full 32-byte sectors per quad of lanes): plain stores, or when accumulating reductions (red.add)
//   into d, which already holds C (the launcher copies a separate c into d first). A thread that loaded
//   C itself from an address that may alias D had to keep every load behind its previous store: 32
//   serialised memory round trips per tile, about half the tile's time at K = 4096. Rows past M and
//   columns past N are never written. A tile of an empty group (K = 0) runs no K block: it writes zeros,
//   or nothing when accumulating.
#include <cstdint>
#include <type_traits>

#include "common/cluster.cuh"
#include "common/elect.cuh"
#include "common/global_reduce.cuh"
#include "common/mbarrier.cuh"
#include "common/registers.cuh"
#include "common/smem_load.cuh"
#include "common/tma.cuh"
#include "common/unroll.cuh"
#include "common/wgmma.cuh"
#include "kernels/sm90_fp8_gemm_constants.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error \
    "sm90_fp8_wgrad needs wgmma and setmaxnreg, which exist on sm_90a only: build with -gencode=arch=compute_90a,code=sm_90a"
#endif

namespace dg_moe::sm90_fp8_wgrad {

using sm90_fp8_gemm::kMaxSharedBytes;

enum class Operands : uint32_t {
    Fp8 = 0,   // e4m3 with per-row scales per 128-wide K block (recipe (1, 1, 128))
    Bf16 = 1,  // bfloat16, no scales
};

// Every stage row of A and B is one 128-byte swizzle span: kBlockKOf values of the operand type.
constexpr uint32_t kRowBytes = 128;
template <Operands kOperands>
constexpr uint32_t kBlockKOf = kOperands == Operands::Fp8 ? 128 : 64;

enum class WgradType : uint32_t {
    Normal = 0,        // one [M, K] x [N, K] problem
    KGrouped = 1,      // layout[G]: K of each group, groups back to back along K
    KGroupedPsum = 2,  // layout[G]: running sums of the groups' K (the end row of each group)
};

constexpr uint32_t kNumProducerThreads = 128;
constexpr uint32_t kNumMathThreads = 256;
constexpr uint32_t kNumMathWarps = kNumMathThreads / 32;
constexpr uint32_t kBlockThreads = kNumMathThreads + kNumProducerThreads;
// 128 x 40 + 256 x 232 = 64512 of the SM's 65536 registers.
constexpr uint32_t kProducerRegisters = 40;
constexpr uint32_t kMathRegisters = 232;
// Registers a math thread may spend on accumulators and promoted sums (and, unpipelined, one K block's
// SFB values), of the 232 setmaxnreg gives it; the rest hold addresses, scales and loop state.
constexpr uint32_t kWgradRegisterBudget = 192;

struct Params {
    float* d;           // element (g, r, col) at d + g * d_group_stride + r * d_row_stride + col
    const int* layout;  // K-grouped: K of each group or their running sums; null for Normal
    uint64_t d_group_stride;
    uint32_t d_row_stride;
    uint32_t m;
    uint32_t k;  // Normal: K; K-grouped: unused (each group's K comes from layout)
    uint32_t num_groups;
    uint32_t pairs;       // 1: every row of d starts 8-byte aligned, so columns go out in float2 pairs
    uint32_t accumulate;  // 1: D += A @ B^T (d holds C); 0: D = A @ B^T
};

template <uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kNumStages, bool kScaled>
struct SharedLayout {
    static constexpr uint32_t kBytesA = BLOCK_M * kRowBytes;
    static constexpr uint32_t kBytesB = BLOCK_N * kRowBytes;
    static constexpr uint32_t kBytesSFA = kScaled ? BLOCK_M * sizeof(float) : 0;
    static constexpr uint32_t kBytesSFB = kScaled ? BLOCK_N * sizeof(float) : 0;
    // A and B start on 1024-byte boundaries (128B swizzle); the scale boxes on 128-byte ones.
    static constexpr uint32_t kStageBytes = (kBytesA + kBytesB + kBytesSFA + kBytesSFB + 1023) / 1024 * 1024;
    static constexpr uint32_t kOffsetBarriers = kNumStages * kStageBytes;
    // Barriers: full and empty per stage.
    static constexpr uint32_t kNumBarriers = 2 * kNumStages;
    // +1024: the dynamic shared-memory base is only 16-byte aligned; 128B swizzle needs 1024.
    static constexpr uint32_t kTotalBytes = kOffsetBarriers + kNumBarriers * sizeof(uint64_t) + 1024;
    static constexpr uint32_t kTxBytes = kBytesA + kBytesB + kBytesSFA + kBytesSFB;
    static_assert(kBytesA % 1024 == 0 && kBytesB % 1024 == 0, "operand tiles keep the 1024-byte swizzle alignment");
    static_assert((kBytesA + kBytesB + kBytesSFA) % 128 == 0, "TMA destinations start on 128-byte boundaries");
};

__host__ __device__ constexpr uint32_t ceil_div(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

struct Tile {
    uint32_t group;
    uint32_t m_block;
    uint32_t n_block;
    uint32_t k_block_begin;  // first K block (kBlockK rows) of the tile's group, in A's and B's K dimension
    uint32_t num_k_blocks;   // 0 for an empty group
};

// The tile order every role walks: cluster c takes units c, c + clusters, ... of G groups x m-units x
// n-blocks, group by group (so a CTA's group index only grows, and K-grouped sizes are summed once per
// CTA from a running cursor), inside a group in bands of kBandWidth column blocks with columns fastest:
// one wave of CTAs then streams a few A row blocks and kBandWidth B row blocks, which stay in L2. A unit
// is one m-block, or with kMulticast = 2 the m-blocks 2u and 2u + 1 of one n-block, CTA rank r taking
// 2u + r: the pair shares B (the launch guarantees an even m-block count then).
template <WgradType kType, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t SHAPE_N, uint32_t kBlockK,
          uint32_t kMulticast, uint32_t kBandWidth = 16>
struct TileWalker {
    static constexpr uint32_t kNumNBlocks = ceil_div(SHAPE_N, BLOCK_N);

    const int* layout;
    uint32_t k;
    uint32_t m_units;
    uint32_t tiles_per_group;
    uint32_t num_tiles;
    uint32_t next_index;
    const uint32_t cta_rank = blockIdx.x % kMulticast;
    // Sizes layout: the first K row of group `cursor_group`.
    uint32_t cursor_group = 0, cursor_k = 0;

    __device__ __forceinline__ TileWalker(const Params& params)
        : layout(params.layout),
          k(params.k),
          m_units(ceil_div(params.m, BLOCK_M) / kMulticast),
          tiles_per_group(ceil_div(params.m, BLOCK_M) / kMulticast * kNumNBlocks),
          num_tiles(ceil_div(params.m, BLOCK_M) / kMulticast * kNumNBlocks * params.num_groups),
          next_index(blockIdx.x / kMulticast) {}

    // A negative size (never valid: the op checks the layout on CPU tensors) counts as 0.
    __device__ __forceinline__ uint32_t layout_at(uint32_t g) const {
        const int value = __ldg(layout + g);
        return value > 0 ? static_cast<uint32_t>(value) : 0u;
    }

    __device__ __forceinline__ bool next(Tile& tile) {
        if (next_index >= num_tiles)
            return false;
        const uint32_t index = next_index;
        next_index += gridDim.x / kMulticast;
        tile.group = index / tiles_per_group;
        const uint32_t in_group = index - tile.group * tiles_per_group;
        const uint32_t band = in_group / (m_units * kBandWidth);
        const uint32_t in_band = in_group - band * m_units * kBandWidth;
        const uint32_t n_first = band * kBandWidth;
        const uint32_t width = kNumNBlocks - n_first < kBandWidth ? kNumNBlocks - n_first : kBandWidth;
        tile.m_block = in_band / width * kMulticast + cta_rank;
        tile.n_block = n_first + in_band % width;

        uint32_t begin = 0, end = k;
        if constexpr (kType == WgradType::KGroupedPsum) {
            begin = tile.group == 0 ? 0u : layout_at(tile.group - 1);
            end = layout_at(tile.group);
        } else if constexpr (kType == WgradType::KGrouped) {
            for (; cursor_group < tile.group; ++cursor_group)
                cursor_k += layout_at(cursor_group);
            begin = cursor_k;
            end = begin + layout_at(tile.group);
        }
        // Group sizes are multiples of 128, so of either kBlockK.
        tile.k_block_begin = begin / kBlockK;
        tile.num_k_blocks = end > begin ? (end - begin) / kBlockK : 0u;
        return true;
    }
};

// Compile-time facts of one variant, shared by every role.
template <uint32_t SHAPE_N_, uint32_t BLOCK_M_, uint32_t BLOCK_N_, uint32_t kNumStages_, WgradType kType_,
          Operands kOperands_, bool kShareB_>
struct Variant {
    static constexpr uint32_t SHAPE_N = SHAPE_N_, BLOCK_M = BLOCK_M_, BLOCK_N = BLOCK_N_;
    static constexpr uint32_t kNumStages = kNumStages_;
    static constexpr WgradType kType = kType_;
    static constexpr Operands kOperands = kOperands_;
    static constexpr bool kScaled = kOperands == Operands::Fp8;
    static constexpr uint32_t kBlockK = kBlockKOf<kOperands>;
    // kShareB: a 2-CTA cluster on m-blocks 2u and 2u + 1 of one n-block; each CTA loads half of B's rows
    // and multicasts them to both, so B is read from L2 once per pair.
    static constexpr bool kShareB = kShareB_;
    static constexpr uint32_t kMulticast = kShareB ? 2 : 1;
    static_assert(!kShareB || (BLOCK_N / 2) % 8 == 0,
                  "each CTA of a B-sharing pair loads BLOCK_N / 2 rows of B, a whole number of 8-row swizzle atoms");
    static_assert(!kShareB || kOperands == Operands::Fp8 || BLOCK_N % 128 == 0,
                  "a BF16 B-sharing pair splits B's tile into whole 64-wide chunks: BLOCK_N 128");

    static_assert(BLOCK_M == 128, "two math warpgroups of 64 rows each");
    // heuristic.BUILT_BLOCK_NS / BF16_BLOCK_NS: each width needs its wgmma shape in common/wgmma.cuh.
    static_assert(kScaled ? (BLOCK_N == 64 || BLOCK_N == 128 || BLOCK_N == 136 || BLOCK_N == 144 || BLOCK_N == 152)
                          : (BLOCK_N == 64 || BLOCK_N == 128),
                  "BLOCK_N must be 64, 128, 136, 144 or 152 (FP8) or 64 or 128 (BF16)");
    static_assert(kNumStages >= 2, "the pipeline needs at least two stages");
    static_assert(SHAPE_N > 0, "N must be positive");

    using Layout = SharedLayout<BLOCK_M, BLOCK_N, kNumStages, kScaled>;
    using MMA = std::conditional_t<kScaled, wgmma::FP8MMA<BLOCK_N>, wgmma::BF16MMA<BLOCK_N, true, true>>;
    // 4 k32 (FP8) or k16 (BF16) steps per K block: 32 bytes along a K-major row, or 16 rows (2048 bytes)
    // down an MN-major chunk, in the descriptors' 16-byte address units.
    static constexpr uint32_t kMmaSteps = 4;
    static constexpr uint32_t kDescStep = kScaled ? 32 >> 4 : (16 * kRowBytes) >> 4;
    // BF16: bytes of one MN-major chunk (64 indices x kBlockK K rows), the descriptors' leading byte offset.
    static constexpr uint32_t kChunkBytes = kBlockK * kRowBytes;

    // An operand's smem descriptor at byte `addr` of a stage.
    __device__ __forceinline__ static uint64_t desc(uint32_t addr) {
        if constexpr (kScaled)
            return wgmma::smem_desc_k_major_sw128(addr);
        else
            return wgmma::smem_desc_mn_major_sw128(addr, kChunkBytes);
    }
    using Walker = TileWalker<kType, BLOCK_M, BLOCK_N, SHAPE_N, kBlockK, kMulticast>;
    static constexpr uint32_t kNumAccum = MMA::kNumAccum;
    // Each thread's columns of a tile: two adjacent ones in every 8-column chunk.
    static constexpr uint32_t kNumColPairs = BLOCK_N / 8;
    // FP8 pipelined (128 wide and narrower, MathWarpgroup::run): two K blocks' accumulators and the promoted
    // sums; FP8 wider: one block's accumulators, the sums and the block's SFB values; BF16: the sums alone.
    static constexpr bool kPipelined = kScaled && BLOCK_N <= 128;
    static_assert((kPipelined ? 3 * kNumAccum : kScaled ? 2 * kNumAccum + 2 * kNumColPairs : kNumAccum)
                      <= kWgradRegisterBudget,
                  "accumulators, sums and the K block's SFB values exceed the register budget");
    static_assert(Layout::kTotalBytes <= kMaxSharedBytes, "the stages exceed 227 KB of shared memory");
};

// The CTA's shared memory, carved as SharedLayout says.
template <typename V>
struct SharedState {
    using Layout = typename V::Layout;
    uint8_t* base;  // 1024-byte aligned
    // `base` as a shared-window address, derived from the window's own address of the dynamic shared
    // memory: converted from the generic `base`, ptxas rebuilt it from the CTA's cluster id (S2UR) in
    // every K block.
    uint32_t addr;

    __device__ __forceinline__ uint8_t* stage_a(uint32_t s) const { return base + s * Layout::kStageBytes; }
    __device__ __forceinline__ uint8_t* stage_b(uint32_t s) const { return stage_a(s) + Layout::kBytesA; }
    __device__ __forceinline__ float* stage_sfa(uint32_t s) const {
        return reinterpret_cast<float*>(stage_b(s) + Layout::kBytesB);
    }
    __device__ __forceinline__ float* stage_sfb(uint32_t s) const {
        return reinterpret_cast<float*>(stage_b(s) + Layout::kBytesB + Layout::kBytesSFA);
    }
    __device__ __forceinline__ uint64_t* full() const {
        return reinterpret_cast<uint64_t*>(base + Layout::kOffsetBarriers);
    }
    __device__ __forceinline__ uint64_t* empty() const { return full() + V::kNumStages; }
    // Stage s's barriers as shared-window addresses (the math warps' form: no generic-to-shared conversion).
    __device__ __forceinline__ uint32_t full_addr(uint32_t s) const { return addr + Layout::kOffsetBarriers + s * 8; }
    __device__ __forceinline__ uint32_t empty_addr(uint32_t s) const { return full_addr(V::kNumStages + s); }
};

// Producer thread: every TMA load of A, B, SFA and SFB (FP8), one stage per K block of every tile.
template <typename V>
__device__ __forceinline__ void load_operands(const SharedState<V>& smem, typename V::Walker& walker,
                                              const CUtensorMap* tmap_a, const CUtensorMap* tmap_b,
                                              const CUtensorMap* tmap_sfa, const CUtensorMap* tmap_sfb) {
    Tile tile;
    uint64_t* full = smem.full();
    uint64_t* empty = smem.empty();
    uint32_t iter = 0;
    while (walker.next(tile)) {
        const uint32_t m0 = tile.m_block * V::BLOCK_M, n0 = tile.n_block * V::BLOCK_N;
        DG_MOE_NO_UNROLL
        for (uint32_t kb = 0; kb < tile.num_k_blocks; ++kb, ++iter) {
            const uint32_t s = iter % V::kNumStages, phase = (iter / V::kNumStages) & 1;
            const uint32_t k_block = tile.k_block_begin + kb;
            mbarrier_wait(empty + s, phase ^ 1);
            mbarrier_arrive_expect_tx(full + s, V::Layout::kTxBytes);
            // Rows past M or N come in as zeros (and count towards the transaction bytes).
            const int32_t k0 = static_cast<int32_t>(k_block * V::kBlockK);
            // This CTA's half of B's rows with kShareB, into the same offsets of both CTAs (each one's
            // full barrier counts both halves).
            constexpr uint32_t kRowsB = V::kShareB ? V::BLOCK_N / 2 : V::BLOCK_N;
            uint8_t* dst_b = smem.stage_b(s) + (V::kShareB ? walker.cta_rank * kRowsB * kRowBytes : 0u);
            const uint32_t b0 = n0 + (V::kShareB ? walker.cta_rank * kRowsB : 0u);
            if constexpr (V::kScaled) {
                tma_load_2d(tmap_a, smem.stage_a(s), full + s, k0, m0);
                if constexpr (V::kShareB)
                    tma_load_2d_multicast(tmap_b, dst_b, full + s, k0, b0, 0b11);
                else
                    tma_load_2d(tmap_b, dst_b, full + s, k0, b0);
            } else {
                tma_load_mn_chunks<V::BLOCK_M / 64, V::kChunkBytes>(tmap_a, smem.stage_a(s), full + s, m0, k0, false);
                tma_load_mn_chunks<kRowsB / 64, V::kChunkBytes>(tmap_b, dst_b, full + s, b0, k0, V::kShareB);
            }
            if constexpr (V::kScaled) {
                tma_load_2d(tmap_sfa, smem.stage_sfa(s), full + s, m0, k_block);
                tma_load_2d(tmap_sfb, smem.stage_sfb(s), full + s, n0, k_block);
            }
        }
    }
}

// One math warpgroup: warpgroup w owns rows [64 w, 64 w + 64) of each tile.
template <typename V>
struct MathWarpgroup {
    using MMA = typename V::MMA;
    using Layout = typename V::Layout;
    static constexpr uint32_t kNumAccum = V::kNumAccum;

    const SharedState<V>& smem;
    const Params& params;
    typename V::Walker& walker;
    const uint32_t warp, lane;
    // Broadcast from lane 0 so ptxas knows it is warp-uniform: the A descriptor then lives in uniform
    // registers and the four wgmmas of a K block issue back to back.
    const uint32_t math_wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
    // Accumulator i of m64nNk32 holds row (lane / 4) + 8 * ((i / 2) % 2) of the warp's 16, column
    // 8 * (i / 4) + 2 * (lane % 4) + i % 2.
    const uint32_t row_in_tile = math_wg * 64 + (warp % 4) * 16 + lane / 4;  // and row_in_tile + 8
    const uint32_t col_in_chunk = 2 * (lane % 4);
    const uint32_t smem_addr = smem.addr;

    float result[kNumAccum];
    uint32_t iter = 0;

    __device__ __forceinline__ MathWarpgroup(const SharedState<V>& smem_, const Params& params_,
                                             typename V::Walker& walker_, uint32_t warp_, uint32_t lane_)
        : smem(smem_), params(params_), walker(walker_), warp(warp_), lane(lane_) {}

    // The K block in stage s into acc (added to what acc holds when `onto`, else from zero): one commit
    // group of four wgmmas (k32 FP8 or k16 BF16, 32 bytes of each stage row apiece).
    __device__ __forceinline__ void issue(uint32_t s, float (&acc)[kNumAccum], bool onto) {
        const uint32_t stage = smem_addr + s * Layout::kStageBytes;
        const uint64_t desc_a = V::desc(stage + math_wg * 64 * kRowBytes);
        const uint64_t desc_b = V::desc(stage + Layout::kBytesA);
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < kNumAccum; ++i)
            wgmma::fence_operand(acc[i]);
        wgmma::fence();
        DG_MOE_UNROLL
        for (uint32_t kk = 0; kk < V::kMmaSteps; ++kk)
            MMA::mma(desc_a + kk * V::kDescStep, desc_b + kk * V::kDescStep, acc, onto || kk > 0);
        wgmma::commit_group();
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < kNumAccum; ++i)
            wgmma::fence_operand(acc[i]);
    }

    // This warp is done with stage s (its wgmmas completed and the promotion consumed the stage's
    // scales): one arrival per warp on the stage's empty barrier, and with kShareB on the peer CTA's too
    // (its producer writes half of B into this CTA's stage).
    __device__ __forceinline__ void release(uint32_t s) const {
        __syncwarp();
        if (lane == 0) {
            const uint32_t empty = smem.empty_addr(s);
            mbarrier_arrive(empty);
            if constexpr (V::kShareB)
                mbarrier_arrive_cluster(empty, walker.cta_rank ^ 1);
        }
    }

    // This thread's scales in stage s: two rows of SFA, and two columns of every 8-column chunk of SFB
    // (8-byte aligned: the column is even).
    struct Scales {
        float a_lo, a_hi;
        float2 b[V::kNumColPairs];
    };

    // Shared-window addresses in stage s of this thread's first SFA row (the second is 8 rows on) and of its
    // first SFB column pair (one every 8 columns).
    __device__ __forceinline__ uint32_t sfa_addr(uint32_t s) const {
        return smem_addr + s * Layout::kStageBytes + Layout::kBytesA + Layout::kBytesB + row_in_tile * 4;
    }
    __device__ __forceinline__ uint32_t sfb_addr(uint32_t s) const {
        return smem_addr + s * Layout::kStageBytes + Layout::kBytesA + Layout::kBytesB + Layout::kBytesSFA +
               col_in_chunk * 4;
    }

    __device__ __forceinline__ Scales load_scales(uint32_t s) const {
        const uint32_t sfa = sfa_addr(s), sfb = sfb_addr(s);
        Scales scales;
        scales.a_lo = ld_shared_f32(sfa);
        scales.a_hi = ld_shared_f32(sfa + 8 * 4);
        DG_MOE_UNROLL
        for (uint32_t j = 0; j < V::kNumColPairs; ++j)
            scales.b[j] = ld_shared_f32x2(sfb + 8 * j * 4);
        return scales;
    }

    __device__ __forceinline__ void wait_full(uint32_t at) const {
        mbarrier_wait(smem.full_addr(at % V::kNumStages), (at / V::kNumStages) & 1);
    }

    // FP8: one K block into acc, then promoted into the sums with the stage's scales, loaded before the
    // wgmmas issue so that their latency is spent while the tensor cores work.
    __device__ __forceinline__ void k_block(float (&acc)[kNumAccum]) {
        const uint32_t s = iter % V::kNumStages;
        wait_full(iter);
        const Scales scales = load_scales(s);
        issue(s, acc, false);
        wgmma::wait_group<0>();
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < kNumAccum; ++i) {
            const float scale_a = (i / 2) % 2 == 0 ? scales.a_lo : scales.a_hi;
            const float scale_b = i % 2 == 0 ? scales.b[i / 4].x : scales.b[i / 4].y;
            result[i] = fmaf(acc[i], scale_a * scale_b, result[i]);
        }
        release(s);
        ++iter;
    }

    // BF16: the tile's K blocks straight into the sums (the first from zero). One commit group stays in
    // flight: once the previous block's group has completed, its stage goes back to the producer.
    __device__ __forceinline__ void bf16_k_loop(uint32_t num_k_blocks) {
        mbarrier_wait(smem.full() + iter % V::kNumStages, (iter / V::kNumStages) & 1);
        issue(iter % V::kNumStages, result, false);
        ++iter;
        DG_MOE_NO_UNROLL
        for (uint32_t kb = 1; kb < num_k_blocks; ++kb, ++iter) {
            mbarrier_wait(smem.full() + iter % V::kNumStages, (iter / V::kNumStages) & 1);
            issue(iter % V::kNumStages, result, true);
            wgmma::wait_group<1>();
            release((iter - 1) % V::kNumStages);
        }
        wgmma::wait_group<0>();
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < kNumAccum; ++i)
            wgmma::fence_operand(result[i]);
        release((iter - 1) % V::kNumStages);
    }

    // D = sums, or D += sums when accumulating, for this thread's rows below M and columns below N.
    __device__ __forceinline__ void write_out(const Tile& tile) const {
        const uint32_t row0 = tile.m_block * V::BLOCK_M + row_in_tile;
        float* d = params.d + tile.group * params.d_group_stride;
        const bool accumulate = params.accumulate != 0;
        DG_MOE_UNROLL
        for (uint32_t half = 0; half < 2; ++half) {
            const uint32_t row = row0 + 8 * half;
            if (row >= params.m)
                continue;
            float* d_row = d + static_cast<uint64_t>(row) * params.d_row_stride;
            DG_MOE_UNROLL
            for (uint32_t j = 0; j < V::kNumColPairs; ++j) {
                const uint32_t col = tile.n_block * V::BLOCK_N + 8 * j + col_in_chunk;
                const float lo = result[4 * j + 2 * half], hi = result[4 * j + 2 * half + 1];
                // An even N puts col + 1 below N whenever col is; an odd one needs both tested.
                if (V::SHAPE_N % 2 == 0 && params.pairs != 0) {
                    if (col < V::SHAPE_N) {
                        if (accumulate)
                            red_add_v2_f32(d_row + col, lo, hi);
                        else
                            *reinterpret_cast<float2*>(d_row + col) = float2{lo, hi};
                    }
                } else {
                    if (col < V::SHAPE_N) {
                        if (accumulate)
                            red_add_f32(d_row + col, lo);
                        else
                            d_row[col] = lo;
                    }
                    if (col + 1 < V::SHAPE_N) {
                        if (accumulate)
                            red_add_f32(d_row + col + 1, hi);
                        else
                            d_row[col + 1] = hi;
                    }
                }
            }
        }
    }

    // An empty group adds nothing to C, which d already holds (adding zeros would still flush a subnormal
    // C and turn -0 into +0).
    __device__ __forceinline__ void finish(const Tile& tile) const {
        if (tile.num_k_blocks > 0 || params.accumulate == 0)
            write_out(tile);
    }

    // Where the pipelined K loop stands in the stage ring: the stage it issues next and that stage's phase,
    // and the stage it promotes next. Stepped by compare and select, not by dividing a running count.
    struct Ring {
        uint32_t issue = 0, phase = 0, promote = 0;
        __device__ __forceinline__ static uint32_t after(uint32_t s) { return s + 1 == V::kNumStages ? 0 : s + 1; }
    };

    // FP8: the K block in the ring's issue stage into acc (from zero), once its data has landed; left in
    // flight.
    __device__ __forceinline__ void issue_next(Ring& ring, float (&acc)[kNumAccum]) {
        mbarrier_wait(smem.full_addr(ring.issue), ring.phase);
        issue(ring.issue, acc, false);
        ring.phase ^= ring.issue + 1 == V::kNumStages ? 1u : 0u;
        ring.issue = Ring::after(ring.issue);
    }

    // FP8: the block in the ring's promote stage, in flight in acc with kPending younger commit groups
    // behind it, promoted into the sums once its wgmmas complete; then the stage goes back to the producer.
    // Each column pair's SFB is loaded where it is used: all of them up front spilled at 128 wide.
    template <uint32_t kPending>
    __device__ __forceinline__ void promote_next(Ring& ring, float (&acc)[kNumAccum]) {
        const uint32_t sfa = sfa_addr(ring.promote), sfb = sfb_addr(ring.promote);
        const float a_lo = ld_shared_f32(sfa), a_hi = ld_shared_f32(sfa + 8 * 4);
        wgmma::wait_group<kPending>();
        DG_MOE_UNROLL
        for (uint32_t i = 0; i < kNumAccum; ++i)
            wgmma::fence_operand(acc[i]);
        DG_MOE_UNROLL
        for (uint32_t j = 0; j < V::kNumColPairs; ++j) {
            const float2 b = ld_shared_f32x2(sfb + 8 * j * 4);
            result[4 * j] = fmaf(acc[4 * j], a_lo * b.x, result[4 * j]);
            result[4 * j + 1] = fmaf(acc[4 * j + 1], a_lo * b.y, result[4 * j + 1]);
            result[4 * j + 2] = fmaf(acc[4 * j + 2], a_hi * b.x, result[4 * j + 2]);
            result[4 * j + 3] = fmaf(acc[4 * j + 3], a_hi * b.y, result[4 * j + 3]);
        }
        release(ring.promote);
        ring.promote = Ring::after(ring.promote);
    }

    // FP8, 128 wide and narrower: the K loop software-pipelined over two accumulator sets, so that each
    // warpgroup's next K block runs on the tensor cores while it promotes the previous one. With one set, a
    // warpgroup's tensor work stops for each promotion (about 190 issue slots a block), and the tensor cores
    // stay busy only while the other warpgroup's wgmmas fill that gap. Three sets of accumulators (two in
    // flight, the sums) fit up to 128 wide (at 136 and 144 the loop spilled). Pairs of blocks keep the
    // buffer choice static (no indexed registers).
    __device__ __forceinline__ void run_pipelined() {
        float acc0[kNumAccum], acc1[kNumAccum];
        Ring ring;
        Tile tile;
        while (walker.next(tile)) {
            DG_MOE_UNROLL
            for (uint32_t i = 0; i < kNumAccum; ++i)
                result[i] = 0.0f;
            if (tile.num_k_blocks > 0) {
                issue_next(ring, acc0);
                DG_MOE_NO_UNROLL
                for (uint32_t pair = 0; pair < (tile.num_k_blocks - 1) / 2; ++pair) {
                    issue_next(ring, acc1);
                    promote_next<1>(ring, acc0);
                    issue_next(ring, acc0);
                    promote_next<1>(ring, acc1);
                }
                if (tile.num_k_blocks % 2 == 0) {
                    issue_next(ring, acc1);
                    promote_next<1>(ring, acc0);
                    promote_next<0>(ring, acc1);
                } else {
                    promote_next<0>(ring, acc0);
                }
            }
            finish(tile);
        }
    }

    __device__ __forceinline__ void run() {
        if constexpr (V::kPipelined) {
            run_pipelined();
        } else {
            float acc[kNumAccum];
            Tile tile;
            while (walker.next(tile)) {
                DG_MOE_UNROLL
                for (uint32_t i = 0; i < kNumAccum; ++i)
                    result[i] = 0.0f;
                if constexpr (V::kScaled) {
                    DG_MOE_NO_UNROLL
                    for (uint32_t kb = 0; kb < tile.num_k_blocks; ++kb)
                        k_block(acc);
                } else if (tile.num_k_blocks > 0) {
                    bf16_k_loop(tile.num_k_blocks);
                }
                finish(tile);
            }
        }
    }
};

// tmap_sfa and tmap_sfb are read for FP8 operands only (a BF16 launch passes any valid maps there).
template <uint32_t SHAPE_N, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t kNumStages, WgradType kType,
          Operands kOperands, bool kShareB>
__global__ void __launch_bounds__(kBlockThreads, 1)
    wgrad_kernel(const Params params, const __grid_constant__ CUtensorMap tmap_a,
                 const __grid_constant__ CUtensorMap tmap_b, const __grid_constant__ CUtensorMap tmap_sfa,
                 const __grid_constant__ CUtensorMap tmap_sfb) {
    using V = Variant<SHAPE_N, BLOCK_M, BLOCK_N, kNumStages, kType, kOperands, kShareB>;

    extern __shared__ uint8_t smem_raw[];
    // Offset the array itself rather than round an integer address: derived from smem_raw, every
    // pointer below stays known to be shared, so accesses compile to LDS/STS, not generic LD/ST.
    const uint32_t pad = (1024 - (smem_u32(smem_raw) & 1023)) & 1023;
    const SharedState<V> smem{smem_raw + pad, smem_u32(smem_raw) + pad};

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == kNumMathThreads) {
        tma_prefetch_tensor_map(&tmap_a);
        tma_prefetch_tensor_map(&tmap_b);
        if constexpr (V::kScaled) {
            tma_prefetch_tensor_map(&tmap_sfa);
            tma_prefetch_tensor_map(&tmap_sfb);
        }
        for (uint32_t s = 0; s < kNumStages; ++s) {
            mbarrier_init(smem.full() + s, 1);
            // A stage is refilled once the math warps of every CTA its B is multicast into released it.
            mbarrier_init(smem.empty() + s, kNumMathWarps * V::kMulticast);
        }
        mbarrier_init_fence();
    }
    // The peer CTA arrives on these barriers and receives multicast copies: both must be set up.
    if constexpr (kShareB)
        cluster_sync();
    else
        __syncthreads();

    typename V::Walker walker(params);
    if (threadIdx.x >= kNumMathThreads) {
        warpgroup_release_registers<kProducerRegisters>();
        if (warp == kNumMathWarps && elect_one_sync())
            load_operands(smem, walker, &tmap_a, &tmap_b, &tmap_sfa, &tmap_sfb);
    } else {
        warpgroup_claim_registers<kMathRegisters>();
        MathWarpgroup<V> math{smem, params, walker, warp, lane};
        math.run();
    }
    // No CTA may leave while its peer can still multicast into it or arrive on its barriers.
    if constexpr (kShareB)
        cluster_sync();
}

}  // namespace dg_moe::sm90_fp8_wgrad
