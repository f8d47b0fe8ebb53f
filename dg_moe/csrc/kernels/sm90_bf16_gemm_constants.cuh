#pragma once
// Numbers the SM90 BF16 GEMM shares with its host side. dg_moe/kernels/sm90_bf16_gemm/constants.py
// reads them from this file (one `constexpr uint32_t kName = value;` per line), so each is written
// once: keep that form.
#include <cstdint>

namespace dg_moe::sm90_bf16_gemm {

// K extent of one pipeline stage: 64 BF16 elements are one 128-byte swizzled row of A and B.
constexpr uint32_t kBlockK = 64;
// Accumulator registers a math thread may hold of the 232 that setmaxnreg gives it: a 128 x 256 or
// 256 x 128 tile (128 floats per thread) leaves room for addressing and the epilogue.
constexpr uint32_t kAccumRegisterBudget = 128;
// The most dynamic shared memory one SM90 block may request (227 KB).
constexpr uint32_t kMaxSharedBytes = 232448;

}  // namespace dg_moe::sm90_bf16_gemm
