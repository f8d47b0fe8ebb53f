// Shared-memory mbarrier (SM90): the completion object of TMA loads and of producer/consumer
// hand-offs in the GEMM pipelines. Thin inline-PTX wrappers; the barrier is a uint64_t in
// shared memory (8-byte aligned).
#pragma once

#include <cstdint>

namespace dg_moe {

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// One thread initialises; `arrive_count` arrivals (plus the expected transaction bytes)
// complete each phase.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrive_count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(arrive_count) : "memory");
}

// Makes initialised barriers visible to the async proxy (TMA) and to the other CTAs of the
// cluster; follow it with a CTA (or cluster) barrier before any thread uses them.
__device__ __forceinline__ void mbarrier_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Arrive once and announce `tx_bytes` more bytes that async copies will deliver this phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t tx_bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(tx_bytes)
                 : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint32_t bar_addr) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar_addr) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) { mbarrier_arrive(smem_u32(bar)); }

// Arrive on the barrier at the same shared-memory offset in CTA `cta_rank` of the cluster
// (consumers releasing a stage that a multicast producer in another CTA refills). Default
// semantics (release at CTA scope): the consumers only read the stage, and a `.release.cluster`
// arrive is a cluster-wide fence that made the multicast GEMM 3.3x slower when every consumer
// warp issued it each K block.
__device__ __forceinline__ void mbarrier_arrive_cluster(uint32_t bar_addr, uint32_t cta_rank) {
    asm volatile(
        "{\n"
        ".reg .b32 remote;\n"
        "mapa.shared::cluster.u32 remote, %0, %1;\n"
        "mbarrier.arrive.shared::cluster.b64 _, [remote];\n"
        "}" ::"r"(bar_addr),
        "r"(cta_rank)
        : "memory");
}

__device__ __forceinline__ void mbarrier_arrive_cluster(uint64_t* bar, uint32_t cta_rank) {
    mbarrier_arrive_cluster(smem_u32(bar), cta_rank);
}

// True once the phase with parity `phase` has completed (acquire: data delivered by the
// completing copies is visible to the caller). `bar_addr`: the barrier's shared-window address; a
// K loop that passes one computed from an integer base spares ptxas rebuilding the window from the
// CTA's cluster id (an S2UR) at every wait, as converting a generic pointer makes it do.
__device__ __forceinline__ bool mbarrier_try_wait(uint32_t bar_addr, uint32_t phase) {
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}"
        : "=r"(done)
        : "r"(bar_addr), "r"(phase)
        : "memory");
    return done != 0;
}

__device__ __forceinline__ void mbarrier_wait(uint32_t bar_addr, uint32_t phase) {
    while (!mbarrier_try_wait(bar_addr, phase)) {
    }
}

__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, uint32_t phase) {
    return mbarrier_try_wait(smem_u32(bar), phase);
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t phase) { mbarrier_wait(smem_u32(bar), phase); }

}  // namespace dg_moe
