#pragma once
// stmatrix (PTX ISA, "Warp-level matrix store instruction: stmatrix"): one instruction stores four
// 8x8 16-bit matrices, each thread holding one 32-bit pair of each, in the layout an mma or wgmma
// accumulator fragment already has (thread t: row t / 4, columns 2 (t % 4) and 2 (t % 4) + 1).
#include <cuda_bf16.h>
#include <cstdint>

namespace dg_moe {

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&pair);
}

// Lane t gives the shared-window address of row t % 8 of matrix t / 8; r0-r3 are this thread's
// pairs of matrices 0-3. Each row is 16 contiguous bytes.
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
                 "r"(r2), "r"(r3)
                 : "memory");
}

}  // namespace dg_moe
