#pragma once
// Shared-memory loads at 32-bit shared-window addresses. A load through a generic pointer made ptxas
// rebuild the CTA's shared-window base (S2UR of SR_CgaCtaId and its address arithmetic) in every K
// block that read the stage's scales. `asm volatile` also keeps the loads where the source puts them
// relative to the other volatile statements (barrier waits, wgmma issue).
#include <cstdint>

namespace dg_moe {

__device__ __forceinline__ float ld_shared_f32(uint32_t addr) {
    float value;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(value) : "r"(addr));
    return value;
}

__device__ __forceinline__ float2 ld_shared_f32x2(uint32_t addr) {
    float2 value;
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(value.x), "=f"(value.y) : "r"(addr));
    return value;
}

}  // namespace dg_moe
