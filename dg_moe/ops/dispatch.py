"""Device dispatch shared by every op: CPU (and other non-CUDA devices) run the reference, CUDA
runs the SM90 kernel registered for the op, ``meta`` tensors (shape propagation) do nothing.

Kernels plug in with :func:`register_kernel`; a kernel takes exactly the validated arguments of
its public op (the same call the reference receives) and writes into ``d``. A kernel may also give a
planner, which turns such a call into a launch plan for every later call with the same signature
(``dg_moe.ops._memo.plan``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import device as _device
from ..errors import KernelNotAvailableError
from . import _memo

KernelFn = Callable[..., None]
PlannerFn = Callable[..., Callable[..., bool] | None]

_KERNELS: dict[str, KernelFn] = {}
_PLANNERS: dict[str, PlannerFn] = {}


def register_kernel(op: str, kernel: KernelFn, planner: PlannerFn | None = None) -> None:
    """Route CUDA calls of the public op named ``op`` (e.g. ``"fp8_gemm_nt"``) to ``kernel``.

    ``planner``, given the same arguments after the kernel ran, returns a launch plan for later calls
    with the same signature, or None where there is none (e.g. scales that need converting per call).
    """
    _KERNELS[op] = kernel
    if planner is None:
        _PLANNERS.pop(op, None)
    else:
        _PLANNERS[op] = planner


def unregister_kernel(op: str) -> None:
    """Forget the kernel of ``op`` (CUDA calls raise KernelNotAvailableError again)."""
    _KERNELS.pop(op, None)
    _PLANNERS.pop(op, None)


def registered_kernel(op: str) -> KernelFn | None:
    """The kernel registered for ``op``, or None."""
    return _KERNELS.get(op)


def no_products(d: torch.Tensor, c: torch.Tensor | None) -> Callable[[], None]:
    """What an op with K = 0 must do: ``d = c``, or zeros without ``c`` (no host sync)."""

    def fill() -> None:
        if c is None:
            d.zero_()
        elif c.data_ptr() != d.data_ptr():
            d.copy_(c)

    return fill


def run_op(op: str, device: torch.device, reference: KernelFn, *args, empty: bool = False,
           trivial: Callable[[], None] | None = None, plan_key: tuple | None = None, **kwargs) -> None:
    """Run ``op`` on ``device``: the reference off CUDA, else the architecture check then the kernel.

    On CUDA, once the architecture is known to be supported: ``empty`` (nothing to write, e.g.
    M = 0) returns at once and ``trivial`` (e.g. :func:`no_products` when K = 0) runs instead of the
    kernel, so kernels never see those degenerate shapes. ``plan_key``: the call's validated
    signature, under which the kernel's planner (if any) files a launch plan once the kernel ran.
    """
    if device.type == "meta":
        return  # shapes only, nothing to write: the op's fake implementation
    if device.type != "cuda":
        reference(*args, **kwargs)
        return
    _device.require_sm90(device, op)
    if empty:
        return
    if trivial is not None:
        trivial()
        return
    kernel = _KERNELS.get(op)
    if kernel is None:
        raise KernelNotAvailableError(
            f"{op}: the SM90 kernel is not available yet in this version of dg_moe; "
            "run on CPU tensors for the reference implementation"
        )
    kernel(*args, **kwargs)
    if plan_key is not None and _memo.plan(plan_key) is None:
        planner = _PLANNERS.get(op)
        if planner is not None:
            _memo.remember_plan(plan_key, planner(*args, **kwargs))
