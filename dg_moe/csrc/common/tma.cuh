// Tensor Memory Accelerator (SM90): host-side tensor-map encoding and device-side bulk tensor
// copies (global -> shared completing on an mbarrier, shared -> global in bulk groups).
//
// Tensor maps are passed to kernels by value as `const __grid_constant__ CUtensorMap`.
// Coordinates are in elements, innermost (contiguous) dimension first.
// Shared-memory tiles must be 128-byte aligned (1024-byte aligned with 128-byte swizzle).
#pragma once

#ifdef __CUDACC_RTC__
// NVRTC: device code only. cuda.h is a host header; the kernels need CUtensorMap's layout alone
// (the 128-byte, 64-byte aligned opaque descriptor of cuda.h), encoded on the host by the launcher.
typedef struct CUtensorMap_st {
    alignas(64) unsigned long long opaque[16];
} CUtensorMap;
#else
#include <cuda.h>  // CUtensorMap and its enums only: nothing here links against libcuda
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "common/abi.cuh"
#include "common/mbarrier.cuh"
#include "common/unroll.cuh"

namespace dg_moe {

#ifndef __CUDACC_RTC__

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

template <typename T>
struct TmaDataType;
template <>
struct TmaDataType<float> {
    static constexpr CUtensorMapDataType value = CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
};
template <>
struct TmaDataType<__nv_bfloat16> {
    static constexpr CUtensorMapDataType value = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
};
template <>
struct TmaDataType<__half> {
    static constexpr CUtensorMapDataType value = CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
};
template <>
struct TmaDataType<__nv_fp8_e4m3> {
    static constexpr CUtensorMapDataType value = CU_TENSOR_MAP_DATA_TYPE_UINT8;
};
template <>
struct TmaDataType<int32_t> {
    static constexpr CUtensorMapDataType value = CU_TENSOR_MAP_DATA_TYPE_INT32;
};

// cuTensorMapEncodeTiled is a driver API; fetching it through the runtime keeps the library free
// of a link dependency on libcuda (the static cudart finds the driver at run time). Only a
// successful look-up is cached, so a failure keeps reporting the runtime's own error (no driver,
// driver too old) rather than a stale null pointer.
inline int tensor_map_encoder(PFN_cuTensorMapEncodeTiled_v12000* encoder) {
    static void* cached = nullptr;
    void* fn = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (fn == nullptr) {
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
        DG_MOE_RETURN_IF_ERROR(
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
#else
        DG_MOE_RETURN_IF_ERROR(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found));
#endif
        if (found != cudaDriverEntryPointSuccess || fn == nullptr)
            return kStatusNoTensorMapEncoder;
        __atomic_store_n(&cached, fn, __ATOMIC_RELEASE);
    }
    *encoder = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    return kStatusOk;
}

// Encode a tiled tensor map of rank 1..5. `dims` and `box` are innermost first; `strides_bytes`
// holds the rank-1 strides of dimensions 1.. (dimension 0 is contiguous). Returns a status.
inline int make_tensor_map(CUtensorMap* map, CUtensorMapDataType dtype, uint32_t rank, const void* base,
                           const uint64_t* dims, const uint64_t* strides_bytes, const uint32_t* box,
                           CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2_promotion,
                           CUtensorMapFloatOOBfill oob_fill = CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) {
    PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
    DG_MOE_RETURN_IF_ERROR(tensor_map_encoder(&encode));
    const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
    const CUresult result = encode(map, dtype, rank, const_cast<void*>(base), dims, strides_bytes, box, element_strides,
                                   CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, l2_promotion, oob_fill);
    return result == CUDA_SUCCESS ? kStatusOk : kStatusTensorMapEncodeBase + static_cast<int>(result);
}

// 2-D map over a matrix with `inner` contiguous elements per row and `outer` rows, rows
// `row_stride_bytes` apart (a multiple of 16); the box is box_inner x box_outer elements.
inline int make_tensor_map_2d(CUtensorMap* map, CUtensorMapDataType dtype, const void* base, uint64_t inner,
                              uint64_t outer, uint64_t row_stride_bytes, uint32_t box_inner, uint32_t box_outer,
                              CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_NONE,
                              CUtensorMapL2promotion l2_promotion = CU_TENSOR_MAP_L2_PROMOTION_L2_256B) {
    const uint64_t dims[2] = {inner, outer};
    const uint64_t strides[1] = {row_stride_bytes};
    const uint32_t box[2] = {box_inner, box_outer};
    return make_tensor_map(map, dtype, 2, base, dims, strides, box, swizzle, l2_promotion);
}

// 3-D map over `depth` matrices, each `outer` rows of `inner` contiguous elements, rows
// `row_stride_bytes` and matrices `depth_stride_bytes` apart (multiples of 16); boxes are one matrix deep.
inline int make_tensor_map_3d(CUtensorMap* map, CUtensorMapDataType dtype, const void* base, uint64_t inner,
                              uint64_t outer, uint64_t depth, uint64_t row_stride_bytes, uint64_t depth_stride_bytes,
                              uint32_t box_inner, uint32_t box_outer, CUtensorMapSwizzle swizzle,
                              CUtensorMapL2promotion l2_promotion = CU_TENSOR_MAP_L2_PROMOTION_L2_256B) {
    const uint64_t dims[3] = {inner, outer, depth};
    const uint64_t strides[2] = {row_stride_bytes, depth_stride_bytes};
    const uint32_t box[3] = {box_inner, box_outer, 1};
    return make_tensor_map(map, dtype, 3, base, dims, strides, box, swizzle, l2_promotion);
}

#endif  // __CUDACC_RTC__

// ---------------------------------------------------------------------------------------------
// Device side
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ uint64_t tensor_map_ptr(const CUtensorMap* map) { return reinterpret_cast<uint64_t>(map); }

// Pull the descriptor into the cache before the first copy uses it.
__device__ __forceinline__ void tma_prefetch_tensor_map(const CUtensorMap* map) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(tensor_map_ptr(map)) : "memory");
}

// Global -> shared; the copied bytes count towards `bar`'s expected transactions. No L2 cache hint: the
// evict-normal hint DeepGEMM issues measured no gain here (H100, 24 dense and contiguous cases, geomean
// 0.3 % slower with it; docs/perf-log.md v21).
__device__ __forceinline__ void tma_load_2d(const CUtensorMap* map, void* smem_dst, uint64_t* bar, int32_t c0,
                                            int32_t c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
            smem_u32(smem_dst)),
        "l"(tensor_map_ptr(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
}

// Same tile delivered to every CTA of the cluster named in `cta_mask`, at the same shared-memory
// offsets, each completing on its own barrier at `bar`'s offset.
__device__ __forceinline__ void tma_load_2d_multicast(const CUtensorMap* map, void* smem_dst, uint64_t* bar, int32_t c0,
                                                      int32_t c1, uint16_t cta_mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
        "[%0], [%1, {%4, %5}], [%2], %3;" ::"r"(smem_u32(smem_dst)),
        "l"(tensor_map_ptr(map)), "r"(smem_u32(bar)), "h"(cta_mask), "r"(c0), "r"(c1)
        : "memory");
}

// 3-D loads: box of a stack of matrices (dimension 2, the group, is one matrix deep in the operand boxes
// here), so that clipping applies per matrix: a box reaching past a matrix's last row reads zeros, not the
// next matrix's first rows.
__device__ __forceinline__ void tma_load_3d(const CUtensorMap* map, void* smem_dst, uint64_t* bar, int32_t c0,
                                            int32_t c1, int32_t c2) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%3, %4, %5}], [%2];" ::"r"(smem_u32(smem_dst)),
        "l"(tensor_map_ptr(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
}

__device__ __forceinline__ void tma_load_3d_multicast(const CUtensorMap* map, void* smem_dst, uint64_t* bar, int32_t c0,
                                                      int32_t c1, int32_t c2, uint16_t cta_mask) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
        "[%0], [%1, {%4, %5, %6}], [%2], %3;" ::"r"(smem_u32(smem_dst)),
        "l"(tensor_map_ptr(map)), "r"(smem_u32(bar)), "h"(cta_mask), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
}

// kChunks boxes of an MN-major 16-bit operand from a 2-D map over its stored [K, MN] matrix, each box 64
// MN indices x the map's K rows (one 128-byte swizzled row per K index): chunk c from index mn0 + 64 c into
// dst + c * kChunkBytes, delivered to both CTAs of the pair when `multicast`.
template <uint32_t kChunks, uint32_t kChunkBytes>
__device__ __forceinline__ void tma_load_mn_chunks(const CUtensorMap* map, uint8_t* dst, uint64_t* bar, int32_t mn0,
                                                   int32_t k0, bool multicast) {
    DG_MOE_UNROLL
    for (uint32_t c = 0; c < kChunks; ++c) {
        if (multicast)
            tma_load_2d_multicast(map, dst + c * kChunkBytes, bar, mn0 + static_cast<int32_t>(64 * c), k0, 0b11);
        else
            tma_load_2d(map, dst + c * kChunkBytes, bar, mn0 + static_cast<int32_t>(64 * c), k0);
    }
}

// Shared -> global; elements outside the tensor are not written (partial tiles are clipped).
// Writers of `smem_src` must run tma_fence_shared() and a barrier before this.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* smem_src, int32_t c0, int32_t c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(tensor_map_ptr(map)),
        "r"(smem_u32(smem_src)), "r"(c0), "r"(c1)
        : "memory");
}

// Close the stores issued so far by this thread into one bulk group.
__device__ __forceinline__ void tma_store_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }

// Wait until at most N bulk groups still read their shared-memory source (the buffer may then
// be overwritten).
template <int N>
__device__ __forceinline__ void tma_store_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}

// Wait until at most N bulk groups are incomplete (their global writes done).
template <int N>
__device__ __forceinline__ void tma_store_wait() {
    asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
}

// Order this thread's generic-proxy shared-memory writes before later async-proxy (TMA, wgmma)
// accesses of the same memory.
__device__ __forceinline__ void tma_fence_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

}  // namespace dg_moe
