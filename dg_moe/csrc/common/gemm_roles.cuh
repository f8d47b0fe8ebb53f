#pragma once
// The frame of the SM90 M-grouped GEMM kernels (sm90_fp8_gemm, sm90_bf16_gemm): shared memory, the
// scheduler every role walks, and the split into producer and math warpgroups, around each family's
// own roles.
#include <cstdint>

#include "common/cluster.cuh"
#include "common/mbarrier.cuh"
#include "common/registers.cuh"

namespace dg_moe {

// Runs one CTA of variant V: `setup(smem)` on the first producer thread (prefetch the tensor maps,
// initialise the barriers), then `produce(smem, scheduler, cta_rank, warp, lane)` on the producer
// warpgroup and `compute(...)`, the same arguments, on the math warpgroups.
template <typename V, template <typename> class SharedState, uint32_t kProducerRegisters, uint32_t kMathRegisters,
          typename Params, typename Setup, typename Produce, typename Compute>
__device__ __forceinline__ void run_gemm_roles(const Params& params, Setup setup, Produce produce, Compute compute) {
    using Scheduler = typename V::Scheduler;

    extern __shared__ uint8_t smem_raw[];
    // Offset the array itself rather than round an integer address: derived from smem_raw, every
    // pointer below stays known to be shared, so accesses compile to LDS/STS, not generic LD/ST.
    const SharedState<V> smem{smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023)};
    uint32_t* group_table = nullptr;
    if constexpr (Scheduler::kGroupCursor) {
        if (params.group_table != 0)
            group_table = smem.group_table();
    }

    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == V::kNumMathThreads)
        setup(smem);
    // The peer CTA arrives on these barriers and receives multicast copies: both must be set up.
    auto block_sync = [] {
        if constexpr (V::kMulticast > 1)
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
    const uint32_t cta_rank = blockIdx.x % V::kMulticast;

    if (threadIdx.x >= V::kNumMathThreads) {
        if constexpr (V::kNumMathThreads == 256)
            warpgroup_release_registers<kProducerRegisters>();
        produce(smem, scheduler, cta_rank, warp, lane);
    } else {
        if constexpr (V::kNumMathThreads == 256)
            warpgroup_claim_registers<kMathRegisters>();
        compute(smem, scheduler, cta_rank, warp, lane);
    }
    // No CTA may leave while its peer can still multicast into it or arrive on its barriers.
    if constexpr (V::kMulticast > 1)
        cluster_sync();
}

}  // namespace dg_moe
