// y = x * alpha over a row-major [M, N] matrix: the smallest kernel that runs the whole Hopper
// data path the GEMMs use (TMA loads completing on mbarriers, a multi-stage ring of
// shared-memory tiles, TMA stores in bulk groups) so the JIT and launch path can be tested on it.
//
// One CTA walks tiles blockIdx.x, blockIdx.x + gridDim.x, ...; thread 0 keeps STAGES tile loads
// in flight, every thread scales the current tile in shared memory (fp32 multiply, one rounding
// to T, as torch does), thread 0 stores it and refills the stage once the store has read it.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "common/mbarrier.cuh"
#include "common/unroll.cuh"
#include "common/tma.cuh"

namespace dg_moe::sm90_scale {

template <typename T, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t STAGES, uint32_t THREADS>
struct Config {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>,
                  "sm90_scale: T must be float or __nv_bfloat16");
    static_assert(BLOCK_M >= 1 && BLOCK_M <= 256, "sm90_scale: BLOCK_M must be in [1, 256] (TMA box limit)");
    static_assert(BLOCK_N >= 1 && BLOCK_N <= 256, "sm90_scale: BLOCK_N must be in [1, 256] (TMA box limit)");
    static_assert(BLOCK_N * sizeof(T) % 16 == 0,
                  "sm90_scale: BLOCK_N * sizeof(T) must be a multiple of 16 bytes (TMA box row)");
    static_assert(STAGES >= 1 && STAGES <= 8, "sm90_scale: STAGES must be in [1, 8]");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "sm90_scale: THREADS must be a whole number of warps, at most 1024");

    static constexpr uint32_t kTileBytes = BLOCK_M * BLOCK_N * sizeof(T);
    static_assert(kTileBytes % 128 == 0,
                  "sm90_scale: a tile must be a multiple of 128 bytes so every stage "
                  "starts 128-byte aligned (TMA requirement)");
    static constexpr uint32_t kVectors = kTileBytes / 16;  // 16-byte vectors per tile
    static constexpr uint32_t kBarrierOffset = STAGES * kTileBytes;
    static constexpr uint32_t kSmemBytes = kBarrierOffset + STAGES * sizeof(uint64_t);
    static_assert(kSmemBytes <= 227 * 1024, "sm90_scale: tiles exceed the 227 KB of shared memory per block");
};

__device__ __forceinline__ uint32_t scale_bf16x2(uint32_t bits, float alpha) {
    __nv_bfloat162 pair = *reinterpret_cast<const __nv_bfloat162*>(&bits);
    float2 wide = __bfloat1622float2(pair);
    wide.x *= alpha;
    wide.y *= alpha;
    pair = __float22bfloat162_rn(wide);
    return *reinterpret_cast<const uint32_t*>(&pair);
}

// Scale one 16-byte vector in place: widen to fp32, multiply, round once to T.
template <typename T>
__device__ __forceinline__ void scale_vector(uint4& v, float alpha) {
    if constexpr (std::is_same_v<T, float>) {
        v.x = __float_as_uint(__uint_as_float(v.x) * alpha);
        v.y = __float_as_uint(__uint_as_float(v.y) * alpha);
        v.z = __float_as_uint(__uint_as_float(v.z) * alpha);
        v.w = __float_as_uint(__uint_as_float(v.w) * alpha);
    } else {
        v.x = scale_bf16x2(v.x, alpha);
        v.y = scale_bf16x2(v.y, alpha);
        v.z = scale_bf16x2(v.z, alpha);
        v.w = scale_bf16x2(v.w, alpha);
    }
}

template <typename T, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t STAGES, uint32_t THREADS>
__global__ void __launch_bounds__(THREADS)
    scale_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap y_map, float alpha,
                 uint32_t tiles_m, uint32_t tiles_n) {
    using Cfg = Config<T, BLOCK_M, BLOCK_N, STAGES, THREADS>;
    extern __shared__ __align__(1024) uint8_t smem[];
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + Cfg::kBarrierOffset);

    const uint32_t num_tiles = tiles_m * tiles_n;
    const uint32_t my_tiles = blockIdx.x < num_tiles ? (num_tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    const bool leader = threadIdx.x == 0;

    // i-th tile of this CTA -> (column, row) coordinates of its top-left element.
    auto tile_coords = [&](uint32_t i, int32_t& col, int32_t& row) {
        const uint32_t tile = blockIdx.x + i * gridDim.x;
        row = static_cast<int32_t>((tile / tiles_n) * BLOCK_M);
        col = static_cast<int32_t>((tile % tiles_n) * BLOCK_N);
    };
    auto issue_load = [&](uint32_t i) {
        const uint32_t stage = i % STAGES;
        int32_t col, row;
        tile_coords(i, col, row);
        mbarrier_arrive_expect_tx(&full[stage], Cfg::kTileBytes);
        tma_load_2d(&x_map, smem + stage * Cfg::kTileBytes, &full[stage], col, row);
    };

    if (leader) {
        tma_prefetch_tensor_map(&x_map);
        tma_prefetch_tensor_map(&y_map);
        for (uint32_t s = 0; s < STAGES; ++s)
            mbarrier_init(&full[s], 1);
        mbarrier_init_fence();
    }
    __syncthreads();

    if (leader) {
        for (uint32_t i = 0; i < STAGES && i < my_tiles; ++i)
            issue_load(i);
    }

    for (uint32_t i = 0; i < my_tiles; ++i) {
        const uint32_t stage = i % STAGES;
        uint8_t* tile = smem + stage * Cfg::kTileBytes;
        mbarrier_wait(&full[stage], (i / STAGES) & 1);

        // Out-of-bounds parts of edge tiles hold the TMA zero fill; the store clips them.
        uint4* vectors = reinterpret_cast<uint4*>(tile);
        DG_MOE_UNROLL_4
        for (uint32_t v = threadIdx.x; v < Cfg::kVectors; v += THREADS) {
            uint4 value = vectors[v];
            scale_vector<T>(value, alpha);
            vectors[v] = value;
        }
        tma_fence_shared();
        __syncthreads();

        if (leader) {
            int32_t col, row;
            tile_coords(i, col, row);
            tma_store_2d(&y_map, tile, col, row);
            tma_store_commit();
            if (i + STAGES < my_tiles) {
                tma_store_wait_read<0>();
                issue_load(i + STAGES);
            }
        }
    }

    // Shared memory must outlive the reads of the last stores.
    if (leader)
        tma_store_wait<0>();
}

}  // namespace dg_moe::sm90_scale
