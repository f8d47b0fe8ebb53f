#pragma once
// Numbers the SM90 FP8 GEMM shares with its host side. dg_moe/kernels/sm90_fp8_gemm/constants.py
// reads them from this file (one `constexpr uint32_t kName = value;` per line), so each is written
// once: keep that form.
#include <cstdint>

namespace dg_moe::sm90_fp8_gemm {

// K extent of one scale block, one wgmma K block and one pipeline stage.
constexpr uint32_t kBlockK = 128;
// Accumulator registers a math thread may hold (wgmma results plus promoted sums) of the 232 that
// setmaxnreg gives it; past this the K loop spills.
constexpr uint32_t kAccumRegisterBudget = 192;
// The most dynamic shared memory one SM90 block may request (227 KB).
constexpr uint32_t kMaxSharedBytes = 232448;

}  // namespace dg_moe::sm90_fp8_gemm
