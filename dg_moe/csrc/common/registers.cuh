#pragma once
// Register reallocation between warpgroups (setmaxnreg, sm_90a): a warp-specialised kernel launches
// with one register count for every thread, then the producer warpgroup gives registers back and the
// math warpgroups take them. Every warp of a warpgroup must execute the same call (`.sync.aligned`).
#include <cstdint>

namespace dg_moe {

template <uint32_t kRegisters>
__device__ __forceinline__ void warpgroup_release_registers() {
    static_assert(kRegisters >= 24 && kRegisters <= 256 && kRegisters % 8 == 0, "setmaxnreg takes 24-256, step 8");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

template <uint32_t kRegisters>
__device__ __forceinline__ void warpgroup_claim_registers() {
    static_assert(kRegisters >= 24 && kRegisters <= 256 && kRegisters % 8 == 0, "setmaxnreg takes 24-256, step 8");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

}  // namespace dg_moe
