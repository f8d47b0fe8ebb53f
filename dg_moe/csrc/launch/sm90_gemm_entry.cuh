#pragma once
// The host entry the SM90 FP8 and BF16 GEMM families share (launch/sm90_fp8_gemm.cu and
// launch/sm90_bf16_gemm.cu differ in their operands' tensor maps and kernel arguments only): their
// further template arguments, the checks of the host constants Python computes for the NVRTC
// launcher (dg_moe/kernels/<family>/host_constants.py) and, in the nvcc build, the persistent
// clustered launch.
#include "common/scheduler.cuh"
#include "launch/sm90_entry.cuh"

namespace dg_moe::launch {

constexpr uint32_t kShapeK = DG_MOE_SHAPE_K;
constexpr sched::GemmType kType = DG_MOE_GEMM_TYPE;
constexpr uint32_t kMulticast = DG_MOE_MULTICAST;
constexpr bool kMulticastB = DG_MOE_MULTICAST_B;
// Rows of A and of B each CTA loads per K block: half of the shared operand's tile in a 2-CTA cluster.
constexpr uint32_t kBoxRowsA = kMulticastB ? kBlockM : kBlockM / kMulticast;
constexpr uint32_t kBoxRowsB = kMulticastB ? kBlockN / 2 : kBlockN;
constexpr bool kGroupTable =
    kType == sched::GemmType::MGroupedMasked || kType == sched::GemmType::MGroupedContiguousPsum;

// A cubin launch (dg_moe/kernels/<family>/cubin_entry.py) builds the grid, the tensor maps and the
// kernel's arguments from Python's copies of these numbers (DG_MOE_SMEM_BYTES and the rest): a copy
// that drifts fails here, under both backends.
#define DG_MOE_HOST_MISMATCH(what) \
    what " in dg_moe/kernels/<family>/host_constants.py disagrees with the kernel: mend the two together"
// Checked where a launch file instantiates it explicitly: a struct without members, since NVRTC takes no
// host constexpr function and turns a constexpr member into a variable in the cubin's constant bank.
template <typename V, typename DLayout, uint32_t kBlockThreads, uint32_t kParamsBytes>
struct HostConstants {
    static_assert(V::Layout::kTotalBytes == DG_MOE_SMEM_BYTES, DG_MOE_HOST_MISMATCH("smem_bytes"));
    static_assert(kBoxRowsA == DG_MOE_BOX_ROWS_A, DG_MOE_HOST_MISMATCH("box_rows_a"));
    static_assert(kBoxRowsB == DG_MOE_BOX_ROWS_B, DG_MOE_HOST_MISMATCH("box_rows_b"));
    static_assert(DLayout::kSpanCols == DG_MOE_D_SPAN_COLS, DG_MOE_HOST_MISMATCH("d_span_cols"));
    static_assert(kBlockThreads == DG_MOE_BLOCK_THREADS, DG_MOE_HOST_MISMATCH("block_threads"));
    static_assert(V::Scheduler::kPairM == DG_MOE_PAIR_M, DG_MOE_HOST_MISMATCH("pair_m"));
    static_assert(V::Scheduler::kNumNSlots == DG_MOE_NUM_N_SLOTS, DG_MOE_HOST_MISMATCH("num_n_slots"));
    static_assert(kParamsBytes == DG_MOE_PARAMS_BYTES, DG_MOE_HOST_MISMATCH("PARAMS_BYTES"));
};
#undef DG_MOE_HOST_MISMATCH

#ifndef __CUDACC_RTC__
// The TMA swizzle of one column slab of the D tile, `span_bytes` wide.
inline CUtensorMapSwizzle d_swizzle(uint32_t span_bytes) {
    return span_bytes == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
           : span_bytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                              : CU_TENSOR_MAP_SWIZZLE_32B;
}

// Launching kKernel, variant V, on a persistent grid of kMulticast-CTA clusters.
template <typename V, auto kKernel, uint32_t kBlockThreads, uint32_t kMaxSharedBytes>
struct GemmLaunch {
    static constexpr uint32_t kLayoutBytes = V::Layout::kTotalBytes;

    static cudaLaunchConfig_t config(uint32_t clusters, uint32_t smem_bytes, cudaStream_t stream,
                                     cudaLaunchAttribute* cluster) {
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(clusters * kMulticast);
        config.blockDim = dim3(kBlockThreads);
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

    // To the whole 227 KB where a group table may follow the layout (its size is known per launch only).
    static cudaError_t allow_shared_memory() {
        return dg_moe::launch::allow_shared_memory<kKernel>(kGroupTable ? kMaxSharedBytes : kLayoutBytes);
    }

    // Clusters of this kernel the current GPU can hold at once; 0 when the query fails (then no cap).
    static uint32_t max_active_clusters() {
        static uint32_t count_plus_one[kMaxDevices];
        return once_per_device(count_plus_one, [] {
            uint32_t result = 0;
            if (allow_shared_memory() == cudaSuccess) {
                cudaLaunchAttribute cluster;
                const cudaLaunchConfig_t config = GemmLaunch::config(1, kLayoutBytes, nullptr, &cluster);
                int count = 0;
                if (cudaOccupancyMaxActiveClusters(&count, kKernel, &config) == cudaSuccess)
                    result = static_cast<uint32_t>(count);
            }
            return result;
        });
    }

    // Persistent grid: whole clusters, no more than can be resident at once (a cluster's CTAs must
    // share a GPC, so fewer than num_sms / 2 pairs may fit; extra clusters would run as a second
    // wave), nor than a Normal problem has tile slots. 0: nothing to launch.
    static uint32_t clusters(uint32_t m, uint32_t num_sms) {
        uint32_t clusters = num_sms / kMulticast;
        const uint32_t resident = max_active_clusters();
        if (resident > 0 && resident < clusters)
            clusters = resident;
        if (kType == sched::GemmType::Normal) {
            const uint32_t m_slots = sched::ceil_div(sched::ceil_div(m, kBlockM), V::Scheduler::kPairM);
            const uint32_t slots = m_slots * V::Scheduler::kNumNSlots;
            clusters = slots < clusters ? slots : clusters;
        }
        return clusters;
    }

    // The group table takes shared memory the stages left over; without room the scheduler walks the groups.
    static bool group_table(uint32_t num_groups) {
        return kGroupTable && kLayoutBytes + table_bytes(num_groups) <= kMaxSharedBytes;
    }

    // Launches on `stream` (of the current device) with the group table where `group_table` says so.
    template <typename... Args>
    static int launch(uint32_t clusters, uint32_t num_groups, bool group_table, void* stream, const Args&... args) {
        const uint32_t smem_bytes = kLayoutBytes + (group_table ? static_cast<uint32_t>(table_bytes(num_groups)) : 0u);
        cudaLaunchAttribute cluster;
        const cudaLaunchConfig_t config = GemmLaunch::config(clusters, smem_bytes, static_cast<cudaStream_t>(stream),
                                                             &cluster);
        return static_cast<int>(cudaLaunchKernelEx(&config, kKernel, args...));
    }

private:
    static uint64_t table_bytes(uint32_t num_groups) { return (uint64_t(num_groups) + 1) * sizeof(uint32_t); }
};
#endif  // __CUDACC_RTC__

}  // namespace dg_moe::launch
