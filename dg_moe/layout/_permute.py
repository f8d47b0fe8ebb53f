"""Shared machinery of the MoE routing ops: token quantisation, per-expert ranks, padded row
gathers and MN-major scale buffers. Everything is built from device-side tensor ops (sort,
scatter, gather), so nothing reads a value on the host and the same code runs on CPU and CUDA."""

from __future__ import annotations

import torch

from . import _checks as chk
from .quant import per_token_cast_to_fp8
from .scale_factors import get_tma_aligned_size

TokenRows = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def fp8_token_rows(fn: str, name: str, hidden: object, use_ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``hidden`` as (e4m3 [T, H], float32 [T, H/128] scales, any strides), quantising BF16 on the way.

    hidden: bf16/fp16/fp32 [T, H], quantised 1x128 with ``per_token_cast_to_fp8``; or an
    already-FP8 pair (e4m3 [T, H], float32 [T, H/128]). H must be a multiple of 128.
    """
    chk.flag(fn, "use_ue8m0", use_ue8m0)
    if isinstance(hidden, (tuple, list)):
        if len(hidden) != 2:
            raise TypeError(
                f"{fn}: {name} must be a tensor or an (e4m3 tensor, scales) pair, got {len(hidden)} items"
            )
        x = chk.tensor(fn, f"{name}[0]", hidden[0], (chk.FP8,), 2, "[T, H]",
                       "pass BF16 hidden states as a plain tensor to quantise them here")
        sf = chk.tensor(fn, f"{name}[1] (scales)", hidden[1], (torch.float32,), 2, "[T, H/128]",
                        "expand packed UE8M0 scales with unpack_ue8m0_from_int first")
        chk.hidden_size(fn, f"{name}[0]", x.shape[1])
        chk.shape(fn, f"{name}[1] (scales)", sf, (x.shape[0], x.shape[1] // chk.BLOCK_K),
                  f"{name}[0] of shape {tuple(x.shape)} (one scale per token per 128 columns)")
        chk.same_device(fn, f"{name}[0]", x, {f"{name}[1] (scales)": sf})
        if use_ue8m0:
            raise ValueError(f"{fn}: use_ue8m0=True applies when quantising BF16 {name}; FP8 input keeps its scales")
        return x, sf
    x = chk.tensor(fn, name, hidden, chk.FLOAT_DTYPES, 2, "[T, H]",
                   "pass FP8 input as an (e4m3 [T, H], float32 [T, H/128]) tuple")
    chk.hidden_size(fn, name, x.shape[1])
    return per_token_cast_to_fp8(x, use_ue8m0=use_ue8m0)


def topk_ids_of(fn: str, name: str, ids: object, num_tokens: int, num_experts: int,
                anchor_name: str, anchor: torch.Tensor) -> torch.Tensor:
    """Validated ``ids`` (int32/int64 [T, k] on the anchor's device, values in [-1, E) on CPU)."""
    ids = chk.tensor(fn, name, ids, chk.INDEX_DTYPES, 2, "[T, k]", "convert it with .to(torch.int32)")
    if ids.shape[0] != num_tokens:
        raise ValueError(
            f"{fn}: {name} has {ids.shape[0]} rows but {anchor_name} has {num_tokens} tokens; "
            f"{name} is [T, k] with one row per token"
        )
    chk.same_device(fn, anchor_name, anchor, {name: ids})
    chk.expert_ids(fn, name, ids, num_experts)
    return ids


def expert_ranks(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each (token, slot) entry goes, in increasing (token, slot) order within each expert.

    ids: integer [T, k]; entries outside [0, num_experts) are not routed. Returns int64 tensors
    ``expert [T*k]`` (``num_experts`` for entries not routed), ``rank [T*k]`` (position of the entry
    among its expert's entries) and ``counts [num_experts]``.
    """
    flat = ids.reshape(-1).long()
    expert = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)
    # A stable sort keeps (token, slot) order within each expert: rank = sorted position - expert start.
    order = torch.sort(expert, stable=True).indices
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=ids.device)
    counts.scatter_add_(0, expert, torch.ones_like(expert))
    first = torch.cumsum(counts, 0) - counts
    positions = torch.arange(flat.numel(), device=ids.device)
    rank = torch.empty_like(expert).scatter_(0, order, positions - first[expert[order]])
    return expert, rank, counts[:num_experts]


def rows_of_buffer(dest: torch.Tensor, values: torch.Tensor, num_rows: int) -> torch.Tensor:
    """int64 [num_rows]: ``values[i]`` at row ``dest[i]``, -1 on rows nothing lands on.

    ``dest`` entries equal to ``num_rows`` are dropped: they all land on one scratch slot past the
    end, so dropping needs no boolean indexing (which would synchronise a GPU).
    """
    out = torch.full((num_rows + 1,), -1, dtype=torch.int64, device=dest.device)
    return out.scatter_(0, dest, values)[:num_rows]


def gather_rows(src: torch.Tensor, index: torch.Tensor, fill: float) -> torch.Tensor:
    """``src[index]`` for 2-D ``src`` with rows where ``index`` is -1 set to ``fill``: [*index.shape, C]."""
    # FP8 rows move as bytes, so the copy relies on no float8 kernel for cat or indexing.
    data = src.view(torch.uint8) if src.dtype == chk.FP8 else src
    extended = torch.cat([data, data.new_full((1, data.shape[1]), fill)])
    out = extended[torch.where(index >= 0, index, src.shape[0])]
    return out.view(chk.FP8) if src.dtype == chk.FP8 else out


def mn_major(rows: torch.Tensor) -> torch.Tensor:
    """float32 ``[..., MN, Kb]`` scales copied into the layout the SM90 kernels read.

    Strides ``(1, A)`` or ``(Kb*A, 1, A)`` with ``A = get_tma_aligned_size(MN, 4)``, as
    ``get_mn_major_tma_aligned_tensor`` lays them out; the storage past row MN of each column holds 1.0.
    """
    mn, kb = rows.shape[-2], rows.shape[-1]
    aligned = get_tma_aligned_size(mn, rows.element_size())
    out = rows.new_ones((*rows.shape[:-2], kb, aligned))
    out[..., :mn].copy_(rows.transpose(-1, -2))
    return out.transpose(-1, -2)[..., :mn, :]
