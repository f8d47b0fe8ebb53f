"""Launch of the SM90 FP8 GEMM behind the public ops: scale-factor layout, config choice, JIT build, call.

The JIT backend (``DG_MOE_JIT_BACKEND``) decides what a variant's entry is: the nvcc-built host entry of
``kernel.so`` (a KernelLibrary function), or under nvrtc a :class:`.cubin_entry.CubinEntry` on the
variant's CubinKernel. Both take the same arguments (:func:`kernel_args`). The backend is read when a
variant is first bound in a process; the bound entries are kept in ``_entries``.

The kernels take recipe (1, 128, 128), BF16 output, K-major contiguous A and B. They are registered as
the ops' default kernels (dg_moe.ops.dispatch), so a call of a recipe that no family registered a kernel
for reaches them too; such calls, and the other variants they do not cover yet (accumulating ``c``,
transposed layouts), raise KernelNotAvailableError on CUDA; their CPU reference exists.

Arguments arrive validated by their op, whose checks state the kernel's rules (contiguous a[0], b[0]
and d included): nothing is checked again here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from ... import checks
from ... import device as _device
from ...errors import KernelNotAvailableError
from ...layout.scale_factors import get_tma_aligned_size, sf_in_kernel_layout
from ...ops.dispatch import register_kernel
from ...reference.common import RECIPE_1D2D
from ..bound_entries import Entry, bind_host_entry, cached_entry
from .constants import GemmType
from .cubin_entry import CubinEntry
from .heuristic import GemmConfig, config_for, print_config_if_asked
from .host_constants import host_constants
from .variants import FAMILY, template_args

_ENTRY = "dg_moe_sm90_fp8_gemm"
_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p,
)


# (type, rows hint, N, K, groups, SMs) -> bound host entry; a warm call is one look-up here.
_entries: dict[tuple[GemmType, int, int, int, int, int], Entry] = {}


def bind(gemm_type: GemmType, config: GemmConfig, n: int, k: int, source_root: str | None = None) -> Entry:
    """The host entry of one variant (built or loaded from the cache), called with :func:`kernel_args`:
    the nvcc library's, or under DG_MOE_JIT_BACKEND=nvrtc its Python twin on the cubin.
    ``source_root``: a kernel source tree searched before the package's (A/B tools)."""
    return bind_host_entry(FAMILY, template_args(gemm_type, config, n, k), _ENTRY, _ARGTYPES,
                           lambda cubin: CubinEntry(cubin, host_constants(gemm_type, config, n, k)), source_root)


def _entry(gemm_type: GemmType, rows_hint: int, n: int, k: int, num_groups: int, num_sms: int) -> Entry:
    return cached_entry(_entries, (gemm_type, rows_hint, n, k, num_groups, num_sms), _bind_shape)


def _bind_shape(key: tuple[GemmType, int, int, int, int, int]) -> Entry:
    gemm_type, rows_hint, n, k, num_groups, _num_sms = key
    config = config_for(*key)
    print_config_if_asked(FAMILY, f"{gemm_type.name} rows={rows_hint} N={n} K={k} G={num_groups}", config)
    return bind(gemm_type, config, n, k)


def _require(op: str, condition: bool, what: str) -> None:
    if not condition:
        raise KernelNotAvailableError(
            f"{op}: the SM90 kernel does not support {what} yet; run on CPU tensors for the reference, "
            "or see the README for the supported variants"
        )


def kernel_operands(gemm_type: GemmType, a, b) -> tuple:
    """``(a, b)`` with their scales in the kernel's layout (float32 SFA MN-major and TMA-aligned, float32
    SFB contiguous), converted (a copy) only where they are not: a = (e4m3 [M, K] or [G, max_m, K], sfa),
    b = (e4m3 [N, K] or [G, N, K], sfb)."""
    k_blocks = a[0].shape[-1] // checks.BLOCK_K
    return (a[0], sf_in_kernel_layout(a[1], True, k_blocks)), (b[0], sf_in_kernel_layout(b[1], False, k_blocks))


def kernel_args(gemm_type: GemmType, a, b, d: torch.Tensor, layout: torch.Tensor | None, num_sms: int,
                stream: int) -> tuple:
    """The host entry's arguments for operands from :func:`kernel_operands` (the caller keeps them alive
    until the launch), d bf16, ``layout`` the grouped layout's int32 tensor or None."""
    rows = a[0].shape[-2]  # M, M_sum or max_m
    num_groups = 1 if gemm_type == GemmType.NORMAL else b[0].shape[0]
    return (
        a[0].data_ptr(), a[1].data_ptr(), b[0].data_ptr(), b[1].data_ptr(), d.data_ptr(),
        None if layout is None else layout.data_ptr(),
        rows, num_groups, get_tma_aligned_size(rows, 4), num_sms, stream,
    )


def bound_launch(entry: Callable[..., None], gemm_type: GemmType, a, b, d: torch.Tensor,
                 layout: torch.Tensor | None, num_sms: int) -> Callable[[], None]:
    """A no-argument launch of ``entry`` (from :func:`bind`) on operands from :func:`kernel_operands`, writing
    bf16 ``d``: for tools that time chosen variants. The stream is read at each call, since graph capture
    runs the call on a stream of its own."""

    def launch() -> None:
        entry(*kernel_args(gemm_type, a, b, d, layout, num_sms, _device.stream_handle(d.device)))

    return launch


def _launch(gemm_type: GemmType, a, b, d: torch.Tensor, layout: torch.Tensor | None, rows_hint: int) -> None:
    device = d.device
    num_sms = _device.num_sms_for(device)
    b_data = b[0]
    num_groups = 1 if gemm_type == GemmType.NORMAL else b_data.shape[0]
    entry = _entry(gemm_type, rows_hint, b_data.shape[-2], b_data.shape[-1], num_groups, num_sms)
    a, b = kernel_operands(gemm_type, a, b)
    args = kernel_args(gemm_type, a, b, d, layout, num_sms, _device.stream_handle(device))
    # A launch goes to the current device with that device's stream: tensors on another GPU of this
    # process (e.g. transformers' device_map="auto") are launched with their device made current.
    if device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            entry(*args)
    else:
        entry(*args)


# torch's raw current-device getter (torch.cuda.current_device() adds a lazy-init check, ~1 us);
# private, so looked up once with the public call as the fallback.
_current_device = getattr(torch._C, "_cuda_getDevice", torch.cuda.current_device)


def _plan(gemm_type: GemmType, a, b, d: torch.Tensor, layout: torch.Tensor | None, rows_hint: int):
    """A launch plan for later calls with this call's signature (dg_moe.ops._memo.plan), or None where
    the scales need converting (a copy per call). The plan launches the same entry with the same sizes
    on the new pointers and the current stream; it declines (returns False) when the tensors' device is
    not the current one or set_num_sms changed, and the op then takes the full path."""
    converted_a, converted_b = kernel_operands(gemm_type, a, b)
    if converted_a[1] is not a[1] or converted_b[1] is not b[1]:
        return None
    device = d.device
    num_sms = _device.num_sms_for(device)
    sms_setting = _device.num_sms_setting()
    num_groups = 1 if gemm_type == GemmType.NORMAL else b[0].shape[0]
    entry = _entry(gemm_type, rows_hint, b[0].shape[-2], b[0].shape[-1], num_groups, num_sms)
    rows = a[0].shape[-2]
    sfa_stride = get_tma_aligned_size(rows, 4)
    index = device.index if device.index is not None else _current_device()
    stream = _device.stream_handle

    def launch(a_data, sfa, b_data, sfb, d, layout) -> bool:
        if _current_device() != index or _device.num_sms_setting() != sms_setting:
            return False
        entry(a_data.data_ptr(), sfa.data_ptr(), b_data.data_ptr(), sfb.data_ptr(), d.data_ptr(),
              None if layout is None else layout.data_ptr(), rows, num_groups, sfa_stride, num_sms, stream(device))
        return True

    return launch


def fp8_gemm_nt_kernel(a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast) -> None:
    """``fp8_gemm_nt`` on SM90: D[M, N] bf16 = A[M, K] @ B[N, K]^T, recipe (1, 128, 128), no ``c``."""
    _require("fp8_gemm_nt", c is None, "accumulation into c")
    # The grouped ops accept recipe (1, 128, 128) alone; the dense one also takes (1, 1, 128).
    _require("fp8_gemm_nt", recipe == RECIPE_1D2D, f"recipe {recipe} (only (1, 128, 128))")
    _launch(GemmType.NORMAL, a, b, d, None, a[0].shape[0])


def _contiguous_form(a, b, use_psum_layout: bool, expected_m: int | None) -> tuple[GemmType, int]:
    """The layout type and the rows hint (the caller's, else the mean rows per group) of a contiguous call."""
    gemm_type = GemmType.CONTIGUOUS_PSUM if use_psum_layout else GemmType.CONTIGUOUS
    return gemm_type, expected_m or max(1, a[0].shape[0] // b[0].shape[0])


def m_grouped_fp8_gemm_nt_contiguous_kernel(a, b, d, grouped_layout, recipe, compiled_dims,
                                            disable_ue8m0_cast, use_psum_layout,
                                            expected_m_for_psum_layout=None) -> None:
    """Contiguous (prefill) M-grouped GEMM on SM90; padding rows of d are not written."""
    gemm_type, rows_hint = _contiguous_form(a, b, use_psum_layout, expected_m_for_psum_layout)
    _launch(gemm_type, a, b, d, grouped_layout, rows_hint)


def m_grouped_fp8_gemm_nt_masked_kernel(a, b, d, masked_m, expected_m, recipe, compiled_dims,
                                        disable_ue8m0_cast) -> None:
    """Masked (decode) M-grouped GEMM on SM90; rows at or past masked_m[g] are not written."""
    _launch(GemmType.MASKED, a, b, d, masked_m, expected_m)


def _plan_dense(a, b, d, c, recipe, compiled_dims, disable_ue8m0_cast):
    return _plan(GemmType.NORMAL, a, b, d, None, a[0].shape[0])


def _plan_contiguous(a, b, d, grouped_layout, recipe, compiled_dims, disable_ue8m0_cast, use_psum_layout,
                     expected_m_for_psum_layout=None):
    gemm_type, rows_hint = _contiguous_form(a, b, use_psum_layout, expected_m_for_psum_layout)
    return _plan(gemm_type, a, b, d, grouped_layout, rows_hint)


def _plan_masked(a, b, d, masked_m, expected_m, recipe, compiled_dims, disable_ue8m0_cast):
    return _plan(GemmType.MASKED, a, b, d, masked_m, expected_m)


def register() -> None:
    """Route the CUDA calls of the three FP8 ops this kernel covers to it, with their launch planners, as
    the ops' default: a family serving another recipe of an op registers its kernel for that recipe."""
    register_kernel("fp8_gemm_nt", fp8_gemm_nt_kernel, _plan_dense)
    register_kernel("m_grouped_fp8_gemm_nt_contiguous", m_grouped_fp8_gemm_nt_contiguous_kernel, _plan_contiguous)
    register_kernel("m_grouped_fp8_gemm_nt_masked", m_grouped_fp8_gemm_nt_masked_kernel, _plan_masked)
