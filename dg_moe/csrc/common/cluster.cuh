// Thread-block clusters (SM90): the barrier that orders the CTAs of a cluster.
#pragma once

namespace dg_moe {

// Every thread of every CTA in the cluster arrives and waits; release/acquire make shared-memory
// writes before it (barrier initialisation included) visible cluster-wide after it. Not
// `.aligned`: callers reach it from diverged warps (the elected producer thread arrives last).
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;" ::: "memory");
}

}  // namespace dg_moe
