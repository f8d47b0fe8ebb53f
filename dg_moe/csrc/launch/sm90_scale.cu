// Host entry of the sm90_scale family: y = x * alpha over a row-major [m, n] matrix.
// Template arguments come from the JIT as macros: DG_MOE_DTYPE (float or __nv_bfloat16),
// DG_MOE_BLOCK_M, DG_MOE_BLOCK_N, DG_MOE_STAGES, DG_MOE_THREADS.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/abi.cuh"
#include "common/tma.cuh"
#include "kernels/sm90_scale.cuh"

#if !defined(DG_MOE_DTYPE) || !defined(DG_MOE_BLOCK_M) || !defined(DG_MOE_BLOCK_N) || !defined(DG_MOE_STAGES) || \
    !defined(DG_MOE_THREADS)
#error \
    "sm90_scale: build through dg_moe.jit, which defines DG_MOE_DTYPE, DG_MOE_BLOCK_M, DG_MOE_BLOCK_N, DG_MOE_STAGES, DG_MOE_THREADS"
#endif

namespace {

using T = DG_MOE_DTYPE;
constexpr uint32_t kBlockM = DG_MOE_BLOCK_M;
constexpr uint32_t kBlockN = DG_MOE_BLOCK_N;
constexpr uint32_t kStages = DG_MOE_STAGES;
constexpr uint32_t kThreads = DG_MOE_THREADS;
using Cfg = dg_moe::sm90_scale::Config<T, kBlockM, kBlockN, kStages, kThreads>;

// Resident CTAs per SM the grid is sized for; the CTAs loop over the remaining tiles.
constexpr int kCtasPerSm = 4;

}  // namespace

// x, y: device pointers, 16-byte aligned, [m, n] row-major with n * sizeof(T) a multiple of 16
// bytes (y may equal x). stream: a cudaStream_t. Returns 0 or a status (see common/abi.cuh).
DG_MOE_EXPORT int dg_moe_sm90_scale(const void* x, void* y, float alpha, int64_t m, int64_t n, void* stream) {
    if (m < 0 || n <= 0 || m > INT32_MAX || n > INT32_MAX)
        return dg_moe::kStatusInvalidArgument;
    if (m == 0)
        return dg_moe::kStatusOk;
    const uint64_t row_bytes = static_cast<uint64_t>(n) * sizeof(T);
    if (row_bytes % 16 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 || reinterpret_cast<uintptr_t>(y) % 16 != 0)
        return dg_moe::kStatusInvalidArgument;

    const uint64_t tiles_m = (static_cast<uint64_t>(m) + kBlockM - 1) / kBlockM;
    const uint64_t tiles_n = (static_cast<uint64_t>(n) + kBlockN - 1) / kBlockN;
    if (tiles_m * tiles_n > UINT32_MAX)
        return dg_moe::kStatusInvalidArgument;

    constexpr CUtensorMapDataType kType = dg_moe::TmaDataType<T>::value;
    CUtensorMap x_map;
    CUtensorMap y_map;
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&x_map, kType, x, n, m, row_bytes, kBlockN, kBlockM));
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&y_map, kType, y, n, m, row_bytes, kBlockN, kBlockM));

    int device = 0;
    int num_sms = 0;
    DG_MOE_RETURN_IF_ERROR(cudaGetDevice(&device));
    DG_MOE_RETURN_IF_ERROR(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));

    const auto kernel = &dg_moe::sm90_scale::scale_kernel<T, kBlockM, kBlockN, kStages, kThreads>;
    if constexpr (Cfg::kSmemBytes > 48 * 1024) {
        DG_MOE_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(Cfg::kSmemBytes)));
    }
    const uint64_t num_tiles = tiles_m * tiles_n;
    const uint64_t max_ctas = static_cast<uint64_t>(num_sms) * kCtasPerSm;
    const unsigned grid = static_cast<unsigned>(num_tiles < max_ctas ? num_tiles : max_ctas);
    kernel<<<grid, kThreads, Cfg::kSmemBytes, static_cast<cudaStream_t>(stream)>>>(
        x_map, y_map, alpha, static_cast<uint32_t>(tiles_m), static_cast<uint32_t>(tiles_n));
    return static_cast<int>(cudaGetLastError());
}
