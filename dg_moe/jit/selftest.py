"""JIT self-test, not a public op: ``y = x * alpha`` through the whole JIT + TMA + launch path on SM90.

The smallest kernel family (dg_moe/csrc/kernels/sm90_scale.cuh) checks a machine's toolchain, cache,
loader, tensor maps and launch without the GEMM's complexity (tests/test_scale_gpu.py,
``python -m dg_moe.jit.loadtime``). CPU tensors compute ``x * alpha`` in torch; CUDA tensors run
the kernel on the current stream, after the same argument checks.
"""

from __future__ import annotations

import ctypes
import functools
import numbers
from collections.abc import Callable

import torch

from ..device import require_sm90
from .runtime import build

_OP = "scale"
_ENTRY = "dg_moe_sm90_scale"
# int dg_moe_sm90_scale(const void* x, void* y, float alpha, int64_t m, int64_t n, void* stream)
_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
)
_CPP_TYPES = {torch.bfloat16: "__nv_bfloat16", torch.float32: "float"}
_ALIGN = 16  # bytes: TMA base addresses and row strides


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{_OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _CPP_TYPES:
        raise TypeError(f"{_OP}: {name} must be torch.bfloat16 or torch.float32, got {t.dtype}; use .to()")
    if t.dim() != 2:
        raise ValueError(f"{_OP}: {name} must be 2-D [M, N], got shape {tuple(t.shape)}; reshape it to 2-D")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{_OP}: {name} must be on the CPU or a CUDA device, got {t.device}")
    if t.numel() > 0:
        if not t.is_contiguous():
            raise ValueError(
                f"{_OP}: {name} must be row-major contiguous, got strides {t.stride()} "
                f"for shape {tuple(t.shape)}; pass {name}.contiguous()"
            )
        row_bytes = t.size(1) * t.element_size()
        if row_bytes % _ALIGN:
            per = _ALIGN // t.element_size()
            raise ValueError(
                f"{_OP}: rows of {name} must be a multiple of {_ALIGN} bytes (TMA): "
                f"N={t.size(1)} {t.dtype} elements is {row_bytes} bytes; pad N to a multiple of {per}"
            )
        if t.data_ptr() % _ALIGN:
            raise ValueError(
                f"{_OP}: {name}.data_ptr() must be {_ALIGN}-byte aligned (TMA), got an address "
                f"{t.data_ptr() % _ALIGN} bytes past a boundary (a view at an odd offset?); "
                f"pass {name}.clone()"
            )
    return t


def _check_out(x: torch.Tensor, out: object) -> torch.Tensor:
    out = _check_tensor("out", out)
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"{_OP}: out must match x: got {tuple(out.shape)} {out.dtype} on {out.device}, "
            f"x is {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if out.numel() > 0 and out.data_ptr() != x.data_ptr():
        x_end = x.data_ptr() + x.numel() * x.element_size()
        out_end = out.data_ptr() + out.numel() * out.element_size()
        if out.data_ptr() < x_end and x.data_ptr() < out_end:
            raise ValueError(f"{_OP}: out partially overlaps x; pass out=x (in place) or a separate tensor")
    return out


@functools.cache
def _kernel(dtype: torch.dtype) -> Callable[..., None]:
    # Rows of 256 bytes per tile, 4 stages of 8 KB in flight per CTA.
    block_n = 256 // dtype.itemsize
    lib = build("sm90_scale", {"DTYPE": _CPP_TYPES[dtype], "BLOCK_M": 32, "BLOCK_N": block_n, "STAGES": 4,
                               "THREADS": 128})
    return lib.function(_ENTRY, _ARGTYPES)


def scale(x: torch.Tensor, alpha: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``x * alpha`` for a 2-D row-major bf16 or fp32 tensor, written into ``out`` if given.

    The product is computed in fp32 and rounded once to the dtype of ``x``, as torch does.
    Rows must be a multiple of 16 bytes and the tensors 16-byte aligned (TMA); ``out`` may be ``x``.
    """
    x = _check_tensor("x", x)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{_OP}: alpha must be a real number, got {type(alpha).__name__}")
    out = torch.empty_like(x) if out is None else _check_out(x, out)
    if x.numel() == 0:
        return out
    if x.device.type == "cpu":
        return torch.mul(x, alpha, out=out)
    require_sm90(x.device, _OP)
    fn = _kernel(x.dtype)
    m, n = x.shape
    if x.device.index is not None and x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            fn(x.data_ptr(), out.data_ptr(), float(alpha), m, n, torch.cuda.current_stream().cuda_stream)
    else:
        fn(x.data_ptr(), out.data_ptr(), float(alpha), m, n, torch.cuda.current_stream().cuda_stream)
    return out
