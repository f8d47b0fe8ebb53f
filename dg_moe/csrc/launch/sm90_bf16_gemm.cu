// Host entry of the SM90 BF16 GEMM family. The JIT defines the template arguments before including
// this file (dg_moe/kernels/sm90_bf16_gemm/variants.py, template_args): DG_MOE_SHAPE_N, DG_MOE_SHAPE_K,
// DG_MOE_BLOCK_M, DG_MOE_BLOCK_N, DG_MOE_NUM_STAGES, DG_MOE_GEMM_TYPE (a dg_moe::sched::GemmType
// enumerator), DG_MOE_MULTICAST (CTAs per cluster: 1 or 2), DG_MOE_MULTICAST_B (a 2-CTA cluster shares
// B's loads rather than A's), DG_MOE_D_TYPE (D's element type: __nv_bfloat16 or float), DG_MOE_ACCUMULATE
// (D = C + A @ B^T, Normal only), DG_MOE_MN_MAJOR_A and DG_MOE_MN_MAJOR_B (the operand is stored [K, M] or
// [K, N] / [G, K, N] rather than K-major), then the host constants Python computes for the NVRTC launcher
// (dg_moe/kernels/sm90_bf16_gemm/host_constants.py), each static_asserted (launch/sm90_gemm_entry.cuh)
// against the C++ it mirrors: DG_MOE_SMEM_BYTES, DG_MOE_BOX_ROWS_A/B, DG_MOE_D_SPAN_COLS, DG_MOE_BLOCK_THREADS,
// DG_MOE_PAIR_M, DG_MOE_NUM_N_SLOTS and DG_MOE_PARAMS_BYTES.
#include "kernels/sm90_bf16_gemm.cuh"
#include "launch/sm90_gemm_entry.cuh"

namespace {

using dg_moe::sched::GemmType;
using namespace dg_moe::launch;
using namespace dg_moe::sm90_bf16_gemm;

using OutT = DG_MOE_D_TYPE;
constexpr bool kAccumulate = DG_MOE_ACCUMULATE;
constexpr bool kMnMajorA = DG_MOE_MN_MAJOR_A, kMnMajorB = DG_MOE_MN_MAJOR_B;
using V = Variant<kShapeN, kShapeK, kBlockM, kBlockN, kNumStages, kType, kMulticast, kMulticastB, OutT, kAccumulate,
                  kMnMajorA, kMnMajorB>;
using Layout = V::Layout;
using DLayout = V::D;
static_assert(Layout::kTotalBytes <= kMaxSharedBytes, "the stages and the D tile exceed 227 KB of shared memory");
constexpr auto kKernel = bf16_gemm_kernel<kShapeN, kShapeK, kBlockM, kBlockN, kNumStages, kType, kMulticast, kMulticastB,
                                          OutT, kAccumulate, kMnMajorA, kMnMajorB>;

}  // namespace

template struct dg_moe::launch::HostConstants<V, DLayout, MathShape<kBlockM>::kBlockThreads, sizeof(Params)>;

// NVRTC (DG_MOE_JIT_BACKEND=nvrtc) compiles this file for its device code alone: the kernel named by
// kKernel above (the JIT's name expression), instantiated and checked by the static_asserts. Its host
// part, the nvcc-only one below, is done in Python there (dg_moe/kernels/sm90_bf16_gemm/cubin_entry.py).
#ifndef __CUDACC_RTC__
namespace {

using Launch = GemmLaunch<V, kKernel, MathShape<kBlockM>::kBlockThreads, kMaxSharedBytes>;

}  // namespace

// a: bf16 [rows, K] (K contiguous, rows a_stride elements apart; rows = M, or G * max_m for masked), or with
// kMnMajorA [K, M] (rows of M a_stride apart); b: bf16 [G * N, K] (rows b_stride apart), or with kMnMajorB
// G matrices [K, N] (rows of N b_stride apart, matrices K * b_stride apart); d: OutT [rows, N] (rows d_stride
// apart); c: with kAccumulate,
// OutT [M, N] (rows c_stride apart; may be d itself), else ignored (null); a and b strides are multiples
// of 8, d and c strides of 16 bytes, and every base 16-byte aligned; layout: see GemmType. m is M (Normal,
// contiguous) or max_m (masked). Launches on `stream`, which must belong to the current device; never
// synchronises.
DG_MOE_EXPORT int dg_moe_sm90_bf16_gemm(const void* a, const void* b, void* d, const void* c, const int* layout,
                                        uint32_t m, uint32_t num_groups, uint32_t a_stride, uint32_t b_stride,
                                        uint32_t d_stride, uint32_t c_stride, uint32_t num_sms, void* stream) {
    if (m == 0 || num_groups == 0 || num_sms == 0 || (kAccumulate && c == nullptr))
        return dg_moe::kStatusInvalidArgument;
    const bool masked = kType == GemmType::MGroupedMasked;
    const uint64_t rows = masked ? uint64_t(num_groups) * m : m;
    const uint64_t b_rows = uint64_t(kType == GemmType::Normal ? 1 : num_groups) * kShapeN;

    // K-major operands load boxes of kBoxRows rows x kBlockK; MN-major ones boxes of one 64-wide chunk x
    // kBlockK K rows, B's from a 3-D stack of per-group matrices.
    constexpr auto kBf16 = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    constexpr auto kSwizzle = CU_TENSOR_MAP_SWIZZLE_128B;
    CUtensorMap tmap_a, tmap_b, tmap_d, tmap_c;
    if (kMnMajorA) {
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_a, kBf16, a, rows, kShapeK, uint64_t(a_stride) * 2,
                                                          kChunkIndices, kBlockK, kSwizzle));
    } else {
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_a, kBf16, a, kShapeK, rows, uint64_t(a_stride) * 2,
                                                          kBlockK, kBoxRowsA, kSwizzle));
    }
    if (kMnMajorB) {
        const uint64_t b_groups = kType == GemmType::Normal ? 1 : num_groups;
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_3d(&tmap_b, kBf16, b, kShapeN, kShapeK, b_groups,
                                                          uint64_t(b_stride) * 2, uint64_t(b_stride) * 2 * kShapeK,
                                                          kChunkIndices, kBlockK, kSwizzle));
    } else {
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_b, kBf16, b, kShapeK, b_rows, uint64_t(b_stride) * 2,
                                                          kBlockK, kBoxRowsB, kSwizzle));
    }
    // D goes out in boxes of 64 rows: each m64 accumulator block of a math warpgroup is one box. C comes
    // in through the same boxes and swizzle, straight into the D tile's layout.
    constexpr CUtensorMapDataType kOutType = dg_moe::TmaDataType<OutT>::value;
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_d, kOutType, d, kShapeN, rows,
                                                      uint64_t(d_stride) * sizeof(OutT), DLayout::kSpanCols, 64,
                                                      d_swizzle(DLayout::kSpanBytes)));
    if (kAccumulate) {
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_c, kOutType, c, kShapeN, rows,
                                                          uint64_t(c_stride) * sizeof(OutT), DLayout::kSpanCols, 64,
                                                          d_swizzle(DLayout::kSpanBytes)));
    } else {
        tmap_c = tmap_d;
    }

    DG_MOE_RETURN_IF_ERROR(Launch::allow_shared_memory());
    const uint32_t clusters = Launch::clusters(m, num_sms);
    if (clusters == 0)
        return dg_moe::kStatusInvalidArgument;
    const bool group_table = Launch::group_table(num_groups);
    const Params params{layout, d, m, num_groups, d_stride, group_table ? 1u : 0u};
    return Launch::launch(clusters, num_groups, group_table, stream, params, tmap_a, tmap_b, tmap_d, tmap_c);
}

#endif  // __CUDACC_RTC__
