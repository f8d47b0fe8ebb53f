// Host entry of the SM90 BF16 GEMM family. The JIT defines the template arguments before including
// this file (dg_moe/kernels/sm90_bf16_gemm/variants.py, template_args): DG_MOE_SHAPE_N, DG_MOE_SHAPE_K,
// DG_MOE_BLOCK_M, DG_MOE_BLOCK_N, DG_MOE_NUM_STAGES, DG_MOE_GEMM_TYPE (a dg_moe::sched::GemmType
// enumerator), DG_MOE_MULTICAST (CTAs per cluster: 1 or 2), DG_MOE_MULTICAST_B (a 2-CTA cluster shares
// B's loads rather than A's), then the host constants Python computes for the NVRTC launcher
// (dg_moe/kernels/sm90_bf16_gemm/host_constants.py), each static_asserted below against the C++ it
// mirrors: DG_MOE_SMEM_BYTES, DG_MOE_BOX_ROWS_A/B, DG_MOE_D_SPAN_COLS, DG_MOE_BLOCK_THREADS,
// DG_MOE_PAIR_M, DG_MOE_NUM_N_SLOTS and DG_MOE_PARAMS_BYTES.
#include "common/abi.cuh"
#include "common/tma.cuh"
#include "kernels/sm90_bf16_gemm.cuh"

namespace {

using dg_moe::sched::GemmType;
using namespace dg_moe::sm90_bf16_gemm;

constexpr uint32_t kShapeN = DG_MOE_SHAPE_N;
constexpr uint32_t kShapeK = DG_MOE_SHAPE_K;
constexpr uint32_t kBlockM = DG_MOE_BLOCK_M;
constexpr uint32_t kBlockN = DG_MOE_BLOCK_N;
constexpr uint32_t kNumStages = DG_MOE_NUM_STAGES;
constexpr GemmType kType = DG_MOE_GEMM_TYPE;
constexpr uint32_t kMulticast = DG_MOE_MULTICAST;
constexpr bool kMulticastB = DG_MOE_MULTICAST_B;
// Rows of A and of B each CTA loads per K block: half of the shared operand's tile in a 2-CTA cluster.
constexpr uint32_t kBoxRowsA = kMulticastB ? kBlockM : kBlockM / kMulticast;
constexpr uint32_t kBoxRowsB = kMulticastB ? kBlockN / 2 : kBlockN;

using V = Variant<kShapeN, kShapeK, kBlockM, kBlockN, kNumStages, kType, kMulticast, kMulticastB>;
using Layout = V::Layout;
using DLayout = V::D;
static_assert(Layout::kTotalBytes <= kMaxSharedBytes, "the stages and the D tile exceed 227 KB of shared memory");
// A cubin launch (dg_moe/kernels/sm90_bf16_gemm/cubin_entry.py) builds the grid, the tensor maps and the
// kernel's arguments from Python's copies of these numbers: a copy that drifts fails here.
#define DG_MOE_HOST_MISMATCH(what) \
    what " in dg_moe/kernels/sm90_bf16_gemm/host_constants.py disagrees with the kernel: mend the two together"
static_assert(Layout::kTotalBytes == DG_MOE_SMEM_BYTES, DG_MOE_HOST_MISMATCH("smem_bytes"));
static_assert(kBoxRowsA == DG_MOE_BOX_ROWS_A, DG_MOE_HOST_MISMATCH("box_rows_a"));
static_assert(kBoxRowsB == DG_MOE_BOX_ROWS_B, DG_MOE_HOST_MISMATCH("box_rows_b"));
static_assert(DLayout::kSpanCols == DG_MOE_D_SPAN_COLS, DG_MOE_HOST_MISMATCH("d_span_cols"));
static_assert(MathShape<kBlockM>::kBlockThreads == DG_MOE_BLOCK_THREADS, DG_MOE_HOST_MISMATCH("block_threads"));
static_assert(V::Scheduler::kPairM == DG_MOE_PAIR_M, DG_MOE_HOST_MISMATCH("pair_m"));
static_assert(V::Scheduler::kNumNSlots == DG_MOE_NUM_N_SLOTS, DG_MOE_HOST_MISMATCH("num_n_slots"));
static_assert(sizeof(Params) == DG_MOE_PARAMS_BYTES, DG_MOE_HOST_MISMATCH("PARAMS_BYTES"));
#undef DG_MOE_HOST_MISMATCH
constexpr bool kGroupTable = kType == GemmType::MGroupedMasked || kType == GemmType::MGroupedContiguousPsum;
constexpr auto kKernel =
    bf16_gemm_kernel<kShapeN, kShapeK, kBlockM, kBlockN, kNumStages, kType, kMulticast, kMulticastB>;

}  // namespace

// NVRTC (DG_MOE_JIT_BACKEND=nvrtc) compiles this file for its device code alone: the kernel named by
// kKernel above (the JIT's name expression), instantiated and checked by the static_asserts. Its host
// part, the nvcc-only one below, is done in Python there (dg_moe/kernels/sm90_bf16_gemm/cubin_entry.py).
#ifndef __CUDACC_RTC__
namespace {

CUtensorMapSwizzle d_swizzle() {
    return DLayout::kSpanBytes == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
           : DLayout::kSpanBytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                       : CU_TENSOR_MAP_SWIZZLE_32B;
}

cudaLaunchConfig_t launch_config(uint32_t clusters, uint32_t smem_bytes, cudaStream_t stream,
                                 cudaLaunchAttribute* cluster) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(clusters * kMulticast);
    config.blockDim = dim3(MathShape<kBlockM>::kBlockThreads);
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    cluster->id = cudaLaunchAttributeClusterDimension;
    cluster->val.clusterDim.x = kMulticast;
    cluster->val.clusterDim.y = 1;
    cluster->val.clusterDim.z = 1;
    config.attrs = cluster;
    config.numAttrs = 1;
    return config;
}

// cudaFuncSetAttribute and the occupancy query concern the current device only, so their results
// are kept per device. Plain ints through __atomic builtins: host code stays free of libstdc++
// (see common/abi.cuh).
constexpr int kMaxDevices = 64;

int current_device() {
    int device = -1;
    return cudaGetDevice(&device) == cudaSuccess && device < kMaxDevices ? device : -1;
}

// Raises the kernel's dynamic shared-memory limit, once per device: to the whole 227 KB where a group
// table may follow the layout (its size is known per launch only).
cudaError_t allow_shared_memory() {
    static int status_plus_one[kMaxDevices];  // 0: not set on that device yet
    const int device = current_device();
    if (device >= 0) {
        const int cached = __atomic_load_n(&status_plus_one[device], __ATOMIC_ACQUIRE);
        if (cached != 0)
            return static_cast<cudaError_t>(cached - 1);
    }
    const cudaError_t status = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    kGroupTable ? kMaxSharedBytes : Layout::kTotalBytes);
    if (device >= 0)
        __atomic_store_n(&status_plus_one[device], static_cast<int>(status) + 1, __ATOMIC_RELEASE);
    return status;
}

// Clusters of this kernel the current GPU can hold at once; 0 when the query fails (then no cap).
uint32_t max_active_clusters() {
    static uint32_t count_plus_one[kMaxDevices];  // 0: not queried on that device yet
    const int device = current_device();
    if (device >= 0) {
        const uint32_t cached = __atomic_load_n(&count_plus_one[device], __ATOMIC_ACQUIRE);
        if (cached != 0)
            return cached - 1;
    }
    uint32_t result = 0;
    if (allow_shared_memory() == cudaSuccess) {
        cudaLaunchAttribute cluster;
        const cudaLaunchConfig_t config = launch_config(1, Layout::kTotalBytes, nullptr, &cluster);
        int count = 0;
        if (cudaOccupancyMaxActiveClusters(&count, kKernel, &config) == cudaSuccess)
            result = static_cast<uint32_t>(count);
    }
    if (device >= 0)
        __atomic_store_n(&count_plus_one[device], result + 1, __ATOMIC_RELEASE);
    return result;
}

}  // namespace

// a: bf16 [rows, K] (K contiguous, rows a_stride elements apart; rows = M, or G * max_m for masked);
// b: bf16 [G * N, K] (rows b_stride apart); d: bf16 [rows, N] (rows d_stride apart); strides are
// multiples of 8 and every base 16-byte aligned; layout: see GemmType. m is M (Normal, contiguous) or
// max_m (masked). Launches on `stream`, which must belong to the current device; never synchronises.
DG_MOE_EXPORT int dg_moe_sm90_bf16_gemm(const void* a, const void* b, void* d, const int* layout, uint32_t m,
                                        uint32_t num_groups, uint32_t a_stride, uint32_t b_stride, uint32_t d_stride,
                                        uint32_t num_sms, void* stream) {
    if (m == 0 || num_groups == 0 || num_sms == 0)
        return dg_moe::kStatusInvalidArgument;
    const bool masked = kType == GemmType::MGroupedMasked;
    const uint64_t rows = masked ? uint64_t(num_groups) * m : m;
    const uint64_t b_rows = uint64_t(kType == GemmType::Normal ? 1 : num_groups) * kShapeN;

    CUtensorMap tmap_a, tmap_b, tmap_d;
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_a, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, a, kShapeK, rows,
                                                      uint64_t(a_stride) * 2, kBlockK, kBoxRowsA,
                                                      CU_TENSOR_MAP_SWIZZLE_128B));
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_b, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, b, kShapeK, b_rows,
                                                      uint64_t(b_stride) * 2, kBlockK, kBoxRowsB,
                                                      CU_TENSOR_MAP_SWIZZLE_128B));
    // D goes out in boxes of 64 rows: each m64 accumulator block of a math warpgroup is one box.
    DG_MOE_RETURN_IF_ERROR(dg_moe::make_tensor_map_2d(&tmap_d, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, d, kShapeN, rows,
                                                      uint64_t(d_stride) * 2, DLayout::kSpanCols, 64, d_swizzle()));

    DG_MOE_RETURN_IF_ERROR(allow_shared_memory());

    // Persistent grid: whole clusters, no more than can be resident at once.
    uint32_t clusters = num_sms / kMulticast;
    const uint32_t resident = max_active_clusters();
    if (resident > 0 && resident < clusters)
        clusters = resident;
    if (kType == GemmType::Normal) {
        const uint32_t m_slots = dg_moe::sched::ceil_div(dg_moe::sched::ceil_div(m, kBlockM), V::Scheduler::kPairM);
        const uint32_t slots = m_slots * V::Scheduler::kNumNSlots;
        clusters = slots < clusters ? slots : clusters;
    }
    if (clusters == 0)
        return dg_moe::kStatusInvalidArgument;
    // The group table takes shared memory the stages left over; without room the scheduler walks the groups.
    const uint64_t table_bytes = (uint64_t(num_groups) + 1) * sizeof(uint32_t);
    const bool group_table = kGroupTable && Layout::kTotalBytes + table_bytes <= kMaxSharedBytes;
    const uint32_t smem_bytes = Layout::kTotalBytes + (group_table ? static_cast<uint32_t>(table_bytes) : 0u);
    const Params params{layout, static_cast<__nv_bfloat16*>(d), m, num_groups, d_stride, group_table ? 1u : 0u};

    cudaLaunchAttribute cluster;
    const cudaLaunchConfig_t config = launch_config(clusters, smem_bytes, static_cast<cudaStream_t>(stream), &cluster);
    return static_cast<int>(cudaLaunchKernelEx(&config, kKernel, params, tmap_a, tmap_b, tmap_d));
}

#endif  // __CUDACC_RTC__
