// Host entry of the SM90 FP8 GEMM family. The JIT defines the template arguments before
// including this file (dg_moe/kernels/sm90_fp8_gemm/variants.py, template_args): DG_MOE_SHAPE_N,
// DG_MOE_SHAPE_K, DG_MOE_BLOCK_M, DG_MOE_BLOCK_N, DG_MOE_NUM_STAGES, DG_MOE_GEMM_TYPE (a
// dg_moe::sched::GemmType enumerator), DG_MOE_MULTICAST (CTAs per cluster: 1 or 2),
// DG_MOE_MULTICAST_B (a 2-CTA cluster shares B's loads rather than A's), then the host constants
// Python computes for the NVRTC launcher (dg_moe/kernels/sm90_fp8_gemm/host_constants.py), each
// static_asserted (launch/sm90_gemm_entry.cuh) against the C++ it mirrors: DG_MOE_SMEM_BYTES (the
// heuristic's shared-memory formula), DG_MOE_BOX_ROWS_A/B, DG_MOE_D_SPAN_COLS, DG_MOE_BLOCK_THREADS, DG_MOE_PAIR_M,
// DG_MOE_NUM_N_SLOTS and DG_MOE_PARAMS_BYTES.
#include "kernels/sm90_fp8_gemm.cuh"
#include "launch/sm90_gemm_entry.cuh"

namespace {

using dg_moe::sched::GemmType;
using namespace dg_moe::launch;
using namespace dg_moe::sm90_fp8_gemm;

using V = Variant<kShapeN, kShapeK, kBlockM, kBlockN, kNumStages, kType, kMulticast, kMulticastB>;
using Layout = V::Layout;
using DLayout = DTile<kBlockM, kBlockN>;
static_assert(Layout::kTotalBytes <= kMaxSharedBytes, "the stages and the D tile exceed 227 KB of shared memory");
constexpr auto kKernel =
    fp8_gemm_kernel<kShapeN, kShapeK, kBlockM, kBlockN, kNumStages, kType, kMulticast, kMulticastB>;

}  // namespace

template struct dg_moe::launch::HostConstants<V, DLayout, MathShape<kBlockM>::kBlockThreads, sizeof(Params)>;

// NVRTC (DG_MOE_JIT_BACKEND=nvrtc) compiles this file for its device code alone: the kernel named by
// kKernel above (the JIT's name expression), instantiated and checked by the static_asserts. Its host
// part, the nvcc-only one below, is done in Python there (dg_moe/kernels/sm90_fp8_gemm/cubin_entry.py).
#ifndef __CUDACC_RTC__
namespace {

using Launch = GemmLaunch<V, kKernel, MathShape<kBlockM>::kBlockThreads, kMaxSharedBytes>;

}  // namespace

// Co-resident clusters of this variant (for tools and tests); 0 if the query failed.
DG_MOE_EXPORT int dg_moe_sm90_fp8_gemm_max_active_clusters() {
    return static_cast<int>(Launch::max_active_clusters());
}

// a: e4m3 [rows, K] (K contiguous; rows = M, or G * max_m for masked); b: e4m3 [G * N, K];
// sfa: float32, MN-major, column k of group g at sfa + (g * K/128 + k) * sfa_stride;
// sfb: float32 [G, ceil(N/128), K/128]; d: bf16 [rows, N] contiguous; layout: see GemmType.
// m is M (Normal, contiguous) or max_m (masked). Launches on `stream`, which must belong to the
// current device; never synchronises.
DG_MOE_EXPORT int dg_moe_sm90_fp8_gemm(const void* a, const void* sfa, const void* b, const float* sfb, void* d,
                                       const int* layout, uint32_t m, uint32_t num_groups, uint32_t sfa_stride,
                                       uint32_t num_sms, void* stream) {
    if (m == 0 || num_groups == 0 || num_sms == 0)
        return dg_moe::kStatusInvalidArgument;
    const bool masked = kType == GemmType::MGroupedMasked;
    const uint64_t rows = masked ? uint64_t(num_groups) * m : m;
    const uint64_t b_rows = uint64_t(kType == GemmType::Normal ? 1 : num_groups) * kShapeN;
    const uint64_t sfa_cols = uint64_t(masked ? num_groups : 1) * (kShapeK / kBlockK);

    CUtensorMap tmap_a, tmap_b, tmap_sfa, tmap_d;
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_a, CU_TENSOR_MAP_DATA_TYPE_UINT8, a, kShapeK, rows, kShapeK,
                                                      kBlockK, kBoxRowsA, CU_TENSOR_MAP_SWIZZLE_128B));
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_b, CU_TENSOR_MAP_DATA_TYPE_UINT8, b, kShapeK, b_rows,
                                                      kShapeK, kBlockK, kBoxRowsB, CU_TENSOR_MAP_SWIZZLE_128B));
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_sfa, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, sfa, m, sfa_cols,
                                                      uint64_t(sfa_stride) * sizeof(float), kBlockM, 1));
    // D goes out in boxes of 64 rows: each math warpgroup stores its own rows of each wave.
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_d, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, d, kShapeN, rows,
                                                      uint64_t(kShapeN) * 2, DLayout::kSpanCols, 64,
                                                      d_swizzle(DLayout::kSpanBytes)));

    DG_MOE_RETURN_IF_ERROR(Launch::allow_shared_memory());
    const uint32_t clusters = Launch::clusters(m, num_sms);
    if (clusters == 0)
        return dg_moe::kStatusInvalidArgument;
    const bool group_table = Launch::group_table(num_groups);
    const Params params{sfb, layout, static_cast<__nv_bfloat16*>(d), m, num_groups, group_table ? 1u : 0u};
    return Launch::launch(clusters, num_groups, group_table, stream, params, tmap_a, tmap_b, tmap_sfa, tmap_d);
}

#endif  // __CUDACC_RTC__
