"""Launch of the SM90 BF16 GEMM behind the public ops: operand layout, config choice, JIT build, call.

The JIT backend (``DG_MOE_JIT_BACKEND``) decides what a variant's entry is: the nvcc-built host entry of
``kernel.so`` (a KernelLibrary function), or under nvrtc a :class:`.cubin_entry.CubinEntry` on the
variant's CubinKernel. Both take the same arguments (:func:`kernel_args`).

The kernel reads A and B each K-major or MN-major (compile-time variants: :class:`~.constants.Majors`)
and writes D, bfloat16 or float32 (:class:`~.constants.Epilogue`), each through TMA. Every op runs as
the ``nt`` form on views: ``nn`` passes b.T, ``tn`` a.T and b.T, ``tt`` a.T, and the grouped ``nn`` op
b.transpose(1, 2); an operand whose K dim has stride 1 is read K-major, one whose M or N dim has stride
1 MN-major (so an ``nt`` call on transposed views runs too). ``bf16_gemm_*`` may also accumulate:
d = c + a @ b.T, c of d's dtype and shape, read through TMA into the epilogue's shared-memory tile and
added in FP32 before the one rounding to d's dtype; c may be d itself (in place). The grouped ops take no
c (their signatures have none). Every stored matrix must be rows with stride 1, rows 16 bytes apart
times a whole number (8 bfloat16 or 4 float32 elements) and back to back across a leading group dim, on
a 16-byte aligned base; a grouped GEMM's A and a masked GEMM's B must be K-major. What the kernel does
not cover raises KernelNotAvailableError on CUDA, naming the rule, and runs on CPU tensors through the
reference.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from ... import device as _device
from ...errors import KernelNotAvailableError
from ...ops.dispatch import register_kernel
from ..bound_entries import Entry, bind_host_entry, cached_entry
from ..sm90_fp8_gemm.heuristic import GemmConfig, print_config_if_asked
from .constants import BF16_D, K_MAJOR, Epilogue, GemmType, Majors
from .cubin_entry import CubinEntry
from .heuristic import config_for
from .host_constants import host_constants
from .variants import FAMILY, template_args

_ENTRY = "dg_moe_sm90_bf16_gemm"
_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
    ctypes.c_uint32, ctypes.c_void_p,
)
_ALIGN_BYTES = 16  # TMA's rule for row strides and bases, and the epilogue's store width

# (type, rows hint, N, K, groups, SMs, epilogue, majors) -> bound host entry; a warm call is one look-up here.
_EntryKey = tuple[GemmType, int, int, int, int, int, Epilogue, Majors]
_entries: dict[_EntryKey, Entry] = {}


def bind(gemm_type: GemmType, config: GemmConfig, n: int, k: int, epilogue: Epilogue = BF16_D,
         source_root: str | None = None, majors: Majors = K_MAJOR) -> Entry:
    """The host entry of one variant (built or loaded from the cache), called with :func:`kernel_args`:
    the nvcc library's, or under DG_MOE_JIT_BACKEND=nvrtc its Python twin on the cubin.
    ``source_root``: a kernel source tree searched before the package's (A/B tools)."""
    return bind_host_entry(FAMILY, template_args(gemm_type, config, n, k, epilogue, majors), _ENTRY, _ARGTYPES,
                           lambda cubin: CubinEntry(cubin, host_constants(gemm_type, config, n, k, epilogue),
                                                    epilogue, majors),
                           source_root)


def _entry(gemm_type: GemmType, rows_hint: int, n: int, k: int, num_groups: int, num_sms: int,
           epilogue: Epilogue, majors: Majors) -> Entry:
    return cached_entry(_entries, (gemm_type, rows_hint, n, k, num_groups, num_sms, epilogue, majors), _bind_shape)


def _bind_shape(key: _EntryKey) -> Entry:
    gemm_type, rows_hint, n, k, num_groups, _num_sms, epilogue, majors = key
    config = config_for(*key)
    print_config_if_asked(FAMILY, f"{gemm_type.name} rows={rows_hint} N={n} K={k} G={num_groups} {epilogue} "
                                  f"{majors}", config)
    return bind(gemm_type, config, n, k, epilogue, majors=majors)


def _unavailable(op: str, what: str) -> KernelNotAvailableError:
    return KernelNotAvailableError(
        f"{op}: the SM90 BF16 kernel does not support {what}; run on CPU tensors for the reference"
    )


def row_stride(t: torch.Tensor) -> int | None:
    """Elements between consecutive rows of ``t`` ([rows, C] or [G, rows, C]) read as one 2-D matrix of
    C-element rows, every group's rows after the previous group's; None where its strides are not that."""
    inner = t.shape[-1]
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        return None
    stride = t.stride(-2) if t.shape[-2] > 1 else inner
    if stride < inner:
        return None
    if t.dim() == 3 and t.shape[0] > 1 and t.stride(0) != t.shape[1] * stride:
        return None
    return stride


def kernel_rows(op: str, name: str, t: torch.Tensor, mn_rows: str | None = None,
                stride: int | None = None) -> int:
    """``t``'s row stride in elements (:func:`row_stride`, or ``stride`` when the caller has it), or
    KernelNotAvailableError naming the rule: rows and their stride a whole number of 16 bytes (8 bfloat16
    or 4 float32 elements), base 16-byte aligned. ``mn_rows``: ``t`` is a stored MN-major operand whose
    rows run along this dim (M or N); its extent is then free (TMA clips it; K-major rows and D's must be
    whole 16-byte units)."""
    if stride is None:
        stride = row_stride(t)
    if stride is None:
        raise _unavailable(op, f"{name} with strides {tuple(t.stride())} for shape {tuple(t.shape)}: it reads "
                               f"rows with stride 1 along the last dim, back to back across groups (pass "
                               f"{name}.contiguous())")
    align = _ALIGN_BYTES // t.element_size()
    if stride % align != 0 or (mn_rows is None and t.shape[-1] % align != 0):
        dim = mn_rows or ("K" if name in ("a", "b") else "N")
        raise _unavailable(op, f"{name} ({t.dtype}) rows of {t.shape[-1]} elements {stride} apart: TMA needs "
                               f"{'the stride' if mn_rows else 'both'} a multiple of {align} (16 bytes); pad "
                               f"{dim} to a multiple of {align}")
    if t.data_ptr() % _ALIGN_BYTES != 0:
        raise _unavailable(op, f"{name} at an address not 16-byte aligned (a view starting mid-row); pass a copy")
    return stride


def operand_rows(op: str, name: str, t: torch.Tensor, mn: str) -> tuple[bool, int]:
    """How the kernel reads operand ``t``, given in the ``nt`` form ([rows, K] or [G, rows, K]; ``mn`` names
    the rows: M or N): (MN-major, row stride of the stored matrix in elements). K-major where K has stride
    1 (:func:`kernel_rows` of ``t``), else MN-major where the rows have, the stored matrix being ``t``'s
    transpose ([K, rows] or [G, K, rows]); KernelNotAvailableError naming the rule where neither reads."""
    stride = row_stride(t)
    if stride is None:
        stored = t.transpose(-1, -2)
        stored_stride = row_stride(stored)
        if stored_stride is not None:
            return True, kernel_rows(op, name, stored, mn, stored_stride)
    return False, kernel_rows(op, name, t, stride=stride)


def epilogue_for(d: torch.Tensor, c: torch.Tensor | None) -> Epilogue:
    """The variant's epilogue for d (bfloat16 or float32, as the ops admit) and c (None, or d's dtype
    and shape as the op checked; d itself for in place)."""
    return Epilogue(d_float=d.dtype == torch.float32, accumulate=c is not None)


def kernel_args(gemm_type: GemmType, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None,
                layout: torch.Tensor | None, strides: tuple[int, int, int, int], num_sms: int, stream: int) -> tuple:
    """The host entry's arguments: a bf16 [M, K] or [G, max_m, K], b bf16 [N, K] or [G, N, K], d bf16 or
    float32 [M, N] or [G, max_m, N], c None or d's dtype [M, N] (Normal only; may be d), ``layout`` the
    grouped layout's int32 tensor or None, ``strides`` the row strides of a, b, d and c in elements
    (:func:`kernel_rows`; 0 for no c)."""
    rows = a.shape[-2]  # M, M_sum or max_m
    num_groups = 1 if gemm_type == GemmType.NORMAL else b.shape[0]
    return (
        a.data_ptr(), b.data_ptr(), d.data_ptr(), None if c is None else c.data_ptr(),
        None if layout is None else layout.data_ptr(), rows, num_groups, *strides, num_sms, stream,
    )


def bound_launch(entry: Entry, gemm_type: GemmType, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor,
                 layout: torch.Tensor | None, num_sms: int) -> Callable[[], None]:
    """A no-argument launch of ``entry`` (from :func:`bind`, BF16_D or a float32 D without c) on the
    operands :func:`kernel_args` takes, for tools that time chosen variants; KernelNotAvailableError for
    operands the kernel cannot read. The stream is read at each call: graph capture runs the call on a
    stream of its own, and a launch on the stream of bind time would not be captured."""
    op = "bound_launch"
    strides = (kernel_rows(op, "a", a), kernel_rows(op, "b", b), kernel_rows(op, "d", d), 0)

    def launch() -> None:
        entry(*kernel_args(gemm_type, a, b, d, None, layout, strides, num_sms, _device.stream_handle(d.device)))

    return launch


def _launch(op: str, gemm_type: GemmType, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor,
            layout: torch.Tensor | None, rows_hint: int, c: torch.Tensor | None = None) -> None:
    """``op`` in its ``nt`` form: a [M, K] or [G, max_m, K], b [N, K] or [G, N, K], either possibly a view
    of a transposed stored matrix (:func:`operand_rows`)."""
    a_mn, a_rows = operand_rows(op, "a", a, "M")
    b_mn, b_rows = operand_rows(op, "b", b, "N")
    if a_mn and gemm_type != GemmType.NORMAL:
        raise _unavailable(op, f"a stored [K, M] (strides {tuple(a.stride())}) in a grouped GEMM: the grouped "
                               f"kernels read a's rows K-major (pass a.contiguous())")
    if b_mn and gemm_type == GemmType.MASKED:
        raise _unavailable(op, f"b stored [G, K, N] (strides {tuple(b.stride())}) in a masked GEMM: it reads b "
                               f"K-major (pass b.contiguous())")
    strides = (a_rows, b_rows, kernel_rows(op, "d", d), 0 if c is None else kernel_rows(op, "c", c))
    device = d.device
    num_sms = _device.num_sms_for(device)
    num_groups = 1 if gemm_type == GemmType.NORMAL else b.shape[0]
    entry = _entry(gemm_type, rows_hint, b.shape[-2], b.shape[-1], num_groups, num_sms, epilogue_for(d, c),
                   Majors(a_mn, b_mn))
    args = kernel_args(gemm_type, a, b, d, c, layout, strides, num_sms, _device.stream_handle(device))
    # A launch goes to the current device with that device's stream: tensors on another GPU of this
    # process are launched with their device made current.
    if device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            entry(*args)
    else:
        entry(*args)


def bf16_gemm_nt_kernel(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None,
                        compiled_dims: str) -> None:
    """``bf16_gemm_nt`` on SM90: d [M, N] = c + a bf16 [M, K] @ b bf16 [N, K]^T, d bfloat16 or float32,
    ``c`` None or d's dtype [M, N] (d itself: in place)."""
    _launch("bf16_gemm_nt", GemmType.NORMAL, a, b, d, None, a.shape[0], c)


def bf16_gemm_nn_kernel(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None,
                        compiled_dims: str) -> None:
    """``bf16_gemm_nn`` on SM90: d [M, N] = c + a bf16 [M, K] @ b bf16 [K, N] (b read MN-major)."""
    _launch("bf16_gemm_nn", GemmType.NORMAL, a, b.T, d, None, a.shape[0], c)


def bf16_gemm_tn_kernel(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None,
                        compiled_dims: str) -> None:
    """``bf16_gemm_tn`` on SM90: d [M, N] = c + a bf16 [K, M]^T @ b bf16 [K, N] (both read MN-major)."""
    _launch("bf16_gemm_tn", GemmType.NORMAL, a.T, b.T, d, None, a.shape[1], c)


def bf16_gemm_tt_kernel(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None,
                        compiled_dims: str) -> None:
    """``bf16_gemm_tt`` on SM90: d [M, N] = c + a bf16 [K, M]^T @ b bf16 [N, K]^T (a read MN-major)."""
    _launch("bf16_gemm_tt", GemmType.NORMAL, a.T, b, d, None, a.shape[1], c)


def m_grouped_bf16_gemm_nt_contiguous_kernel(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor,
                                             grouped_layout: torch.Tensor, compiled_dims: str,
                                             use_psum_layout: bool, expected_m_for_psum_layout: int | None = None,
                                             ) -> None:
    """Contiguous (prefill) M-grouped GEMM on SM90: a bf16 [M_sum, K], b bf16 [G, N, K], d bf16 or float32
    [M_sum, N]; padding rows of d are not written. Rows hint: the caller's, else the mean rows per group."""
    gemm_type = GemmType.CONTIGUOUS_PSUM if use_psum_layout else GemmType.CONTIGUOUS
    rows_hint = expected_m_for_psum_layout or max(1, a.shape[0] // b.shape[0])
    _launch("m_grouped_bf16_gemm_nt_contiguous", gemm_type, a, b, d, grouped_layout, rows_hint)


def m_grouped_bf16_gemm_nn_contiguous_kernel(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor,
                                             grouped_layout: torch.Tensor, compiled_dims: str,
                                             use_psum_layout: bool, expected_m_for_psum_layout: int | None = None,
                                             ) -> None:
    """As :func:`m_grouped_bf16_gemm_nt_contiguous_kernel` with b bf16 [G, K, N] (read MN-major, each
    group's matrix clipped at its own K rows)."""
    gemm_type = GemmType.CONTIGUOUS_PSUM if use_psum_layout else GemmType.CONTIGUOUS
    rows_hint = expected_m_for_psum_layout or max(1, a.shape[0] // b.shape[0])
    _launch("m_grouped_bf16_gemm_nn_contiguous", gemm_type, a, b.transpose(1, 2), d, grouped_layout, rows_hint)


def m_grouped_bf16_gemm_nt_masked_kernel(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor,
                                         masked_m: torch.Tensor, expected_m: int, compiled_dims: str) -> None:
    """Masked (decode) M-grouped GEMM on SM90: a bf16 [G, max_m, K], b bf16 [G, N, K], d bf16 or float32
    [G, max_m, N]; rows at or past masked_m[g] are not written. Allocates nothing and reads no device
    value (CUDA-graph safe)."""
    _launch("m_grouped_bf16_gemm_nt_masked", GemmType.MASKED, a, b, d, masked_m, expected_m)


def register() -> None:
    """Route the CUDA calls of the BF16 M-grouped and dense ops this kernel covers to it, as the ops'
    default kernels (no recipe: the BF16 ops have none and call run_op without one, dg_moe.ops.dispatch)."""
    register_kernel("bf16_gemm_nt", bf16_gemm_nt_kernel)
    register_kernel("bf16_gemm_nn", bf16_gemm_nn_kernel)
    register_kernel("bf16_gemm_tn", bf16_gemm_tn_kernel)
    register_kernel("bf16_gemm_tt", bf16_gemm_tt_kernel)
    register_kernel("m_grouped_bf16_gemm_nt_contiguous", m_grouped_bf16_gemm_nt_contiguous_kernel)
    register_kernel("m_grouped_bf16_gemm_nn_contiguous", m_grouped_bf16_gemm_nn_contiguous_kernel)
    register_kernel("m_grouped_bf16_gemm_nt_masked", m_grouped_bf16_gemm_nt_masked_kernel)
