"""Launchers of the Triton layout kernels, and the rule for when the layout ops use them.

The layout ops run these kernels on CUDA tensors when Triton imports (it ships with CUDA builds of
PyTorch); otherwise, and whenever ``DG_MOE_LAYOUT_KERNELS=torch``, they run their PyTorch
formulation, which is also the reference the kernels are tested against bit for bit. Every launcher
allocates its outputs with ``torch.empty`` and writes every element (zeros and 1.0 where no token
lands) unless it says it leaves padding unwritten, reads nothing on the host and so can be captured in
a CUDA graph once Triton has compiled the kernel (one eager call first).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from types import ModuleType

import torch

from .. import checks as chk
from .grouped import get_mk_alignment_for_contiguous_layout
from .math import ceil_div
from .scale_factors import get_tma_aligned_size

BACKEND_ENV = "DG_MOE_LAYOUT_KERNELS"
"""Which implementation the layout ops run: unset or ``auto``, the Triton kernels on CUDA tensors when
Triton imports and PyTorch otherwise; ``torch``, PyTorch everywhere; ``triton``, the kernels always,
which on CPU tensors needs Triton's interpreter (``TRITON_INTERPRET=1``, how CI tests them)."""

_CHUNK_BLOCKS = 8  # 128-column blocks per loop step: 1024 columns, 8 registers a thread at 4 warps
_REDUCE_BLOCK = 1024
# (token, slot) entries per program of the masked index kernel. Its work grows as (T*k)^2 / BLOCK per
# program; on an H200 at top-8 of 256 experts 32 beat 16, 64 and 128 at every T from 1 to 512 (T = 128:
# 13 us against 45 us at 128, where too few programs each loop over too large compares).
_INDEX_BLOCK = 32
# (token, slot) entries per program of the contiguous index kernels. Unlike the masked kernel's, a program's
# work does not grow with T*k: a [BLOCK, BLOCK] rank compare and a [BLOCK, E] one-hot count. 128 gives 32
# programs at T = 512, top-8 (Qwen3-30B-A3B prefill) and 256 at T*k = 32768, while keeping the single
# program that sums over blocks to ceil(P / (4096 / E_PAD)) steps (4 at E = 128, 16 at E = 512). Not timed
# on a GPU yet.
_CONTIGUOUS_BLOCK = 128
# Elements of one loop step's int32 tile ([SUB, E_PAD] one-hot, [BLOCK, SUB] compare, [STEP, E_PAD] prefix):
# 32 registers a thread at 4 warps.
_TILE_ELEMENTS = 4096


@functools.cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def enabled(device: torch.device) -> bool:
    """Whether the layout ops run the Triton kernels for tensors on ``device`` (:data:`BACKEND_ENV`)."""
    backend = os.environ.get(BACKEND_ENV, "auto")
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and _triton_importable()
    if backend != "triton":
        raise ValueError(f"{BACKEND_ENV}={backend!r} is not a layout backend; use 'auto', 'triton' or 'torch'")
    if not _triton_importable():
        raise RuntimeError(f"{BACKEND_ENV}=triton but Triton does not import here; pip install triton")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"{BACKEND_ENV}=triton on a {device.type} tensor needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before the first layout op"
        )
    return True


def _module() -> ModuleType:
    from . import _triton_kernels

    return _triton_kernels


_NO_SWITCH = contextlib.nullcontext()  # stateless, so one instance serves every launch


def _launch_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    # Triton launches on the current device; make the tensor's device current for the launch. Almost every
    # launch finds it current already, and torch.cuda.device() then still costs a context object, an index
    # parse and two device exchanges (~1.9 us a launch against ~0.6 us for this check, timed on CPU with
    # fakes for the CUDA calls), so it is entered only when the device differs, as the GEMM launchers do.
    if not t.is_cuda:
        return _NO_SWITCH
    index = t.get_device()
    return _NO_SWITCH if index == torch.cuda.current_device() else torch.cuda.device(index)


def mn_major_storage(groups: int, rows: int, num_blocks: int, device: torch.device, *, pad: bool = True,
                     ) -> tuple[torch.Tensor, int]:
    """float32 storage ``[groups, num_blocks, A]`` for MN-major scales, ``A = align(rows, 4)``, and A.

    With ``pad``, columns past ``rows`` hold 1.0 (as ``get_mn_major_tma_aligned_tensor`` pads them);
    without, they stay uninitialised (no kernel reads them). The kernels write the rest.
    """
    aligned = get_tma_aligned_size(rows, 4)
    storage = torch.empty((groups, num_blocks, aligned), dtype=torch.float32, device=device)
    if pad and aligned > rows:
        storage[:, :, rows:].fill_(1.0)
    return storage, aligned


def mn_major_view(storage: torch.Tensor, rows: int) -> torch.Tensor:
    """The logical ``[G, rows, Kb]`` scale tensor over :func:`mn_major_storage`."""
    return storage.transpose(1, 2)[:, :rows, :]


def _source_args(rows: torch.Tensor, scales: torch.Tensor | None) -> tuple[torch.Tensor, tuple, bool]:
    # (rows with unit column stride, (src, src row stride, src scales, their two strides), quantise).
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    quantize = scales is None
    src = rows if quantize else rows.view(torch.uint8)
    src_scales = src if quantize else scales
    sf_strides = (0, 0) if quantize else (scales.stride(0), scales.stride(1))
    return rows, (src, src.stride(0), src_scales, *sf_strides), quantize


def token_rows_to_fp8(rows: torch.Tensor, scales: torch.Tensor | None, use_ue8m0: bool, row_token: torch.Tensor,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather token rows into a routing buffer in FP8, quantising on the way when ``scales`` is None.

    rows: bf16/fp16/fp32 [T, H] (quantised 1x128, ``use_ue8m0`` rounds scales up to powers of two) or
    e4m3 [T, H] with ``scales`` float32 [T, H/128] (any strides). row_token: integer [G, R], the token
    of each buffer row or -1. Returns (e4m3 [G, R, H] contiguous, float32 [G, R, H/128] MN-major
    with strides ``(H/128 * A, 1, A)``); rows of token -1 are zero with scale 1.0.
    """
    groups, per_group = row_token.shape
    hidden = rows.shape[1]
    num_blocks = hidden // chk.BLOCK_K
    device = rows.device
    a = torch.empty((groups, per_group, hidden), dtype=torch.uint8, device=device)
    storage, aligned = mn_major_storage(groups, per_group, num_blocks, device)
    if a.numel() > 0:
        rows, src_args, quantize = _source_args(rows, scales)
        with _launch_device(rows):
            _module().token_rows_to_fp8_kernel[(groups * per_group,)](
                *src_args, row_token.contiguous(), a, storage, per_group, num_blocks * aligned, aligned,
                NUM_BLOCKS=num_blocks, QUANTIZE=quantize, UE8M0=use_ue8m0, CHUNK=_CHUNK_BLOCKS, enable_fp_fusion=False,
            )
    return a.view(chk.FP8), mn_major_view(storage, per_group)


def _power_of_two_at_least(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def masked_route_index(ids: torch.Tensor, num_experts: int, max_m: int,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masked layout's maps from ids int32/int64 [T, k] (entries outside [0, E) not routed), as
    ``expert_ranks`` ranks them: (inverse int32 [T, k], ``e * max_m + rank`` or -1 where not routed or
    ``rank >= max_m``; masked_m int32 [E], ``min(count, max_m)``; overflow int32 [E], ``count - masked_m``)."""
    num_tokens, top_k = ids.shape
    num_entries = num_tokens * top_k
    inverse = torch.empty((num_tokens, top_k), dtype=torch.int32, device=ids.device)
    # The kernel writes only experts that have entries: the others must read 0.
    counts = torch.zeros((2, num_experts), dtype=torch.int32, device=ids.device)
    if num_entries > 0:
        programs = ceil_div(num_entries, _INDEX_BLOCK)
        with _launch_device(ids):
            _module().masked_route_index_kernel[(programs,)](
                ids.contiguous(), inverse, counts[0], counts[1], num_entries, num_experts, max_m,
                # Chunks rounded up to a power of two: a few compiled variants cover every T of eager calls.
                BLOCK=_INDEX_BLOCK, NUM_CHUNKS=_power_of_two_at_least(programs),
            )
    return inverse, counts[0], counts[1]


def contiguous_route_index(ids: torch.Tensor, num_experts: int, num_rows: int,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contiguous layout's maps from ids int32/int64 [T, k] (entries outside [0, E) not routed), in
    increasing (token, slot) order within each expert as ``expert_ranks`` ranks them: (grouped_layout int32
    [num_rows], the expert of each row or -1; grouped_layout_psum int32 [E], each segment's exclusive end;
    inverse int32 [T, k], the row of each entry or -1). Expert e's segment starts at ``align(end of e - 1,
    128)``; num_rows must cover the last end (``get_contiguous_layout_capacity`` does)."""
    num_tokens, top_k = ids.shape
    num_entries = num_tokens * top_k
    device = ids.device
    programs = ceil_div(num_entries, _CONTIGUOUS_BLOCK)
    # 16 lanes at least: narrower one-hot and prefix rows would idle most of a warp anyway, and every E up
    # to 16 shares one compiled variant.
    experts_pad = max(16, _power_of_two_at_least(num_experts))
    blocks_per_step = max(1, _TILE_ELEMENTS // experts_pad)
    # Rows [0, P): each block's counts, then their prefix over blocks; row P: each segment's start.
    bases = torch.empty((programs + 1, num_experts), dtype=torch.int32, device=device)
    psum = torch.empty(num_experts, dtype=torch.int32, device=device)
    inverse = torch.empty((num_tokens, top_k), dtype=torch.int32, device=device)
    # The place kernel writes the rows entries land on; padding and unused rows keep -1.
    grouped_layout = torch.full((num_rows,), -1, dtype=torch.int32, device=device)
    ids = ids.contiguous()
    kernels = _module()
    with _launch_device(ids):
        if programs > 0:
            kernels.contiguous_block_counts_kernel[(programs,)](
                ids, bases, num_entries, num_experts, BLOCK=_CONTIGUOUS_BLOCK,
                SUB=min(_CONTIGUOUS_BLOCK, max(1, _TILE_ELEMENTS // experts_pad)), E_PAD=experts_pad,
            )
        # Launched even without entries: it writes psum (zeros then).
        kernels.contiguous_route_offsets_kernel[(1,)](
            bases, bases[programs], psum, programs, num_experts, E_PAD=experts_pad, STEP=blocks_per_step,
            # Steps rounded up to a power of two: a few compiled variants cover every T of eager calls.
            NUM_STEPS=_power_of_two_at_least(ceil_div(programs, blocks_per_step)),
            ALIGN=get_mk_alignment_for_contiguous_layout(),
        )
        if programs > 0:
            kernels.contiguous_route_place_kernel[(programs,)](
                ids, bases, bases[programs], inverse, grouped_layout, num_entries, num_experts,
                BLOCK=_CONTIGUOUS_BLOCK, SUB=_TILE_ELEMENTS // _CONTIGUOUS_BLOCK,
            )
    return grouped_layout, psum, inverse


def tokens_to_fp8_rows(rows: torch.Tensor, scales: torch.Tensor | None, use_ue8m0: bool, inverse: torch.Tensor,
                       groups: int, per_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter token rows to their destinations in FP8, quantising on the way when ``scales`` is None.

    rows, scales, use_ue8m0: as :func:`token_rows_to_fp8`. inverse: int32 [T, k], the buffer row of each
    (token, slot) in [0, G*R), or -1. Returns (e4m3 [G, R, H] contiguous, float32 [G, R, H/128] MN-major
    with strides ``(H/128 * A, 1, A)``). Only the rows inverse points at are written: every other row,
    its scales and the storage's alignment columns are left uninitialised.
    """
    num_tokens, top_k = inverse.shape
    hidden = rows.shape[1]
    num_blocks = hidden // chk.BLOCK_K
    device = rows.device
    a = torch.empty((groups, per_group, hidden), dtype=torch.uint8, device=device)
    storage, aligned = mn_major_storage(groups, per_group, num_blocks, device, pad=False)
    if inverse.numel() > 0 and a.numel() > 0:
        rows, src_args, quantize = _source_args(rows, scales)
        with _launch_device(rows):
            _module().tokens_to_fp8_rows_kernel[(num_tokens, ceil_div(num_blocks, _CHUNK_BLOCKS))](
                *src_args, inverse.contiguous(), a, storage, per_group, num_blocks * aligned, aligned,
                TOP_K=top_k, NUM_BLOCKS=num_blocks, QUANTIZE=quantize, UE8M0=use_ue8m0, CHUNK=_CHUNK_BLOCKS,
                enable_fp_fusion=False,
            )
    return a.view(chk.FP8), mn_major_view(storage, per_group)


def tokens_to_rows(rows: torch.Tensor, inverse: torch.Tensor, groups: int, per_group: int) -> torch.Tensor:
    """Scatter bfloat16 token rows [T, H] to their destinations unquantised: bfloat16 [G, R, H] contiguous.

    inverse: int32 [T, k], the buffer row of each (token, slot) in [0, G*R), or -1. Rows are copied bit
    for bit; only the rows inverse points at are written, every other row is left uninitialised.
    """
    num_tokens, top_k = inverse.shape
    hidden = rows.shape[1]
    num_blocks = hidden // chk.BLOCK_K
    a = torch.empty((groups, per_group, hidden), dtype=torch.bfloat16, device=rows.device)
    if inverse.numel() > 0 and a.numel() > 0:
        if rows.stride(1) != 1:
            rows = rows.contiguous()
        # Moved as int16: a copy needs no float arithmetic, so NaN payloads and -0.0 survive too.
        src = rows.view(torch.int16)
        with _launch_device(rows):
            _module().tokens_to_rows_kernel[(num_tokens, ceil_div(num_blocks, _CHUNK_BLOCKS))](
                src, src.stride(0), inverse.contiguous(), a.view(torch.int16),
                TOP_K=top_k, NUM_BLOCKS=num_blocks, CHUNK=_CHUNK_BLOCKS,
            )
    return a


def _silu_launch(x: torch.Tensor, valid: torch.Tensor, groups: int, per_group: int, use_ue8m0: bool, form: str,
                 zero_padding: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # x [G * R, 2I]; valid as silu_mul_to_fp8_kernel reads it (VALID = form).
    two_i = x.shape[1]
    inter = two_i // 2
    num_blocks = inter // chk.BLOCK_K
    q = torch.empty((groups, per_group, inter), dtype=torch.uint8, device=x.device)
    storage, aligned = mn_major_storage(groups, per_group, num_blocks, x.device, pad=zero_padding)
    if q.numel() > 0:
        if x.stride(1) != 1:
            x = x.contiguous()
        with _launch_device(x):
            _module().silu_mul_to_fp8_kernel[(groups * per_group,)](
                x, x.stride(0), valid, q, storage, per_group, num_blocks * aligned, aligned,
                NUM_BLOCKS=num_blocks, UE8M0=use_ue8m0, CHUNK=_CHUNK_BLOCKS, VALID=form, ZERO_PADDING=zero_padding,
                enable_fp_fusion=False,
            )
    return q.view(chk.FP8), mn_major_view(storage, per_group)


def silu_mul_to_fp8(x: torch.Tensor, valid: torch.Tensor, groups: int, use_ue8m0: bool, zero_padding: bool,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``SiLU(gate) * up`` of x [G * R, 2I] quantised 1x128: (e4m3 [G, R, I], float32 [G, R, I/128]
    MN-major). valid: bool [G * R]; rows where it is False are never read; they come out zero with scale
    1.0 with ``zero_padding``, else they, their scales and the storage's alignment columns are left
    uninitialised."""
    per_group = x.shape[0] // groups if groups > 0 else 0
    return _silu_launch(x, valid.to(torch.int8), groups, per_group, use_ue8m0, "flags", zero_padding)


def silu_mul_to_fp8_per_row(x: torch.Tensor, grouped_layout: torch.Tensor, use_ue8m0: bool, zero_padding: bool,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``SiLU(gate) * up`` of x [M, 2I] quantised 1x128: (e4m3 [1, M, I], float32 [1, M, I/128] MN-major).
    grouped_layout: int32 [M], the contiguous layout's expert of each row; rows where it is negative are
    treated as :func:`silu_mul_to_fp8` treats invalid rows."""
    return _silu_launch(x, grouped_layout.contiguous(), 1, x.shape[0], use_ue8m0, "experts", zero_padding)


def silu_mul_to_fp8_masked(x: torch.Tensor, masked_m: torch.Tensor, use_ue8m0: bool, zero_padding: bool,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``SiLU(gate) * up`` of x [E, max_m, 2I] quantised 1x128: (e4m3 [E, max_m, I], float32
    [E, max_m, I/128] MN-major). Rows at or past ``clamp(masked_m[e], 0, max_m)`` (masked_m int32 [E])
    are never read; they come out zero with scale 1.0 with ``zero_padding``, else they, their scales and
    the storage's alignment columns are left uninitialised."""
    groups, per_group, two_i = x.shape
    return _silu_launch(x.reshape(groups * per_group, two_i), masked_m.contiguous(), groups, per_group, use_ue8m0,
                        "counts", zero_padding)


def _silu_bf16_launch(x: torch.Tensor, valid: torch.Tensor, groups: int, per_group: int, form: str) -> torch.Tensor:
    # x [G * R, 2I]; valid as silu_mul_to_bf16_kernel reads it (VALID = form).
    inter = x.shape[1] // 2
    out = torch.empty((groups, per_group, inter), dtype=torch.bfloat16, device=x.device)
    if out.numel() > 0:
        if x.stride(1) != 1:
            x = x.contiguous()
        with _launch_device(x):
            _module().silu_mul_to_bf16_kernel[(groups * per_group,)](
                x, x.stride(0), valid, out.view(torch.int16), per_group,
                NUM_BLOCKS=inter // chk.BLOCK_K, CHUNK=_CHUNK_BLOCKS, VALID=form, enable_fp_fusion=False,
            )
    return out


def silu_mul_to_bf16_per_row(x: torch.Tensor, grouped_layout: torch.Tensor) -> torch.Tensor:
    """``SiLU(gate) * up`` of x [M, 2I] in float32, rounded once: bfloat16 [M, I]. grouped_layout: int32 [M],
    the contiguous layout's expert of each row; rows where it is negative are neither read nor written."""
    return _silu_bf16_launch(x, grouped_layout.contiguous(), 1, x.shape[0], "experts")[0]


def silu_mul_to_bf16_masked(x: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
    """``SiLU(gate) * up`` of x [E, max_m, 2I] in float32, rounded once: bfloat16 [E, max_m, I]. Rows at or
    past ``clamp(masked_m[e], 0, max_m)`` (masked_m int32 [E]) are neither read nor written."""
    groups, per_group, two_i = x.shape
    return _silu_bf16_launch(x.reshape(groups * per_group, two_i), masked_m.contiguous(), groups, per_group,
                             "counts")


def weighted_reduce(y: torch.Tensor, inverse: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """bfloat16 [T, H]: per token, ``sum_s w[t, s] * y[inverse[t, s]]`` over slots with inverse >= 0,
    accumulated in float32 in slot order without FMA. y: float [rows, H]; inverse int32 [T, k]."""
    num_tokens, top_k = inverse.shape
    width = y.shape[1]
    out = torch.empty((num_tokens, width), dtype=torch.bfloat16, device=y.device)
    if out.numel() > 0:
        if y.stride(1) != 1:
            y = y.contiguous()
        grid = (num_tokens, ceil_div(width, _REDUCE_BLOCK))
        with _launch_device(y):
            _module().weighted_reduce_kernel[grid](
                y, y.stride(0), inverse.contiguous(), topk_weights, topk_weights.stride(0), topk_weights.stride(1),
                out.view(torch.int16), width, TOP_K=top_k, BLOCK=_REDUCE_BLOCK, enable_fp_fusion=False,
            )
    return out
