// Named CTA barriers (bar.sync with an id and a thread count): synchronise a subset of the CTA's
// warps. Barrier 0 is __syncthreads; counts are multiples of 32.
#pragma once

#include <cstdint>

namespace dg_moe {

// Compile-time id and count: with a register id ptxas reserves all 16 barriers of the CTA.
template <uint32_t kId, uint32_t kNumThreads>
__device__ __forceinline__ void named_barrier_sync() {
    asm volatile("bar.sync %0, %1;" ::"n"(kId), "n"(kNumThreads) : "memory");
}

}  // namespace dg_moe
