#pragma once
// Persistent tile scheduler for the SM90 GEMMs. Every CTA takes one linear tile index per round,
// in serpentine order (slot b in even rounds, slot G-1-b in odd ones): tiles that cost less than a
// full one (a narrow last column block) sit at the end of the order, and serpentine hands them to
// the same CTAs in the last two rounds instead of adding a round to some. Producer and math
// warpgroups run identical copies, so they agree on every tile without communicating.
//
// Masked and prefix-sum layouts map a global m-block to its group through a table of each group's
// first m-block in shared memory (built once per CTA, binary-searched per tile) when it fits beside
// the stages; otherwise by walking the groups from a cursor. The walk alone cost decode dearly: with
// 256 experts of which 8 hold a token, every tile of a band change walked ~256 groups one dependent
// load at a time, several microseconds per tile before its first TMA load (H200, DeepSeek-V3 T=1:
// 54 us for a down projection whose weights take 24 us to read).
#include <cstdint>

#include "common/unroll.cuh"

namespace dg_moe::sched {

enum class GemmType : uint32_t {
    Normal = 0,                  // one [M, K] x [N, K] problem
    MGroupedContiguous = 1,      // layout[M_sum]: group of each row, -1 on padding rows
    MGroupedContiguousPsum = 2,  // layout[G]: end row of each group; group g starts at align(end[g-1], 128)
    MGroupedMasked = 3,          // layout[G]: valid rows of each group in a [G, max_m, K] buffer
};

constexpr uint32_t kContiguousAlignment = 128;

__host__ __device__ constexpr uint32_t ceil_div(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

struct Tile {
    uint32_t group;       // expert index (0 for Normal)
    uint32_t n_block;     // BLOCK_N-wide column block
    uint32_t row;         // first row of the tile in the 2-D views of A and D
    uint32_t local_row;   // first row inside the group (masked: the SFA map's inner coordinate)
    uint32_t valid_rows;  // rows from `row` that hold real tokens (BLOCK_M when all do)
    bool check_rows;      // per-row layout with padding inside the tile: test layout[row] per row
    bool multicast_b;     // B-sharing clusters: both CTAs' tiles read the same B rows, so each loads half
};

// Tiles are ordered in bands of kBandWidth column blocks, columns fastest inside a band: one wave of
// CTAs then reads a few hundred rows of A and kBandWidth blocks of B, which stay in L2. Bands of 16
// m-blocks with rows fastest (DeepGEMM's order where B is shared) measured no faster: within 1 % at
// 4096+ rows per group, 15 % slower at 32 groups of 256 rows (H100, docs/perf-log.md v14).
// With kTailLast (the kernel runs the last column block at half width), that block's tiles come
// after all the others, as one band of its own.
// With kMulticast = 2 the CTAs of a cluster walk tile pairs, rank r taking one tile of each:
// - sharing A (kMulticastB false): one m-block, n-blocks 2p + r; the n-block count is padded to even,
//   and a padding n-block past N costs a little math but writes nothing (TMA clips its store);
// - sharing B (kMulticastB): one n-block, m-blocks 2p + r. The pair shares B only where both m-blocks
//   belong to one group (Tile::multicast_b); otherwise each CTA loads all of B. A pair with one tile
//   (an odd m-block count, a padding tile of the per-row layout) runs the missing one as a copy of its
//   peer's with no rows to write, so both CTAs walk the same K blocks through their stage rings.
//   The grouped-cursor layouts (prefix-sum, masked) pair m-blocks within each group instead, group
//   after group (next_grouped_pair).
template <GemmType kType, uint32_t BLOCK_M, uint32_t BLOCK_N, uint32_t SHAPE_N, uint32_t kMulticast = 1,
          bool kMulticastB = false, bool kTailLast = false, uint32_t kBandWidth = 16>
struct Scheduler {
    static_assert(kMulticast == 1 || kMulticast == 2, "clusters of 1 or 2 CTAs");
    static_assert(!kMulticastB || kMulticast == 2, "B is shared across a 2-CTA cluster");
    static_assert(!kTailLast || kMulticast == 1, "a separate last column block needs single-CTA clusters");
    static constexpr uint32_t kPairN = kMulticast == 2 && !kMulticastB ? 2 : 1;  // n-blocks per slot
    static constexpr uint32_t kPairM = kMulticast == 2 && kMulticastB ? 2 : 1;   // m-blocks per slot
    static_assert(kBandWidth % kPairN == 0, "a band holds whole tile pairs");
    static constexpr uint32_t kNumNBlocks = ceil_div(ceil_div(SHAPE_N, BLOCK_N), kPairN) * kPairN;
    static constexpr uint32_t kNumNSlots = kNumNBlocks / kPairN;
    static constexpr uint32_t kBandSlots = kBandWidth / kPairN;
    static constexpr uint32_t kMainSlots = kTailLast ? kNumNSlots - 1 : kNumNSlots;

    static constexpr bool kGroupCursor = kType == GemmType::MGroupedMasked || kType == GemmType::MGroupedContiguousPsum;

    const int* layout;
    uint32_t m;  // rows of A (Normal, contiguous) or max_m (masked)
    uint32_t num_groups;
    const uint32_t* block_table;  // shared memory, num_groups + 1 entries (build_block_table), or null
    uint32_t num_m_blocks;
    uint32_t num_m_slots;  // m-block pairs with kPairM = 2
    uint32_t next_index;   // in row order: blockIdx.x / kMulticast + round * slots
    // Cursor over groups (masked, psum): the group holding global m-block `cursor_block`.
    uint32_t cursor_group = 0, cursor_block = 0, cursor_blocks = 0, cursor_row = 0, cursor_rows = 0;

    __device__ __forceinline__ Scheduler(const int* layout_, uint32_t m_, uint32_t num_groups_,
                                         const uint32_t* block_table_ = nullptr)
        : layout(layout_),
          m(m_),
          num_groups(num_groups_),
          block_table(block_table_),
          next_index(blockIdx.x / kMulticast) {
        if constexpr (!kGroupCursor) {
            num_m_blocks = ceil_div(m, BLOCK_M);
        } else if (block_table != nullptr) {
            num_m_blocks = block_table[num_groups];
            load_group(0, 0);
        } else {
            num_m_blocks = 0;
            for (uint32_t g = 0; g < num_groups; ++g)
                num_m_blocks += ceil_div(group_rows(layout, m, g), BLOCK_M);
            load_group(0, 0);
        }
        num_m_slots = kPairM == 2 ? ceil_div(num_m_blocks, 2) : num_m_blocks;
    }

    __device__ __forceinline__ static uint32_t group_begin(const int* layout, uint32_t m, uint32_t g) {
        if constexpr (kType == GemmType::MGroupedMasked) {
            return g * m;
        } else {
            const uint32_t prev_end = g == 0 ? 0u : static_cast<uint32_t>(max(__ldg(layout + g - 1), 0));
            return ceil_div(prev_end, kContiguousAlignment) * kContiguousAlignment;
        }
    }

    // Rows of group g; masked_m above max_m is clamped so nothing is written outside the group.
    __device__ __forceinline__ static uint32_t group_rows(const int* layout, uint32_t m, uint32_t g) {
        const int value = __ldg(layout + g);
        if constexpr (kType == GemmType::MGroupedMasked) {
            return static_cast<uint32_t>(min(max(value, 0), static_cast<int>(m)));
        } else {
            const uint32_t begin = group_begin(layout, m, g);
            const uint32_t end = min(static_cast<uint32_t>(max(value, 0)), m);
            return end > begin ? end - begin : 0u;
        }
    }

    // table[g] = the first global m-block of group g, table[num_groups] = all m-blocks. Called by
    // every thread of the CTA with a barrier between the two phases (`between` runs it): the counts
    // load in parallel, then one warp scans them.
    template <typename Barrier>
    __device__ __forceinline__ static void build_block_table(uint32_t* table, const int* layout, uint32_t m,
                                                             uint32_t num_groups, Barrier between) {
        for (uint32_t g = threadIdx.x; g < num_groups; g += blockDim.x)
            table[g + 1] = ceil_div(group_rows(layout, m, g), BLOCK_M);
        between();
        if (threadIdx.x < 32) {
            const uint32_t lane = threadIdx.x;
            uint32_t carry = 0;
            for (uint32_t base = 0; base < num_groups; base += 32) {
                const uint32_t g = base + lane;
                uint32_t sum = g < num_groups ? table[g + 1] : 0u;
                DG_MOE_UNROLL
                for (uint32_t offset = 1; offset < 32; offset *= 2) {
                    const uint32_t other = __shfl_up_sync(0xffffffffu, sum, offset);
                    if (lane >= offset)
                        sum += other;
                }
                if (g < num_groups)
                    table[g + 1] = carry + sum;
                carry += __shfl_sync(0xffffffffu, sum, 31);
            }
            if (lane == 0)
                table[0] = 0;
        }
    }

    __device__ __forceinline__ void load_group(uint32_t g, uint32_t first_block) {
        cursor_group = g;
        cursor_block = first_block;
        cursor_rows = g < num_groups ? group_rows(layout, m, g) : 0u;
        cursor_row = g < num_groups ? group_begin(layout, m, g) : 0u;
        cursor_blocks = ceil_div(cursor_rows, BLOCK_M);
    }

    // Points the cursor at the group holding global m-block `m_block` (< num_m_blocks).
    __device__ __forceinline__ void seek(uint32_t m_block) {
        if (m_block >= cursor_block && m_block < cursor_block + cursor_blocks)
            return;
        if (block_table != nullptr) {
            // The last group starting at or before m_block; empty groups share their successor's
            // start, so it is the one that holds m_block.
            uint32_t lo = 0, hi = num_groups;
            while (hi - lo > 1) {
                const uint32_t mid = (lo + hi) / 2;
                if (block_table[mid] <= m_block)
                    lo = mid;
                else
                    hi = mid;
            }
            load_group(lo, block_table[lo]);
            return;
        }
        if (m_block < cursor_block)
            load_group(0, 0);
        while (m_block >= cursor_block + cursor_blocks)
            load_group(cursor_group + 1, cursor_block + cursor_blocks);
    }

    // Group, rows and valid rows of global m-block `m_block` of a grouped-cursor layout.
    __device__ __forceinline__ void locate(uint32_t m_block, Tile& tile) {
        seek(m_block);
        tile.group = cursor_group;
        tile.local_row = (m_block - cursor_block) * BLOCK_M;
        tile.row = cursor_row + tile.local_row;
        tile.valid_rows = min(BLOCK_M, cursor_rows - tile.local_row);
    }

    // Grouped-cursor layouts sharing B: group after group, each group's m-blocks 2j and 2j + 1 share B on
    // every n-block, and an odd count's last m-block runs on n-blocks 2p and 2p + 1 (each CTA loading its
    // own B). Pairing the global m-block sequence instead split a pair across two groups wherever a group
    // began at an odd m-block: at 32 groups of ~256 rows, 7 % fewer L2 reads than no sharing at all, where
    // DeepGEMM's pairs within each group read 23 % fewer (H100, Nsight Compute). Each group owns
    // blocks x kSlotsPerBlock slots, so a slot's group is the one holding m-block index / kSlotsPerBlock.
    __device__ __forceinline__ bool next_grouped_pair(Tile& tile) {
        constexpr uint32_t kEvenNBlocks = ceil_div(kNumNBlocks, 2u) * 2;
        constexpr uint32_t kSlotsPerBlock = kEvenNBlocks / 2;
        const uint32_t rank = blockIdx.x % 2;
        while (true) {
            const uint32_t index = next_index;
            next_index += gridDim.x / 2;
            if (index >= num_m_blocks * kSlotsPerBlock)
                return false;
            seek(index / kSlotsPerBlock);
            const uint32_t local = index - cursor_block * kSlotsPerBlock;
            const uint32_t pairs = cursor_blocks / 2;
            uint32_t m_local;
            if (local < pairs * kEvenNBlocks) {
                const uint32_t band_slots = pairs * kBandWidth;
                const uint32_t band = local / band_slots, in_band = local - band * band_slots;
                const uint32_t width = min(kBandWidth, kEvenNBlocks - band * kBandWidth);
                tile.n_block = band * kBandWidth + in_band % width;
                if (tile.n_block >= kNumNBlocks)
                    continue;  // the padding column of an odd n-block count: both CTAs skip it
                m_local = in_band / width * 2 + rank;
                tile.multicast_b = true;
            } else {
                tile.n_block = (local - pairs * kEvenNBlocks) * 2 + rank;
                m_local = cursor_blocks - 1;
                tile.multicast_b = false;
            }
            locate(cursor_block + m_local, tile);
            tile.check_rows = false;
            if (tile.n_block >= kNumNBlocks)
                tile.valid_rows = 0;  // rank 1's copy past N: it walks the K blocks with its peer, writes nothing
            return true;
        }
    }

    __device__ __forceinline__ bool next(Tile& tile) {
        if constexpr (kGroupCursor && kPairM == 2)
            return next_grouped_pair(tile);
        const uint32_t band_slots = num_m_slots * kBandSlots;
        const uint32_t rank = blockIdx.x % kMulticast;
        while (true) {
            const uint32_t slots = gridDim.x / kMulticast, slot = blockIdx.x / kMulticast;
            uint32_t index = next_index;
            next_index += slots;
            // Serpentine only where it pays: computed in any form, it changed ptxas's schedule of
            // the K loop (wgmma descriptors re-derived between wgmmas) and cost 4096^2 x 7168 10 %.
            if (kTailLast && (index / slots) % 2 == 1)
                index += slots - 1 - 2 * slot;
            if (index >= num_m_slots * kNumNSlots)
                return false;
            uint32_t m_slot;
            if (!kTailLast || index < num_m_slots * kMainSlots) {
                const uint32_t band = index / band_slots;
                const uint32_t in_band = index - band * band_slots;
                const uint32_t width = min(kBandSlots, kMainSlots - band * kBandSlots);
                m_slot = in_band / width;
                tile.n_block = (band * kBandSlots + in_band % width) * kPairN + (kPairN == 2 ? rank : 0);
            } else {
                m_slot = index - num_m_slots * kMainSlots;
                tile.n_block = kNumNSlots - 1;
            }
            const uint32_t m_block = m_slot * kPairM + (kPairM == 2 ? rank : 0);
            tile.check_rows = false;
            tile.multicast_b = kPairM == 2;
            if constexpr (kType == GemmType::Normal) {
                // With kPairM = 2 and an odd m-block count, the last pair's second tile lies past M:
                // its loads read TMA's zero fill and its store is clipped.
                tile.group = 0;
                tile.row = tile.local_row = m_block * BLOCK_M;
                tile.valid_rows = tile.row < m ? min(BLOCK_M, m - tile.row) : 0u;
                return true;
            } else if constexpr (kType == GemmType::MGroupedContiguous) {
                tile.row = tile.local_row = m_block * BLOCK_M;
                int group = m_block < num_m_blocks ? __ldg(layout + tile.row) : -1;
                if constexpr (kPairM == 2) {
                    const uint32_t peer_block = m_block ^ 1u;
                    const int peer = peer_block < num_m_blocks ? __ldg(layout + peer_block * BLOCK_M) : -1;
                    if (group < 0 && peer < 0)
                        continue;  // a pair made only of padding rows: both CTAs skip it
                    tile.multicast_b = group < 0 || peer < 0 || group == peer;
                    if (group < 0) {
                        // Run on the peer's group, so the B it shares is the peer's; nothing is written.
                        tile.group = static_cast<uint32_t>(peer);
                        tile.valid_rows = 0;
                        return true;
                    }
                } else if (group < 0) {
                    continue;  // a tile made only of padding rows: no loads, no math
                }
                const uint32_t last = min(tile.row + BLOCK_M, m) - 1;
                tile.group = static_cast<uint32_t>(group);
                tile.valid_rows = last + 1 - tile.row;
                tile.check_rows = tile.valid_rows < BLOCK_M || __ldg(layout + last) < 0;
                return true;
            } else {
                locate(m_block, tile);
                return true;
            }
        }
    }
};

}  // namespace dg_moe::sched
