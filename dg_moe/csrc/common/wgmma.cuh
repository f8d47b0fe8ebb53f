#pragma once
// Warpgroup MMA (wgmma) wrappers for SM90: FP8 e4m3 x e4m3 -> FP32 with both operands K-major, and
// BF16 x BF16 -> FP32 with either operand K-major or MN-major, in shared memory with the 128-byte
// swizzle. Build for sm_90a: wgmma does not exist on plain sm_90.
#include <cstdint>

namespace dg_moe::wgmma {

// Shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") of a K-major tile whose
// rows are 128 bytes and 128B-swizzled, as the TMA engine writes it: groups of 8 rows (one swizzle
// atom) are 1024 bytes apart. The tile must start on a 1024-byte boundary; advancing along K
// inside the 128-byte row is done by adding (bytes >> 4) to the start-address field.
// `addr` is the tile's shared-window address.
__device__ __forceinline__ uint64_t smem_desc_k_major_sw128(uint32_t addr) {
    uint64_t desc = (addr & 0x3FFFFu) >> 4;  // bits 0-13: start address >> 4
    desc |= uint64_t(1) << 16;               // bits 16-29: leading byte offset (unused here)
    desc |= uint64_t(1024 >> 4) << 32;       // bits 32-45: stride byte offset (8 rows)
    desc |= uint64_t(1) << 62;               // bits 62-63: 1 = 128-byte swizzle
    return desc;
}

__device__ __forceinline__ uint64_t smem_desc_k_major_sw128(const void* tile) {
    return smem_desc_k_major_sw128(static_cast<uint32_t>(__cvta_generic_to_shared(tile)));
}

// Descriptor of an MN-major tile (16-bit elements only: wgmma transposes no 8-bit operand) as TMA writes
// boxes of 64 MN elements x kBlockK K rows with the 128-byte swizzle: each K index is one 128-byte row of 64
// MN elements, groups of 8 such rows are 1024 bytes apart (the stride byte offset, along K), and the
// 64-wide MN chunks of a wider tile are `chunk_bytes` apart (the leading byte offset, along MN). A k16
// step is 16 rows further: +2048 bytes, +128 in the start-address field.
__device__ __forceinline__ uint64_t smem_desc_mn_major_sw128(uint32_t addr, uint32_t chunk_bytes) {
    uint64_t desc = (addr & 0x3FFFFu) >> 4;
    desc |= uint64_t((chunk_bytes >> 4) & 0x3FFFu) << 16;
    desc |= uint64_t(1024 >> 4) << 32;
    desc |= uint64_t(1) << 62;
    return desc;
}

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit_group() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wait_group() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across an asynchronous wgmma.
__device__ __forceinline__ void fence_operand(float& reg) { asm volatile("" : "+f"(reg)::"memory"); }

// Inline asm takes no parameter pack in its operand list, so the accumulator operands d[0..n) and
// their names "%0".."%n-1" are spelled out here once, in runs of eight, for every shape of both kinds.
#define DG_MOE_WGMMA_D8(b)                                                                                \
    "+f"(d[b]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3]), "+f"(d[b + 4]), "+f"(d[b + 5]), "+f"(d[b + 6]), \
        "+f"(d[b + 7])
#define DG_MOE_WGMMA_D4(b) "+f"(d[b]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3])
#define DG_MOE_WGMMA_ACCUM_8 DG_MOE_WGMMA_D8(0)
#define DG_MOE_WGMMA_ACCUM_16 DG_MOE_WGMMA_ACCUM_8, DG_MOE_WGMMA_D8(8)
#define DG_MOE_WGMMA_ACCUM_32 DG_MOE_WGMMA_ACCUM_16, DG_MOE_WGMMA_D8(16), DG_MOE_WGMMA_D8(24)
#define DG_MOE_WGMMA_ACCUM_64 \
    DG_MOE_WGMMA_ACCUM_32, DG_MOE_WGMMA_D8(32), DG_MOE_WGMMA_D8(40), DG_MOE_WGMMA_D8(48), DG_MOE_WGMMA_D8(56)
#define DG_MOE_WGMMA_ACCUM_68 DG_MOE_WGMMA_ACCUM_64, DG_MOE_WGMMA_D4(64)
#define DG_MOE_WGMMA_ACCUM_72 DG_MOE_WGMMA_ACCUM_64, DG_MOE_WGMMA_D8(64)
#define DG_MOE_WGMMA_ACCUM_76 DG_MOE_WGMMA_ACCUM_72, DG_MOE_WGMMA_D4(72)
#define DG_MOE_WGMMA_ACCUM_96 \
    DG_MOE_WGMMA_ACCUM_64, DG_MOE_WGMMA_D8(64), DG_MOE_WGMMA_D8(72), DG_MOE_WGMMA_D8(80), DG_MOE_WGMMA_D8(88)
#define DG_MOE_WGMMA_ACCUM_128 \
    DG_MOE_WGMMA_ACCUM_96, DG_MOE_WGMMA_D8(96), DG_MOE_WGMMA_D8(104), DG_MOE_WGMMA_D8(112), DG_MOE_WGMMA_D8(120)
#define DG_MOE_WGMMA_NAMES_8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define DG_MOE_WGMMA_NAMES_16 DG_MOE_WGMMA_NAMES_8 ", " "%8, %9, %10, %11, %12, %13, %14, %15"
#define DG_MOE_WGMMA_NAMES_32 \
    DG_MOE_WGMMA_NAMES_16 ", " "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define DG_MOE_WGMMA_NAMES_64                                                                                 \
    DG_MOE_WGMMA_NAMES_32 ", " "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" \
    ", " "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define DG_MOE_WGMMA_NAMES_68 DG_MOE_WGMMA_NAMES_64 ", " "%64, %65, %66, %67"
#define DG_MOE_WGMMA_NAMES_72 DG_MOE_WGMMA_NAMES_68 ", " "%68, %69, %70, %71"
#define DG_MOE_WGMMA_NAMES_76 DG_MOE_WGMMA_NAMES_72 ", " "%72, %73, %74, %75"
#define DG_MOE_WGMMA_NAMES_96                                                                                 \
    DG_MOE_WGMMA_NAMES_64 ", " "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79" \
    ", " "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define DG_MOE_WGMMA_NAMES_128                                                                                \
    DG_MOE_WGMMA_NAMES_96 ", " "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107"             \
    ", " "%108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123"      \
    ", " "%124, %125, %126, %127"

// Kind<N>: wgmma m64nN<shape_types> into N / 2 FP32 accumulators per thread. The descriptors and the
// scale-d flag are the operands after the accumulators, numbered da, db and pred (the preprocessor cannot
// add: accum, accum + 1 and accum + 2 are written out).
#define DG_MOE_WGMMA_SHAPE(Kind, N, accum, da, db, pred, shape_types)                                             \
    template <>                                                                                                   \
    struct Kind<N> {                                                                                              \
        static constexpr int kNumAccum = accum;                                                                   \
        static_assert(kNumAccum * 2 == N, "a thread owns N / 2 accumulators");                                    \
        __device__ __forceinline__ static void mma(uint64_t desc_a, uint64_t desc_b, float* d, bool accumulate) { \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #pred ", 0;\n"                                      \
                         "wgmma.mma_async.sync.aligned.m64n" #N shape_types " {" DG_MOE_WGMMA_NAMES_##accum       \
                         "}, %" #da ", %" #db ", p, 1, 1;\n}\n"                                                \
                         : DG_MOE_WGMMA_ACCUM_##accum                                                             \
                         : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));                                       \
        }                                                                                                         \
    };

// m64nNk32: a warpgroup multiplies a 64x32 A tile by a 32xN B tile; each thread owns N/2 floats.
template <int N>
struct FP8MMA;
DG_MOE_WGMMA_SHAPE(FP8MMA, 16, 8, 8, 9, 10, "k32.f32.e4m3.e4m3")
DG_MOE_WGMMA_SHAPE(FP8MMA, 32, 16, 16, 17, 18, "k32.f32.e4m3.e4m3")
DG_MOE_WGMMA_SHAPE(FP8MMA, 64, 32, 32, 33, 34, "k32.f32.e4m3.e4m3")
DG_MOE_WGMMA_SHAPE(FP8MMA, 128, 64, 64, 65, 66, "k32.f32.e4m3.e4m3")
// 136 / 144 / 152: the weight-gradient kernel's wider tiles (DeepGEMM's choices for its shapes).
DG_MOE_WGMMA_SHAPE(FP8MMA, 136, 68, 68, 69, 70, "k32.f32.e4m3.e4m3")
DG_MOE_WGMMA_SHAPE(FP8MMA, 144, 72, 72, 73, 74, "k32.f32.e4m3.e4m3")
DG_MOE_WGMMA_SHAPE(FP8MMA, 152, 76, 76, 77, 78, "k32.f32.e4m3.e4m3")
DG_MOE_WGMMA_SHAPE(FP8MMA, 192, 96, 96, 97, 98, "k32.f32.e4m3.e4m3")

// m64nNk16 on BF16 operands, FP32 accumulators; each thread owns N/2 floats in the same fragment layout
// as FP8MMA's. kTransA / kTransB: the operand is MN-major (wgmma's transpose immediates), else K-major.
// A K-major 128-byte swizzled row holds 64 BF16 elements, so one such row is four k16 steps, each 32
// bytes (+2 in the descriptor's address field); MN-major steps are smem_desc_mn_major_sw128's.
template <int N, bool kTransA = false, bool kTransB = false>
struct BF16MMA;
#define DG_MOE_WGMMA_BF16_SHAPE(N, accum, da, db, pred, ta, tb)                                                  \
    template <bool kTransA, bool kTransB>                                                                         \
    struct BF16MMA<N, kTransA, kTransB> {                                                                         \
        static constexpr int kNumAccum = accum;                                                                   \
        static_assert(kNumAccum * 2 == N, "a thread owns N / 2 accumulators");                                    \
        __device__ __forceinline__ static void mma(uint64_t desc_a, uint64_t desc_b, float* d, bool accumulate) { \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #pred ", 0;\n"                                      \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" DG_MOE_WGMMA_NAMES_##accum  \
                         "}, %" #da ", %" #db ", p, 1, 1, %" #ta ", %" #tb ";\n}\n"                             \
                         : DG_MOE_WGMMA_ACCUM_##accum                                                             \
                         : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(int(kTransA)), "n"(int(kTransB))); \
        }                                                                                                         \
    };
DG_MOE_WGMMA_BF16_SHAPE(16, 8, 8, 9, 10, 11, 12)
DG_MOE_WGMMA_BF16_SHAPE(32, 16, 16, 17, 18, 19, 20)
DG_MOE_WGMMA_BF16_SHAPE(64, 32, 32, 33, 34, 35, 36)
DG_MOE_WGMMA_BF16_SHAPE(128, 64, 64, 65, 66, 67, 68)
DG_MOE_WGMMA_BF16_SHAPE(192, 96, 96, 97, 98, 99, 100)
DG_MOE_WGMMA_BF16_SHAPE(256, 128, 128, 129, 130, 131, 132)
#undef DG_MOE_WGMMA_BF16_SHAPE

}  // namespace dg_moe::wgmma
