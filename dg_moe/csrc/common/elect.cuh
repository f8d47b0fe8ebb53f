// One lane of a converged warp, chosen by the hardware (elect.sync, SM90).
#pragma once
#include <cstdint>

namespace dg_moe {

// True in exactly one lane of the full warp. Code under it is known to ptxas to run on one thread:
// values computed there stay in uniform registers, where code under `threadIdx.x == t` made ptxas wrap
// every TMA issue in a loop over the active lanes (ELECT, four R2UR, UTMALDG, branch back).
__device__ __forceinline__ bool elect_one_sync() {
    uint32_t elected = 0;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "elect.sync _|p, 0xffffffff;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(elected));
    return elected != 0;
}

}  // namespace dg_moe
