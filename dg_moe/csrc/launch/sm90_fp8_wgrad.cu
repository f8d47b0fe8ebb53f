// Host entry of the SM90 weight-gradient GEMM family (FP8 or BF16 operands). The JIT defines the template
// arguments before including this file (dg_moe/kernels/sm90_fp8_wgrad/variants.py, template_args):
// DG_MOE_SHAPE_N, DG_MOE_BLOCK_M, DG_MOE_BLOCK_N, DG_MOE_NUM_STAGES, DG_MOE_WGRAD_TYPE (a
// dg_moe::sm90_fp8_wgrad::WgradType enumerator), DG_MOE_OPERANDS (an Operands enumerator), DG_MOE_SHARE_B
// (0 or 1: 2-CTA clusters sharing B), then the host constants Python computes for the NVRTC
// launcher (dg_moe/kernels/sm90_fp8_wgrad/host_constants.py), each static_asserted below against the C++
// it mirrors: DG_MOE_SMEM_BYTES, DG_MOE_BLOCK_THREADS and DG_MOE_PARAMS_BYTES.
#include "kernels/sm90_fp8_wgrad.cuh"
#include "launch/sm90_entry.cuh"

namespace {

using namespace dg_moe::launch;
using namespace dg_moe::sm90_fp8_wgrad;

constexpr WgradType kType = DG_MOE_WGRAD_TYPE;
constexpr Operands kOperands = DG_MOE_OPERANDS;
constexpr bool kShareB = DG_MOE_SHARE_B != 0;

using V = Variant<kShapeN, kBlockM, kBlockN, kNumStages, kType, kOperands, kShareB>;
using Layout = V::Layout;
#define DG_MOE_HOST_MISMATCH(what) \
    what " in dg_moe/kernels/sm90_fp8_wgrad/host_constants.py disagrees with the kernel: mend the two together"
static_assert(Layout::kTotalBytes == DG_MOE_SMEM_BYTES, DG_MOE_HOST_MISMATCH("smem_bytes"));
static_assert(kBlockThreads == DG_MOE_BLOCK_THREADS, DG_MOE_HOST_MISMATCH("BLOCK_THREADS"));
static_assert(sizeof(Params) == DG_MOE_PARAMS_BYTES, DG_MOE_HOST_MISMATCH("PARAMS_BYTES"));
#undef DG_MOE_HOST_MISMATCH
constexpr auto kKernel = wgrad_kernel<kShapeN, kBlockM, kBlockN, kNumStages, kType, kOperands, kShareB>;

}  // namespace

// NVRTC (DG_MOE_JIT_BACKEND=nvrtc) compiles this file for its device code alone: the kernel named by
// kKernel above. Its host part, the nvcc-only one below, is done in Python there
// (dg_moe/kernels/sm90_fp8_wgrad/cubin_entry.py).
#ifndef __CUDACC_RTC__
namespace {

bool aligned8(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 7) == 0; }

}  // namespace

// a: e4m3, K-major: row r (r < m) of K values at a + r * a_row_bytes, groups back to back along K (sum_k
// columns in all); b: the same for N rows. Operands::Bf16: a bfloat16 [sum_k, m], row k (m values) at
// a + k * a_row_bytes, and b [sum_k, N] likewise (MN-major). FP8 only (null for BF16):
// sfa float32 MN-major, K block j's m scales at sfa + j * sfa_stride; sfb the same for N. d: float32, element (g, r, col) at d + g * d_group_stride + r *
// d_row_stride + col; accumulate 1: D += A @ B^T (the caller has put C into d), 0: D = A @ B^T. layout:
// the groups' K (KGrouped) or running sums (KGroupedPsum) on the device, null for Normal. Launches on
// `stream`, which must belong to the current device; never synchronises.
DG_MOE_EXPORT int dg_moe_sm90_fp8_wgrad(const void* a, uint64_t a_row_bytes, const void* sfa, uint32_t sfa_stride,
                                        const void* b, uint64_t b_row_bytes, const void* sfb, uint32_t sfb_stride,
                                        uint32_t accumulate, float* d, const int* layout, uint32_t m,
                                        uint32_t sum_k, uint32_t num_groups, uint64_t d_group_stride,
                                        uint32_t d_row_stride, uint32_t num_sms, void* stream) {
    // Group sizes are multiples of 128 (the op's rule), so every K block lies inside one group.
    if (m == 0 || sum_k == 0 || sum_k % 128 != 0 || num_groups == 0 || num_sms == 0)
        return dg_moe::kStatusInvalidArgument;
    if (kType != WgradType::Normal && layout == nullptr)
        return dg_moe::kStatusInvalidArgument;
    if (V::kScaled ? (sfa == nullptr || sfb == nullptr) : (sfa != nullptr || sfb != nullptr))
        return dg_moe::kStatusInvalidArgument;
    // B-sharing pairs are m-blocks 2u and 2u + 1: the caller picks such a variant for an even count only.
    const uint32_t m_blocks = ceil_div(m, kBlockM);
    if (m_blocks % V::kMulticast != 0 || num_sms < V::kMulticast)
        return dg_moe::kStatusInvalidArgument;
    const uint64_t k_blocks = sum_k / V::kBlockK;
    const auto dtype = V::kScaled ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;

    CUtensorMap tmap_a, tmap_b, tmap_sfa, tmap_sfb;
    if (V::kScaled) {
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_a, dtype, a, sum_k, m, a_row_bytes, V::kBlockK,
                                                          kBlockM, CU_TENSOR_MAP_SWIZZLE_128B));
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_b, dtype, b, sum_k, kShapeN, b_row_bytes, V::kBlockK,
                                                          kBlockN / V::kMulticast, CU_TENSOR_MAP_SWIZZLE_128B));
    } else {  // MN-major: boxes of one 64-wide chunk x kBlockK rows of K
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_a, dtype, a, m, sum_k, a_row_bytes, 64, V::kBlockK,
                                                          CU_TENSOR_MAP_SWIZZLE_128B));
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_b, dtype, b, kShapeN, sum_k, b_row_bytes, 64,
                                                          V::kBlockK, CU_TENSOR_MAP_SWIZZLE_128B));
    }
    if (V::kScaled) {
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_sfa, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, sfa, m, k_blocks,
                                                          uint64_t(sfa_stride) * sizeof(float), kBlockM, 1));
        DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_sfb, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, sfb, kShapeN,
                                                          k_blocks, uint64_t(sfb_stride) * sizeof(float), kBlockN, 1));
    } else {  // not read by a BF16 kernel
        tmap_sfa = tmap_a;
        tmap_sfb = tmap_b;
    }
    DG_MOE_RETURN_IF_ERROR(allow_shared_memory<kKernel>(Layout::kTotalBytes));

    // Persistent grid: one CTA per SM, no more than there are tiles; whole clusters of kMulticast CTAs.
    const uint64_t units = uint64_t(m_blocks / V::kMulticast) * ceil_div(kShapeN, kBlockN) * num_groups;
    const uint32_t max_clusters = num_sms / V::kMulticast;
    const uint32_t grid = (units < max_clusters ? static_cast<uint32_t>(units) : max_clusters) * V::kMulticast;
    // Column pairs go out as 8-byte stores (or reductions) where every row of d starts 8-byte aligned.
    const bool pairs = aligned8(d) && d_row_stride % 2 == 0 && d_group_stride % 2 == 0;
    const Params params{d,          kType == WgradType::Normal ? nullptr : layout, d_group_stride, d_row_stride, m, sum_k,
                        num_groups, pairs ? 1u : 0u, accumulate != 0 ? 1u : 0u};

    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(kBlockThreads);
    config.dynamicSmemBytes = Layout::kTotalBytes;
    config.stream = static_cast<cudaStream_t>(stream);
    cudaLaunchAttribute cluster = {};
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = V::kMulticast;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = 1;
    return static_cast<int>(cudaLaunchKernelEx(&config, kKernel, params, tmap_a, tmap_b, tmap_sfa, tmap_sfb));
}

#endif  // __CUDACC_RTC__
