"""Scale-factor layouts the SM90 kernels read, and conversions into them.

The kernels load SFA with TMA along M, so SFA must be MN-major (``stride = (1, aligned_mn)``)
with every column starting on a 16-byte boundary: TMA requires 16-byte aligned global strides.
SFB (one scale per 128x128 block) is read by the math warps directly and stays K-major.
"""

from __future__ import annotations

import torch

from .math import align, ceil_div, pack_ue8m0_to_int, unpack_ue8m0_from_int

TMA_ALIGNMENT_BYTES = 16


def get_tma_aligned_size(mn: int, element_size: int) -> int:
    """Round ``mn`` elements of ``element_size`` bytes up to a 16-byte multiple (in elements)."""
    if element_size <= 0 or TMA_ALIGNMENT_BYTES % element_size != 0:
        raise ValueError(f"get_tma_aligned_size: element_size must divide 16, got {element_size}")
    return align(mn, TMA_ALIGNMENT_BYTES // element_size)


def _as_batched(sf: torch.Tensor, fn: str) -> tuple[torch.Tensor, bool]:
    if sf.dim() not in (2, 3):
        raise ValueError(f"{fn}: sf must be [MN, K_blocks] or [G, MN, K_blocks], got shape {tuple(sf.shape)}")
    return (sf.unsqueeze(0), True) if sf.dim() == 2 else (sf, False)


def is_mn_major_tma_aligned(sf: torch.Tensor) -> bool:
    """Whether ``sf`` ([MN, Kb] or [G, MN, Kb]) is already MN-major and TMA-aligned (no copy needed)."""
    return sf.dim() in (2, 3) and _is_mn_major_aligned(sf)


def _is_mn_major_aligned(sf: torch.Tensor) -> bool:
    # sf: [MN, Kb] or [G, MN, Kb]; read in place, no batched view (this runs on every kernel launch).
    mn, k = sf.shape[-2], sf.shape[-1]
    aligned_mn = get_tma_aligned_size(mn, sf.element_size())
    return (
        sf.stride(-2) == 1
        and (k <= 1 or sf.stride(-1) == aligned_mn)
        and (sf.dim() == 2 or sf.shape[0] <= 1 or sf.stride(0) == aligned_mn * k)
        and sf.storage_offset() % (TMA_ALIGNMENT_BYTES // sf.element_size()) == 0
    )


def empty_mn_major(g: int, mn: int, k: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised ``dtype`` [g, mn, k] on ``like``'s device in the MN-major, TMA-aligned layout the SM90
    GEMMs read: strides ``(k * A, 1, A)``, A = mn aligned to 16 bytes."""
    # dtype.itemsize, not a throwaway CPU tensor's element_size(): that cost ~1.6 us a call (CPU timing).
    aligned_mn = get_tma_aligned_size(mn, dtype.itemsize)
    return torch.empty((g, k, aligned_mn), dtype=dtype, device=like.device).transpose(1, 2)[:, :mn, :]


def get_mn_major_tma_aligned_tensor(sf: torch.Tensor) -> torch.Tensor:
    """Same values as ``sf`` in the MN-major, TMA-aligned layout the SM90 kernels read.

    sf: float32 (or int32) [MN, Kb] or [G, MN, Kb], any strides. Returns a view with strides
    (1, A) or (A*Kb, 1, A), A = get_tma_aligned_size(MN, 4); ``sf`` itself when already so laid out.
    """
    if sf.dim() not in (2, 3):
        raise ValueError(
            f"get_mn_major_tma_aligned_tensor: sf must be [MN, K_blocks] or [G, MN, K_blocks], got shape "
            f"{tuple(sf.shape)}"
        )
    if sf.dtype not in (torch.float32, torch.int32):
        raise TypeError(f"get_mn_major_tma_aligned_tensor: sf must be float32 or int32, got {sf.dtype}")
    return _mn_major(sf)


def _mn_major(sf: torch.Tensor) -> torch.Tensor:
    # sf ([MN, Kb] or [G, MN, Kb]) itself when already MN-major and aligned, else a copy.
    if _is_mn_major_aligned(sf):
        return sf
    batched, squeeze = _as_batched(sf, "get_mn_major_tma_aligned_tensor")
    g, mn, k = batched.shape
    out = empty_mn_major(g, mn, k, batched, batched.dtype)
    out.copy_(batched)
    return out.squeeze(0) if squeeze else out


def sf_in_kernel_layout(sf: torch.Tensor, per_row: bool, k_blocks: int) -> torch.Tensor:
    """Scale factors in the layout the SM90 kernels read, with no check: the caller has validated them.

    sf: float32 [(G,) MN', k_blocks] or packed UE8M0 int32 [(G,) MN', ceil(k_blocks/4)], any strides.
    Per-row scales (``per_row``, SFA) come back float32 MN-major and TMA-aligned, per-block ones (SFB)
    float32 K-major contiguous; ``sf`` itself when it is already so laid out.
    """
    if sf.dtype == torch.int32:
        sf = unpack_ue8m0_from_int(sf)[..., :k_blocks]
    if not per_row:
        return sf.contiguous()
    return _mn_major(sf)


def get_mn_major_tma_aligned_packed_ue8m0_tensor(sf: torch.Tensor) -> torch.Tensor:
    """Pack power-of-two float32 scales into UE8M0 int32, four K-blocks per int, MN-major, TMA-aligned.

    sf: float32 [MN, Kb] or [G, MN, Kb] whose values are exact powers of two (ceil_to_ue8m0) ->
    int32 [MN, ceil(Kb/4)] or [G, MN, ceil(Kb/4)] with the strides of get_mn_major_tma_aligned_tensor.
    Missing K-blocks past Kb are padded with 1.0 (exponent byte 127). The powers-of-two check reads the
    values (:func:`pack_ue8m0_to_int`), so on a GPU it synchronises with the host: convert once, at load time.
    """
    batched, squeeze = _as_batched(sf, "get_mn_major_tma_aligned_packed_ue8m0_tensor")
    if batched.dtype != torch.float32:
        raise TypeError(f"get_mn_major_tma_aligned_packed_ue8m0_tensor: sf must be float32, got {sf.dtype}")
    g, mn, k = batched.shape
    padded = batched.new_ones((g, mn, align(k, 4)))
    padded[:, :, :k] = batched
    packed = pack_ue8m0_to_int(padded)
    out = empty_mn_major(g, mn, packed.size(2), batched, torch.int32)
    out.copy_(packed)
    return out.squeeze(0) if squeeze else out


def _expected_sf_shape(mn: int, k: int, gran_mn: int, gran_k: int, num_groups: int | None) -> tuple:
    shape = (ceil_div(mn, gran_mn), ceil_div(k, gran_k))
    return shape if num_groups is None else (num_groups, *shape)


def transform_sf_into_required_layout(
    sf: torch.Tensor,
    mn: int,
    k: int,
    recipe: tuple[int, int, int] | tuple[int, int],
    num_groups: int | None = None,
    is_sfa: bool | None = None,
    disable_ue8m0_cast: bool = False,
) -> torch.Tensor:
    """Convert one operand's scale factors into the layout the SM90 kernels read.

    sf: float32 [(G,) ceil(MN/gran_mn), ceil(K/gran_k)] in any strides, or packed UE8M0 int32
    [(G,) ceil(MN/gran_mn), ceil(ceil(K/gran_k)/4)]. ``recipe`` is (gran_m, gran_n, gran_k) with
    ``is_sfa`` saying which operand this is, or (gran_mn, gran_k) for this operand alone.
    Per-row scales (gran_mn == 1) come back float32 MN-major and TMA-aligned; per-block scales
    (gran_mn == 128) come back float32 K-major contiguous. UE8M0 input is expanded to float32 exactly.
    ``disable_ue8m0_cast`` exists for DeepGEMM compatibility: SM90 never casts FP32 scales to UE8M0.
    """
    del disable_ue8m0_cast  # SM90 kernels take FP32 scales; there is no UE8M0 cast to disable.
    fn = "transform_sf_into_required_layout"
    if len(recipe) == 3:
        if is_sfa is None:
            raise ValueError(f"{fn}: a 3-element recipe needs is_sfa=True (SFA) or False (SFB)")
        gran_mn, gran_k = (recipe[0] if is_sfa else recipe[1]), recipe[2]
    elif len(recipe) == 2:
        if is_sfa is not None:
            raise ValueError(f"{fn}: is_sfa must be None with a 2-element (gran_mn, gran_k) recipe")
        gran_mn, gran_k = recipe
    else:
        raise ValueError(f"{fn}: recipe must have 2 or 3 elements, got {recipe!r}")
    if gran_k != 128 or gran_mn not in (1, 128):
        raise ValueError(
            f"{fn}: SM90 supports granularity (1, 128) and (128, 128) along (MN, K), "
            f"got ({gran_mn}, {gran_k})"
        )
    expected = _expected_sf_shape(mn, k, gran_mn, gran_k, num_groups)
    if sf.dtype == torch.int32:
        packed_expected = (*expected[:-1], ceil_div(expected[-1], 4))
        if tuple(sf.shape) != packed_expected:
            raise ValueError(
                f"{fn}: packed UE8M0 sf has shape {tuple(sf.shape)}, expected {packed_expected} "
                f"for MN={mn}, K={k}, granularity ({gran_mn}, {gran_k})"
            )
    elif sf.dtype != torch.float32:
        raise TypeError(f"{fn}: sf must be float32 or packed UE8M0 int32, got {sf.dtype}")
    elif tuple(sf.shape) != expected:
        raise ValueError(
            f"{fn}: sf has shape {tuple(sf.shape)}, expected {expected} "
            f"for MN={mn}, K={k}, granularity ({gran_mn}, {gran_k})"
        )
    return sf_in_kernel_layout(sf, gran_mn == 1, expected[-1])
