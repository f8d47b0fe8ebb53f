"""Launch of the weight-gradient GEMM behind the public ops: operand and scale layouts, config, JIT build, call.

Serves ``fp8_gemm_nt`` with recipe (1, 1, 128) (FP32 ``d``, optional ``c``),
``k_grouped_fp8_gemm_tn_contiguous`` and ``k_grouped_bf16_gemm_tn_contiguous`` (the same kernel on BF16
operands). :func:`register` claims ``fp8_gemm_nt`` for that recipe alone
(dg_moe.ops.dispatch routes by recipe), so the op's other recipes stay with whichever family registered
the op's default, and the order families register in does not matter.

The kernel reads FP8 A and B K-major (FP8 wgmma takes no other layout) and their scales MN-major. The
K-grouped FP8 op's operands ``[sum_K, M]`` and ``[sum_K, N]`` are K-major when given as ``.mT`` views of
``[M, sum_K]`` and ``[N, sum_K]`` buffers, which go in as they are; row-major ones (M or N contiguous, the
natural layout of activations and gradients) are transposed into a new buffer first, a copy that costs
one read and one write of each operand. Scales that are not MN-major and 16-byte aligned are converted
likewise. BF16 operands are read MN-major (wgmma transposes 16-bit operands), so the natural row-major
ones go in as they are, and only other layouts are copied into that one.

No call reads a device value on the host: the K-grouped layout's sizes stay on the device (the kernel
reads them), and the configuration depends on tensor shapes alone, so a K-grouped call can be captured
in a CUDA graph and replayed with new group sizes (given operands in the layout the kernel reads; a copy
allocates, which capture also allows through torch's graph pool).

Arguments arrive validated by their op: nothing is checked again here.
"""

from __future__ import annotations

import ctypes

import torch

from ... import device as _device
from ...layout.scale_factors import get_tma_aligned_size, sf_in_kernel_layout
from ...ops.dispatch import register_kernel
from ...reference.common import RECIPE_1D1D
from ..bound_entries import Entry, bind_host_entry, cached_entry
from ..sm90_fp8_gemm.constants import BLOCK_K
from .cubin_entry import CubinEntry, Variant
from .heuristic import WgradConfig, print_config_if_asked
from .variants import FAMILY, WgradType, template_args
from .variants import config_for as variant_config

_ENTRY = "dg_moe_sm90_fp8_wgrad"
_U64, _U32, _PTR = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
_ARGTYPES = (_PTR, _U64, _PTR, _U32, _PTR, _U64, _PTR, _U32, _U32, _PTR, _PTR, _U32, _U32, _U32, _U64, _U32, _U32, _PTR)
_TMA_ALIGNMENT = 16

# (type, M, N, K per group, groups, SMs, BF16 operands) -> bound host entry; a warm call is one look-up here.
_entries: dict[tuple[WgradType, int, int, int, int, int, bool], Entry] = {}


def config_for(wgrad_type: WgradType, m: int, n: int, k_per_group: int, num_groups: int, num_sms: int,
               bf16: bool = False) -> WgradConfig:
    """The variant one call shape runs (the cost model's choice; a seam for tests that force one)."""
    return variant_config(wgrad_type, m, n, k_per_group, num_groups, num_sms, bf16)


def bind(wgrad_type: WgradType, config: WgradConfig, n: int, source_root: str | None = None) -> Entry:
    """The host entry of one variant (built or loaded from the cache): the nvcc library's, or under
    DG_MOE_JIT_BACKEND=nvrtc its Python twin on the cubin. ``source_root``: a kernel source tree searched
    before the package's (tools comparing kernel versions)."""
    return bind_host_entry(FAMILY, template_args(wgrad_type, config, n), _ENTRY, _ARGTYPES,
                           lambda cubin: CubinEntry(cubin, Variant(wgrad_type, config, n)), source_root=source_root)


def _entry(wgrad_type: WgradType, m: int, n: int, k_per_group: int, num_groups: int, num_sms: int,
           bf16: bool) -> Entry:
    return cached_entry(_entries, (wgrad_type, m, n, k_per_group, num_groups, num_sms, bf16), _bind_shape)


def _bind_shape(key: tuple[WgradType, int, int, int, int, int, bool]) -> Entry:
    wgrad_type, m, n, k_per_group, num_groups, _num_sms, bf16 = key
    config = config_for(*key)
    operands = "BF16" if bf16 else "FP8"
    print_config_if_asked(FAMILY, f"{operands} {wgrad_type.name} M={m} N={n} K/group={k_per_group} G={num_groups}",
                          config)
    return bind(wgrad_type, config, n)


def k_major(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` e4m3 or bfloat16 ``[K, MN]`` as (a tensor holding MN rows of K contiguous values, the row pitch
    in bytes): ``x`` itself when its rows are K-major with a 16-byte aligned base and pitch, else a
    transposed copy."""
    pitch_bytes = x.stride(1) * x.element_size()
    if x.stride(0) == 1 and x.stride(1) >= x.shape[0] and pitch_bytes % _TMA_ALIGNMENT == 0 \
            and x.data_ptr() % _TMA_ALIGNMENT == 0:
        return x, pitch_bytes
    copy = x.mT.contiguous()
    return copy, copy.stride(0) * copy.element_size()


def mn_major(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` bfloat16 ``[K, MN]`` as (a tensor holding K rows of MN contiguous values, the row pitch in
    bytes): ``x`` itself when its rows have stride 1 with a 16-byte aligned base and pitch, else a copy
    whose rows are padded to 16 bytes."""
    pitch_bytes = x.stride(0) * x.element_size()
    if (x.stride(1) == 1 or x.shape[1] == 1) and x.stride(0) >= x.shape[1] and pitch_bytes % _TMA_ALIGNMENT == 0 \
            and x.data_ptr() % _TMA_ALIGNMENT == 0:
        return x, pitch_bytes
    padded = get_tma_aligned_size(x.shape[1], x.element_size())
    copy = x.new_empty(x.shape[0], padded)[:, :x.shape[1]]
    copy.copy_(x)
    return copy, padded * x.element_size()


def _per_row_scales(sf: torch.Tensor, k_blocks: int) -> tuple[torch.Tensor, int]:
    """Per-row scales ``[MN, k_blocks]`` (float32 any strides, or packed UE8M0) as the kernel reads them:
    (float32 MN-major TMA-aligned tensor, its column stride in elements)."""
    converted = sf_in_kernel_layout(sf, True, k_blocks)
    return converted, get_tma_aligned_size(converted.shape[0], 4)


def _launch(wgrad_type: WgradType, a: tuple, b: tuple, d: torch.Tensor, c: torch.Tensor | None,
            layout: torch.Tensor | None, m: int, sum_k: int, num_groups: int) -> None:
    """a = (storage, row bytes, sfa, sfa stride), b likewise (BF16 storage: sfa and sfb None, strides 0);
    d/c float32 ``[G, M, N]`` or ``[M, N]``.

    The kernel adds its products into d (reductions, no load of C: docs/sm90-fp8-wgrad.md), so a ``c``
    that is not ``d`` itself is copied into ``d`` first, on the same stream."""
    device = d.device
    num_sms = _device.num_sms_for(device)
    n = d.shape[-1]
    bf16 = a[0].dtype == torch.bfloat16
    entry = _entry(wgrad_type, m, n, sum_k // num_groups, num_groups, num_sms, bf16)
    if c is not None and c.data_ptr() != d.data_ptr():
        d.copy_(c)
    d_group, d_row = (d.stride(0), d.stride(1)) if d.dim() == 3 else (0, d.stride(0))
    args = (a[0].data_ptr(), a[1], None if bf16 else a[2].data_ptr(), a[3], b[0].data_ptr(), b[1],
            None if bf16 else b[2].data_ptr(), b[3],
            int(c is not None), d.data_ptr(), None if layout is None else layout.data_ptr(),
            m, sum_k, num_groups, d_group, d_row, num_sms, _device.stream_handle(device))
    # A launch goes to the current device with that device's stream.
    if device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            entry(*args)
    else:
        entry(*args)


def fp8_gemm_nt_kernel(a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast) -> None:
    """``fp8_gemm_nt`` with recipe (1, 1, 128) on SM90: d float32 [M, N] = c + A[M, K] @ B[N, K]^T; a, b
    (e4m3 K-major contiguous, per-row scales [M or N, K/128]); ``c`` None (no accumulation), d itself
    (in place) or another float32 [M, N] with a contiguous last dim."""
    k = a[0].shape[1]
    a_data, a_pitch = k_major(a[0].mT)
    b_data, b_pitch = k_major(b[0].mT)
    sfa, sfa_stride = _per_row_scales(a[1], k // BLOCK_K)
    sfb, sfb_stride = _per_row_scales(b[1], k // BLOCK_K)
    _launch(WgradType.NORMAL, (a_data, a_pitch, sfa, sfa_stride), (b_data, b_pitch, sfb, sfb_stride), d, c, None,
            a[0].shape[0], k, 1)


def k_grouped_fp8_gemm_tn_contiguous_kernel(a, b, d, ks_cpu, grouped_layout, c, recipe, compiled_dims,
                                            use_psum_layout) -> None:
    """K-grouped weight gradient on SM90: d[g] float32 [M, N] = c[g] + A_g^T B_g over group g's K rows of
    a (e4m3 [sum_K, M], sfa [sum_K/128, M]) and b (e4m3 [sum_K, N], sfb [sum_K/128, N]). The group sizes
    come from ``grouped_layout`` on the device; ``ks_cpu`` is not read (only its length, G)."""
    sum_k, m = a[0].shape
    num_groups = d.shape[0]
    a_data, a_pitch = k_major(a[0])
    b_data, b_pitch = k_major(b[0])
    sfa, sfa_stride = _per_row_scales(a[1].mT, sum_k // BLOCK_K)
    sfb, sfb_stride = _per_row_scales(b[1].mT, sum_k // BLOCK_K)
    wgrad_type = WgradType.K_GROUPED_PSUM if use_psum_layout else WgradType.K_GROUPED
    _launch(wgrad_type, (a_data, a_pitch, sfa, sfa_stride), (b_data, b_pitch, sfb, sfb_stride), d, c,
            grouped_layout, m, sum_k, num_groups)


def k_grouped_bf16_gemm_tn_contiguous_kernel(a, b, d, ks_cpu, grouped_layout, c, compiled_dims,
                                             use_psum_layout) -> None:
    """K-grouped BF16 weight gradient on SM90: d[g] float32 [M, N] = c[g] + a_g^T b_g over group g's K rows of
    a (bf16 [sum_K, M]) and b (bf16 [sum_K, N]); group sizes from ``grouped_layout`` on the device, as the
    FP8 op's. Row-major a and b (M or N contiguous, rows 16-byte aligned) are read as they are."""
    sum_k, m = a.shape
    num_groups = d.shape[0]
    a_data, a_pitch = mn_major(a)
    b_data, b_pitch = mn_major(b)
    wgrad_type = WgradType.K_GROUPED_PSUM if use_psum_layout else WgradType.K_GROUPED
    _launch(wgrad_type, (a_data, a_pitch, None, 0), (b_data, b_pitch, None, 0), d, c, grouped_layout, m, sum_k,
            num_groups)


def register() -> None:
    """Route the weight-gradient calls to this kernel: ``fp8_gemm_nt`` with recipe (1, 1, 128),
    ``k_grouped_fp8_gemm_tn_contiguous`` (whose only recipe that is) and ``k_grouped_bf16_gemm_tn_contiguous``.
    No launch planner yet, so every call takes the full path (docs/sm90-fp8-wgrad.md, "Not done yet")."""
    register_kernel("fp8_gemm_nt", fp8_gemm_nt_kernel, recipe=RECIPE_1D1D)
    register_kernel("k_grouped_fp8_gemm_tn_contiguous", k_grouped_fp8_gemm_tn_contiguous_kernel)
    register_kernel("k_grouped_bf16_gemm_tn_contiguous", k_grouped_bf16_gemm_tn_contiguous_kernel)
