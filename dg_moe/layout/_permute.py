"""Shared machinery of the MoE routing ops: token quantisation, per-expert ranks, padded row
gathers and MN-major scale buffers. Everything is built from device-side tensor ops (sort,
scatter, gather), so nothing reads a value on the host and the same code runs on CPU and CUDA."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import checks as chk
from . import _kernels
from .quant import per_token_cast_to_fp8_unchecked
from .scale_factors import get_tma_aligned_size

TokenRows = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class TokenSource(NamedTuple):
    """Validated token rows for a routing op: ``rows`` [T, H] is either bf16/fp16/fp32, to be
    quantised 1x128 where it lands (``use_ue8m0`` as given), or e4m3 with ``scales`` float32
    [T, H/128] in any strides; or, with ``bf16``, bfloat16 rows that land as they are, with no
    scales (the buffers of ``fused_moe_bf16``)."""

    rows: torch.Tensor
    scales: torch.Tensor | None
    use_ue8m0: bool
    bf16: bool = False


def token_source(fn: str, name: str, hidden: object, use_ue8m0: bool) -> TokenSource:
    """``hidden`` validated as a :class:`TokenSource`.

    hidden: bf16/fp16/fp32 [T, H], quantised 1x128 as ``per_token_cast_to_fp8`` does; or an
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
        chk.k_aligned(fn, f"{name}[0] has H", x.shape[1])
        chk.shape(fn, f"{name}[1] (scales)", sf, (x.shape[0], x.shape[1] // chk.BLOCK_K),
                  f"{name}[0] of shape {tuple(x.shape)} (one scale per token per 128 columns)")
        chk.same_device(fn, f"{name}[0]", x, {f"{name}[1] (scales)": sf})
        if use_ue8m0:
            raise ValueError(f"{fn}: use_ue8m0=True applies when quantising BF16 {name}; FP8 input keeps its scales")
        return TokenSource(x, sf, False)
    x = chk.tensor(fn, name, hidden, chk.FLOAT_DTYPES, 2, "[T, H]",
                   "pass FP8 input as an (e4m3 [T, H], float32 [T, H/128]) tuple")
    chk.k_aligned(fn, f"{name} has H", x.shape[1])
    return TokenSource(x, None, use_ue8m0)


def split_token_rows(hidden: TokenRows) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``hidden`` as (rows, scales or None): the flat form the registered torch ops take (``dg_moe.custom_ops``)."""
    if isinstance(hidden, (tuple, list)):
        return hidden[0], hidden[1]
    return hidden, None


def unchecked_source(hidden: TokenRows, bf16: bool = False) -> TokenSource:
    """``hidden`` as a :class:`TokenSource` without checks (``use_ue8m0`` off), for callers that
    validated it as :func:`token_source` would; ``bf16``: a bfloat16 [T, H] tensor kept unquantised."""
    if isinstance(hidden, tuple):
        return TokenSource(hidden[0], hidden[1], False)
    return TokenSource(hidden, None, False, bf16)


def scatter_token_rows(source: TokenSource, row_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Buffer rows filled from the tokens: (e4m3 [G, R, H] contiguous, float32 [G, R, H/128] MN-major),
    or for a ``bf16`` source (bfloat16 [G, R, H] contiguous, None).

    row_token: int64 [G, R], the token each buffer row holds, -1 for a row that holds none (zeros,
    scale 1.0). Scales come out as :func:`mn_major` lays them out. CUDA tensors go through the Triton
    kernel (:mod:`._kernels`), which quantises only the rows it writes; the PyTorch formulation
    quantises every token first, then gathers.
    """
    if source.bf16:
        # A plain gather, already one device kernel with nothing to quantise: no Triton variant needed.
        return gather_rows(source.rows, row_token, 0), None
    if _kernels.enabled(source.rows.device):
        return _kernels.token_rows_to_fp8(source.rows, source.scales, source.use_ue8m0, row_token)
    if source.scales is None:
        x, sf = per_token_cast_to_fp8_unchecked(source.rows, source.use_ue8m0)
    else:
        x, sf = source.rows, source.scales
    return gather_rows(x, row_token, 0), mn_major(gather_rows(sf, row_token, 1.0))


def place_token_rows(source: TokenSource, inverse: torch.Tensor, groups: int, per_group: int,
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Triton kernels' scatter of token rows to the rows ``inverse`` (int32 [T, k], a row of the
    [G * R] buffer or -1) points at, every other row left unwritten: as
    :func:`_kernels.tokens_to_fp8_rows` for an FP8 buffer, or (bfloat16 [G, R, H] contiguous, None)
    for a ``bf16`` source (rows copied bit for bit)."""
    if source.bf16:
        return _kernels.tokens_to_rows(source.rows, inverse, groups, per_group), None
    return _kernels.tokens_to_fp8_rows(source.rows, source.scales, source.use_ue8m0, inverse, groups, per_group)


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
