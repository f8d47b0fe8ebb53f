#pragma once
// What every SM90 GEMM family's host entry (launch/sm90_*.cu) shares: the template arguments all of
// them take from the JIT's defines (dg_moe/kernels/<family>/variants.py, template_args) and, in the
// nvcc build, the once-per-device raising of the kernel's shared-memory limit.
#include <cstdint>

#include "common/abi.cuh"
#include "common/tma.cuh"

namespace dg_moe::launch {

constexpr uint32_t kShapeN = DG_MOE_SHAPE_N;
constexpr uint32_t kBlockM = DG_MOE_BLOCK_M;
constexpr uint32_t kBlockN = DG_MOE_BLOCK_N;
constexpr uint32_t kNumStages = DG_MOE_NUM_STAGES;

#ifndef __CUDACC_RTC__
// cudaFuncSetAttribute and the occupancy query concern the current device only, so their results
// are kept per device (a process may drive several GPUs, e.g. transformers' device_map="auto").
// Plain ints through __atomic builtins: host code stays free of libstdc++ (see common/abi.cuh).
constexpr int kMaxDevices = 64;

inline int current_device() {
    int device = -1;
    return cudaGetDevice(&device) == cudaSuccess && device < kMaxDevices ? device : -1;
}

// query() once per device, its result kept in `plus_one` as result + 1 (0: not asked on that device
// yet); asked again at every call where the current device is unknown.
template <typename T, typename Query>
T once_per_device(T (&plus_one)[kMaxDevices], Query query) {
    const int device = current_device();
    if (device >= 0) {
        const T cached = __atomic_load_n(&plus_one[device], __ATOMIC_ACQUIRE);
        if (cached != 0)
            return cached - 1;
    }
    const T result = query();
    if (device >= 0)
        __atomic_store_n(&plus_one[device], result + 1, __ATOMIC_RELEASE);
    return result;
}

// Raises kKernel's dynamic shared-memory limit to `bytes` (the same at every call), once per device.
template <auto kKernel>
cudaError_t allow_shared_memory(uint32_t bytes) {
    static int status_plus_one[kMaxDevices];
    return static_cast<cudaError_t>(once_per_device(status_plus_one, [bytes] {
        return static_cast<int>(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    }));
}
#endif  // __CUDACC_RTC__

}  // namespace dg_moe::launch
