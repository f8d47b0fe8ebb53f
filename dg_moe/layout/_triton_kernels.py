"""Triton kernels of the MoE layout ops: token rows to FP8 (or unquantised BF16) buffers, SiLU-and-mul to
FP8 (or BF16), weighted reduce, and the masked and contiguous routings' index maps.

Imported only through :mod:`dg_moe.layout._kernels`, never at package import: Triton is optional.
The row width (in 128-column blocks) and top-k are compile-time: a model has one or two of each, and
loops with static bounds unroll (the interpreter also needs them: it cannot iterate a runtime bound
under NumPy 2.4).
Each kernel reproduces its PyTorch reference (``dg_moe.layout``'s torch path, run on CPU) bit for bit,
except the SiLU's ``exp``: the same arithmetic in the same order, IEEE division where the reference
divides, no FMA contraction (the launches pass ``enable_fp_fusion=False``).

Casts to e4m3 and BF16 round in integer arithmetic first, so the final cast is exact: Triton's CPU
interpreter (TRITON_INTERPRET=1, how CI runs these kernels) truncates where the mantissa rounding
carries into the exponent (124.5 -> 64.0 in e4m3), and the hardware conversion of a value already on
the target grid is exact, so the result is the same round-to-nearest-even everywhere.
"""

from __future__ import annotations

import triton
import triton.language as tl

FP8_E4M3_MAX = tl.constexpr(448.0)
AMAX_FLOOR = tl.constexpr(1e-4)
E4M3_MIN_NORMAL = tl.constexpr(0.015625)  # 2^-6; below it e4m3 steps by 2^-9
E4M3_SUBNORMAL_SHIFT = tl.constexpr(16384.0)  # 2^14: adding it puts float32's ulp at 2^-9


@triton.jit
def _round_to_e4m3_grid(v):
    # Round-to-nearest-even of float32 v (|v| <= 448) onto e4m3's values, still as float32.
    bits = v.to(tl.int32, bitcast=True)
    # Normal range: keep 3 of 23 mantissa bits (add half an ulp minus one, plus the kept lsb for ties).
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    # Subnormal range: multiples of 2^-9, rounded by float32 addition itself; the sign bit is put back
    # so -0.0 stays -0.0.
    magnitude = (tl.abs(v) + E4M3_SUBNORMAL_SHIFT) - E4M3_SUBNORMAL_SHIFT
    subnormal = (magnitude.to(tl.int32, bitcast=True) | (bits & -0x80000000)).to(tl.float32, bitcast=True)
    return tl.where(tl.abs(v) < E4M3_MIN_NORMAL, subnormal, normal)


@triton.jit
def _bf16_bits(v):
    # float32 -> bfloat16 bit pattern (int16), round-to-nearest-even; NaN stays a quiet NaN.
    bits = v.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(v != v, 0x7FC0, rounded).to(tl.int16)


@triton.jit
def _ceil_to_ue8m0(sf):
    # The smallest power of two >= sf (exponent clamped to UE8M0's 1..254), as dg_moe.layout.ceil_to_ue8m0.
    bits = sf.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    exponent = tl.minimum(tl.maximum(exponent, 1), 254)
    return (exponent << 23).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_blocks(x, UE8M0: tl.constexpr):
    # x: float32 [CHUNK, 128] -> (e4m3 bytes uint8 [CHUNK, 128], float32 scales [CHUNK]) as
    # per_token_cast_to_fp8: sf = max(amax, 1e-4) / 448, q = x * (1 / sf).
    # tl.max and tl.maximum drop NaN (maxnum), where the reference's amax and clamp keep it: a block
    # holding a NaN takes a NaN amax, as there, so its scale and every element are NaN, not finite.
    has_nan = tl.max((x != x).to(tl.int32), axis=1) > 0
    amax = tl.where(has_nan, float("nan"), tl.maximum(tl.max(tl.abs(x), axis=1), AMAX_FLOOR))
    sf = tl.math.div_rn(amax, FP8_E4M3_MAX)
    if UE8M0:
        sf = _ceil_to_ue8m0(sf)
    scaled = x * tl.math.div_rn(tl.full(sf.shape, 1.0, tl.float32), sf)[:, None]
    q = _round_to_e4m3_grid(scaled).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    # e4m3's NaN is S.1111.111; the interpreter casts NaN to 0x7C (384), a finite value.
    q = tl.where(scaled != scaled, 0x7F, q).to(tl.uint8)
    return q, sf


@triton.jit
def _token_blocks(src_ptr, src_row_stride, src_sf_ptr, src_sf_row_stride, src_sf_col_stride, token, block, in_row,
                  offsets, QUANTIZE: tl.constexpr, UE8M0: tl.constexpr):
    # Blocks ``block`` [CHUNK] of token ``token`` as (e4m3 bytes uint8 [CHUNK, 128], float32 scales [CHUNK]):
    # quantised 1x128 from bf16/fp16/fp32 (QUANTIZE), or e4m3 bytes and their scales copied.
    if QUANTIZE:
        x = tl.load(src_ptr + token * src_row_stride + offsets, mask=in_row[:, None], other=0.0)
        q, sf = _quantize_blocks(x.to(tl.float32), UE8M0)
    else:
        q = tl.load(src_ptr + token * src_row_stride + offsets, mask=in_row[:, None], other=0)
        sf = tl.load(src_sf_ptr + token * src_sf_row_stride + block * src_sf_col_stride, mask=in_row, other=1.0)
    return q, sf


@triton.jit
def _row_chunk(first, NUM_BLOCKS: tl.constexpr, CHUNK: tl.constexpr):
    # The 128-column blocks [first, first + CHUNK) of a row of NUM_BLOCKS blocks: (block index [CHUNK],
    # whether it lies in the row [CHUNK], byte/element offsets in the row [CHUNK, 128]).
    block = first + tl.arange(0, CHUNK)
    return block, block < NUM_BLOCKS, block[:, None] * 128 + tl.arange(0, 128)[None, :]


@triton.jit
def token_rows_to_fp8_kernel(
    src_ptr, src_row_stride, src_sf_ptr, src_sf_row_stride, src_sf_col_stride,
    row_token_ptr, a_ptr, sfa_ptr, rows_per_group, sfa_group_stride, sfa_col_stride,
    NUM_BLOCKS: tl.constexpr, QUANTIZE: tl.constexpr, UE8M0: tl.constexpr, CHUNK: tl.constexpr,
):
    """One program per destination row r: row ``row_token[r]`` of the tokens, or zeros with scale 1.0
    where it is -1.

    QUANTIZE: src is bf16/fp16/fp32 [T, H], quantised 1x128 on the way; else src is e4m3 bytes [T, H]
    with float32 scales at ``src_sf_ptr`` (any strides), both copied. a: uint8 [rows, H] contiguous.
    sfa: float32 storage [G, H/128, A]; row r is (group r // rows_per_group, row r % rows_per_group).
    """
    r = tl.program_id(0).to(tl.int64)
    token = tl.load(row_token_ptr + r).to(tl.int64)
    group = r // rows_per_group
    sf_row_ptr = sfa_ptr + group * sfa_group_stride + (r - group * rows_per_group)
    width = NUM_BLOCKS * 128
    for first in tl.static_range(0, NUM_BLOCKS, CHUNK):
        block, in_row, offsets = _row_chunk(first, NUM_BLOCKS, CHUNK)
        if token >= 0:
            q, sf = _token_blocks(src_ptr, src_row_stride, src_sf_ptr, src_sf_row_stride, src_sf_col_stride, token,
                                  block, in_row, offsets, QUANTIZE, UE8M0)
        else:
            q = tl.zeros([CHUNK, 128], dtype=tl.uint8)
            sf = tl.full([CHUNK], 1.0, tl.float32)
        tl.store(a_ptr + r * width + offsets, q, mask=in_row[:, None])
        tl.store(sf_row_ptr + block * sfa_col_stride, sf, mask=in_row)


@triton.jit
def tokens_to_fp8_rows_kernel(
    src_ptr, src_row_stride, src_sf_ptr, src_sf_row_stride, src_sf_col_stride,
    inverse_ptr, a_ptr, sfa_ptr, rows_per_group, sfa_group_stride, sfa_col_stride,
    TOP_K: tl.constexpr, NUM_BLOCKS: tl.constexpr, QUANTIZE: tl.constexpr, UE8M0: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Program (t, c): blocks [c*CHUNK, (c+1)*CHUNK) of token t's row, read (and quantised) once, then
    written to each destination row ``inverse[t, s] >= 0`` of a, slots in order. Rows no entry points
    at are not written at all. Column chunks get programs of their own because decode has few tokens:
    one program per token wrote all of DeepSeek-V3's 8 x 7168 bytes alone, 10.5 us at T=1 on an H200.

    src, src_sf, QUANTIZE, UE8M0: as :func:`token_rows_to_fp8_kernel`. inverse: int32 [T, TOP_K]
    contiguous. a: uint8 [rows, H] contiguous. sfa: float32 storage [G, H/128, A]; row r is
    (group r // rows_per_group, column r % rows_per_group).
    """
    t = tl.program_id(0).to(tl.int64)
    width = NUM_BLOCKS * 128
    block, in_row, offsets = _row_chunk(tl.program_id(1) * CHUNK, NUM_BLOCKS, CHUNK)
    q, sf = _token_blocks(src_ptr, src_row_stride, src_sf_ptr, src_sf_row_stride, src_sf_col_stride, t,
                          block, in_row, offsets, QUANTIZE, UE8M0)
    for s in tl.static_range(TOP_K):
        dest = tl.load(inverse_ptr + t * TOP_K + s).to(tl.int64)
        if dest >= 0:
            group = dest // rows_per_group
            sf_row_ptr = sfa_ptr + group * sfa_group_stride + (dest - group * rows_per_group)
            tl.store(a_ptr + dest * width + offsets, q, mask=in_row[:, None])
            tl.store(sf_row_ptr + block * sfa_col_stride, sf, mask=in_row)


@triton.jit
def tokens_to_rows_kernel(src_ptr, src_row_stride, inverse_ptr, a_ptr, TOP_K: tl.constexpr,
                          NUM_BLOCKS: tl.constexpr, CHUNK: tl.constexpr):
    """:func:`tokens_to_fp8_rows_kernel` without quantisation: program (t, c) copies blocks
    [c*CHUNK, (c+1)*CHUNK) of token t's row of src (int16 bits of bf16 [T, H]) to each destination row
    ``inverse[t, s] >= 0`` of a (int16 [rows, H] contiguous). Rows no entry points at are not written."""
    t = tl.program_id(0).to(tl.int64)
    width = NUM_BLOCKS * 128
    _, in_row, offsets = _row_chunk(tl.program_id(1) * CHUNK, NUM_BLOCKS, CHUNK)
    x = tl.load(src_ptr + t * src_row_stride + offsets, mask=in_row[:, None], other=0)
    for s in tl.static_range(TOP_K):
        dest = tl.load(inverse_ptr + t * TOP_K + s).to(tl.int64)
        if dest >= 0:
            tl.store(a_ptr + dest * width + offsets, x, mask=in_row[:, None])


@triton.jit
def _row_is_valid(valid_ptr, r, group, rows_per_group, VALID: tl.constexpr):
    # Whether row r holds a token, per VALID: "counts", valid_ptr holds each group's row count (int32 [G]),
    # clamped to [0, rows_per_group] as the masked GEMM reads it; "experts", the contiguous layout's
    # per-row grouped_layout (int32 [rows], the row's expert or -1); "flags", one flag per row (int8 [rows]).
    if VALID == "counts":
        count = tl.minimum(tl.maximum(tl.load(valid_ptr + group), 0), rows_per_group)
        return (r - group * rows_per_group) < count
    if VALID == "experts":
        return tl.load(valid_ptr + r) >= 0
    return tl.load(valid_ptr + r) != 0


@triton.jit
def silu_mul_to_fp8_kernel(
    x_ptr, x_row_stride, valid_ptr, q_ptr, sfa_ptr, rows_per_group, sfa_group_stride, sfa_col_stride,
    NUM_BLOCKS: tl.constexpr, UE8M0: tl.constexpr, CHUNK: tl.constexpr, VALID: tl.constexpr,
    ZERO_PADDING: tl.constexpr,
):
    """One program per row r of x [rows, 2I] = [gate | up]: ``silu(gate) * up`` in float32, quantised
    1x128 into q uint8 [rows, I] and the MN-major scale storage [G, I/128, A].

    Row r is valid per ``valid_ptr`` (:func:`_row_is_valid`, VALID picks its form). An invalid row's
    input is never read; with ZERO_PADDING it becomes zeros with scale 1.0, else nothing is written.
    """
    r = tl.program_id(0).to(tl.int64)
    group = r // rows_per_group
    valid = _row_is_valid(valid_ptr, r, group, rows_per_group, VALID)
    sf_row_ptr = sfa_ptr + group * sfa_group_stride + (r - group * rows_per_group)
    width = NUM_BLOCKS * 128
    for first in tl.static_range(0, NUM_BLOCKS, CHUNK):
        block, in_row, offsets = _row_chunk(first, NUM_BLOCKS, CHUNK)
        if valid:
            row_ptr = x_ptr + r * x_row_stride + offsets
            gate = tl.load(row_ptr, mask=in_row[:, None], other=0.0).to(tl.float32)
            up = tl.load(row_ptr + width, mask=in_row[:, None], other=0.0).to(tl.float32)
            # F.silu's formula, x / (1 + exp(-x)); exp may differ from PyTorch's in the last bit.
            act = tl.math.div_rn(gate, 1.0 + tl.exp(-gate)) * up
            q, sf = _quantize_blocks(act, UE8M0)
            tl.store(q_ptr + r * width + offsets, q, mask=in_row[:, None])
            tl.store(sf_row_ptr + block * sfa_col_stride, sf, mask=in_row)
        elif ZERO_PADDING:
            tl.store(q_ptr + r * width + offsets, tl.zeros([CHUNK, 128], dtype=tl.uint8), mask=in_row[:, None])
            tl.store(sf_row_ptr + block * sfa_col_stride, tl.full([CHUNK], 1.0, tl.float32), mask=in_row)


@triton.jit
def silu_mul_to_bf16_kernel(
    x_ptr, x_row_stride, valid_ptr, out_ptr, rows_per_group,
    NUM_BLOCKS: tl.constexpr, CHUNK: tl.constexpr, VALID: tl.constexpr,
):
    """One program per row r of x [rows, 2I] = [gate | up]: ``silu(gate) * up`` in float32 as
    :func:`silu_mul_to_fp8_kernel` computes it, rounded once to BF16 into out (int16 bits [rows, I]).
    An invalid row (:func:`_row_is_valid`) is neither read nor written."""
    r = tl.program_id(0).to(tl.int64)
    group = r // rows_per_group
    if _row_is_valid(valid_ptr, r, group, rows_per_group, VALID):
        width = NUM_BLOCKS * 128
        for first in tl.static_range(0, NUM_BLOCKS, CHUNK):
            _, in_row, offsets = _row_chunk(first, NUM_BLOCKS, CHUNK)
            row_ptr = x_ptr + r * x_row_stride + offsets
            gate = tl.load(row_ptr, mask=in_row[:, None], other=0.0).to(tl.float32)
            up = tl.load(row_ptr + width, mask=in_row[:, None], other=0.0).to(tl.float32)
            act = tl.math.div_rn(gate, 1.0 + tl.exp(-gate)) * up
            tl.store(out_ptr + r * width + offsets, _bf16_bits(act), mask=in_row[:, None])


@triton.jit
def _routed_expert(ids_ptr, i, num_entries, num_experts):
    # int32 expert of flattened entries i, -1 past the end and for ids outside [0, num_experts) (not routed;
    # compared in the ids' own width, so a large int64 id cannot wrap into range).
    e = tl.load(ids_ptr + i, mask=i < num_entries, other=-1)
    return tl.where((e >= 0) & (e < num_experts), e, -1).to(tl.int32)


@triton.jit
def masked_route_index_kernel(
    ids_ptr, inverse_ptr, masked_m_ptr, overflow_ptr, num_entries, num_experts, max_m,
    BLOCK: tl.constexpr, NUM_CHUNKS: tl.constexpr,
):
    """Program p ranks flattened entries [p*BLOCK, (p+1)*BLOCK) of ids [T*k] (int32 or int64) among their
    expert's entries, in increasing flattened (token, slot) order, without atomics (bit-exact, deterministic).

    Entry i's rank counts the equal ids at j < i and its expert's total the equal ids anywhere, both by
    [BLOCK, BLOCK] compares against every chunk in turn. Writes inverse int32 [T*k] (``e * max_m + rank``
    when rank < max_m, else -1); the expert's last entry alone writes ``masked_m[e] = min(total, max_m)``
    and ``overflow[e] = total - masked_m[e]``, so both must start zero (experts with no entry stay 0).
    NUM_CHUNKS: at least ceil(T*k / BLOCK); chunks past the entries are skipped.
    """
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mine = _routed_expert(ids_ptr, i, num_entries, num_experts)
    before = tl.zeros([BLOCK], dtype=tl.int32)
    total = tl.zeros([BLOCK], dtype=tl.int32)
    # A compile-time trip count: the interpreter cannot iterate a runtime bound under NumPy 2.4 (module
    # docstring), and a fixed T*k is what a captured decode graph replays anyway.
    for q in range(NUM_CHUNKS):
        if q * BLOCK < num_entries:
            j = q * BLOCK + tl.arange(0, BLOCK)
            same = mine[:, None] == _routed_expert(ids_ptr, j, num_entries, num_experts)[None, :]
            before += tl.sum((same & (j[None, :] < i[:, None])).to(tl.int32), axis=1)
            total += tl.sum(same.to(tl.int32), axis=1)
    routed = mine >= 0
    kept = routed & (before < max_m)
    tl.store(inverse_ptr + i, tl.where(kept, mine * max_m + before, -1), mask=i < num_entries)
    last = routed & (before == total - 1)
    tl.store(masked_m_ptr + mine, tl.minimum(total, max_m), mask=last)
    tl.store(overflow_ptr + mine, tl.maximum(total - max_m, 0), mask=last)


@triton.jit
def contiguous_block_counts_kernel(
    ids_ptr, counts_ptr, num_entries, num_experts, BLOCK: tl.constexpr, SUB: tl.constexpr, E_PAD: tl.constexpr,
):
    """Program p counts the entries of each expert among flattened entries [p*BLOCK, (p+1)*BLOCK) of ids
    [T*k] (int32 or int64; ids outside [0, E) count for no expert) into counts[p, :E] (int32 [P, E]
    row-major), by one-hot sums over SUB entries at a time. E_PAD: a power of two >= E."""
    p = tl.program_id(0)
    experts = tl.arange(0, E_PAD)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for first in range(0, BLOCK, SUB):
        i = p * BLOCK + first + tl.arange(0, SUB)
        mine = _routed_expert(ids_ptr, i, num_entries, num_experts)
        counts += tl.sum((mine[:, None] == experts[None, :]).to(tl.int32), axis=0)
    tl.store(counts_ptr + p.to(tl.int64) * num_experts + experts, counts, mask=experts < num_experts)


@triton.jit
def contiguous_route_offsets_kernel(
    bases_ptr, starts_ptr, psum_ptr, num_blocks, num_experts,
    E_PAD: tl.constexpr, STEP: tl.constexpr, NUM_STEPS: tl.constexpr, ALIGN: tl.constexpr,
):
    """One program: from the per-block counts in bases (int32 [P, E] row-major, as
    :func:`contiguous_block_counts_kernel` wrote them), each expert's segment and where each block's
    entries start in it.

    bases is overwritten in place with its exclusive prefix over blocks (the entries of the expert in
    earlier blocks); starts (int32 [E]) receives each expert's segment start, ``align(previous end,
    ALIGN)`` (0 for expert 0), and psum (int32 [E]) its exclusive end, start + count. STEP blocks per step;
    NUM_STEPS: at least ceil(P / STEP), a power of two; steps past the blocks are skipped.
    """
    experts = tl.arange(0, E_PAD)
    in_range = experts < num_experts
    total = tl.zeros([E_PAD], dtype=tl.int32)
    # A compile-time trip count with a runtime skip, as masked_route_index_kernel (module docstring).
    for step in range(NUM_STEPS):
        if step * STEP < num_blocks:
            block = step * STEP + tl.arange(0, STEP)
            mask = (block < num_blocks)[:, None] & in_range[None, :]
            ptrs = bases_ptr + block.to(tl.int64)[:, None] * num_experts + experts[None, :]
            counts = tl.load(ptrs, mask=mask, other=0)
            tl.store(ptrs, total[None, :] + tl.cumsum(counts, axis=0) - counts, mask=mask)
            total += tl.sum(counts, axis=0)
    # Lanes past E count 0, so their padded size is 0 and the prefix over E_PAD lanes is E's.
    padded = (total + ALIGN - 1) // ALIGN * ALIGN
    starts = tl.cumsum(padded, axis=0) - padded
    tl.store(starts_ptr + experts, starts, mask=in_range)
    tl.store(psum_ptr + experts, starts + total, mask=in_range)


@triton.jit
def contiguous_route_place_kernel(
    ids_ptr, bases_ptr, starts_ptr, inverse_ptr, layout_ptr, num_entries, num_experts,
    BLOCK: tl.constexpr, SUB: tl.constexpr,
):
    """Program p places flattened entries [p*BLOCK, (p+1)*BLOCK) of ids [T*k] (int32 or int64; ids outside
    [0, E) not routed) in the contiguous layout, in increasing (token, slot) order within each expert,
    without atomics (bit-exact, deterministic).

    An entry's rank within its block counts the equal ids before it in the block, by [BLOCK, SUB]
    compares; its row is ``starts[e] + bases[p, e] + rank`` (segment start, entries in earlier blocks:
    :func:`contiguous_route_offsets_kernel`). Writes inverse int32 [T*k] (the row, or -1 where not
    routed) and ``layout[row] = e`` (int32 [M_cap], which must hold -1 beforehand: rows no entry lands
    on are not written).
    """
    p = tl.program_id(0)
    i = p * BLOCK + tl.arange(0, BLOCK)
    mine = _routed_expert(ids_ptr, i, num_entries, num_experts)
    rank = tl.zeros([BLOCK], dtype=tl.int32)
    for first in range(0, BLOCK, SUB):
        j = p * BLOCK + first + tl.arange(0, SUB)
        same = mine[:, None] == _routed_expert(ids_ptr, j, num_entries, num_experts)[None, :]
        rank += tl.sum((same & (j[None, :] < i[:, None])).to(tl.int32), axis=1)
    routed = mine >= 0
    block_base = tl.load(bases_ptr + p.to(tl.int64) * num_experts + mine, mask=routed, other=0)
    start = tl.load(starts_ptr + mine, mask=routed, other=0)
    row = start + block_base + rank
    tl.store(inverse_ptr + i, tl.where(routed, row, -1), mask=i < num_entries)
    tl.store(layout_ptr + row, mine, mask=routed)


@triton.jit
def weighted_reduce_kernel(
    y_ptr, y_row_stride, inverse_ptr, w_ptr, w_row_stride, w_col_stride, out_ptr, width,
    TOP_K: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (t, c): columns [c*BLOCK, (c+1)*BLOCK) of token t, ``acc = acc + w[t, s] * y[inverse[t, s]]``
    over slots s in order, skipping -1, then one rounding to BF16 (out viewed as int16 [T, width])."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < width
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(TOP_K):
        row = tl.load(inverse_ptr + t * TOP_K + s).to(tl.int64)
        if row >= 0:
            weight = tl.load(w_ptr + t * w_row_stride + s * w_col_stride).to(tl.float32)
            y = tl.load(y_ptr + row * y_row_stride + cols, mask=in_row, other=0.0).to(tl.float32)
            acc = acc + weight * y
    tl.store(out_ptr + t * width + cols, _bf16_bits(acc), mask=in_row)
