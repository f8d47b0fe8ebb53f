// FP32 reductions into global memory that return nothing (red), SM90.
#pragma once
#include <cstdint>

namespace dg_moe {

// A red is posted and the thread goes on: nothing comes back to wait for, unlike a load of the old value
// followed by a store. Per the PTX ISA, red.add.f32 rounds to nearest even and flushes subnormal inputs and
// results to sign-preserving zero.
__device__ __forceinline__ void red_add_f32(float* address, float value) {
    asm volatile("red.relaxed.gpu.global.add.f32 [%0], %1;" ::"l"(address), "f"(value) : "memory");
}

// Two adjacent floats at an 8-byte aligned address, one instruction (sm_90).
__device__ __forceinline__ void red_add_v2_f32(float* address, float lo, float hi) {
    asm volatile("red.relaxed.gpu.global.add.v2.f32 [%0], {%1, %2};" ::"l"(address), "f"(lo), "f"(hi) : "memory");
}

}  // namespace dg_moe
