#pragma once
// ldmatrix (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): the inverse of stmatrix. One
// instruction loads four 8x8 16-bit matrices into the fragment layout stmatrix stores from (thread t:
// row t / 4, columns 2 (t % 4) and 2 (t % 4) + 1 of each), so a tile written with stmatrix_x4 at some
// per-lane addresses reads back into the same registers with ldmatrix_x4 at those addresses.
#include <cstdint>

namespace dg_moe {

// Lane t gives the shared-window address of row t % 8 of matrix t / 8; r0-r3 receive this thread's
// pairs of matrices 0-3. Each row is 16 contiguous bytes.
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

// The two BF16 values of a 32-bit pair as FP32 (exact: a BF16 is the upper half of an FP32), the
// lower-addressed one first.
__device__ __forceinline__ float bf16_pair_lo(uint32_t pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float bf16_pair_hi(uint32_t pair) { return __uint_as_float(pair & 0xffff0000u); }

}  // namespace dg_moe
