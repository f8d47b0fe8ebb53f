"""Device dispatch shared by every op: CPU (and other non-CUDA devices) run the reference, CUDA
runs the SM90 kernel registered for the op, ``meta`` tensors (shape propagation) do nothing.

Kernels plug in with :func:`register_kernel`; a kernel takes exactly the validated arguments of
its public op (the same call the reference receives) and writes into ``d``. A kernel may also give a
planner, which turns such a call into a launch plan for every later call with the same signature
(``dg_moe.ops._memo.plan``).

An op may have one kernel per recipe besides its default: ``fp8_gemm_nt`` runs (1, 128, 128) on the
inference family (the default) and (1, 1, 128) on the weight-gradient family, each registering only
its own kernel. The op passes its resolved recipe to :func:`run_op`, which takes the recipe's kernel
where one is registered and the default otherwise. So families never forward calls to each other and
the order they register in does not matter. Ops without a recipe (the BF16 ones) pass none and register
their kernels as the default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import device as _device
from ..errors import KernelNotAvailableError
from ..reference.common import Recipe
from . import _memo

KernelFn = Callable[..., None]
PlannerFn = Callable[..., Callable[..., bool] | None]

# (op, recipe or None for the op's default) -> (kernel, planner): a planner is only ever asked about
# calls its own kernel ran.
_KERNELS: dict[tuple[str, Recipe | None], tuple[KernelFn, PlannerFn | None]] = {}


def register_kernel(op: str, kernel: KernelFn, planner: PlannerFn | None = None,
                    recipe: Recipe | None = None) -> None:
    """Route CUDA calls of the public op named ``op`` (e.g. ``"fp8_gemm_nt"``) to ``kernel``: those with
    ``recipe`` (e.g. ``(1, 1, 128)``), or with ``recipe=None`` every call no recipe's kernel claims.

    ``planner``, given the same arguments after the kernel ran, returns a launch plan for later calls
    with the same signature, or None where there is none (e.g. scales that need converting per call).
    """
    _KERNELS[(op, recipe)] = (kernel, planner)


def unregister_kernel(op: str, recipe: Recipe | None = None) -> None:
    """Forget the kernel :func:`register_kernel` gave ``op`` for ``recipe`` (None: the default); calls it
    served go to the default again, or raise KernelNotAvailableError when there is none."""
    _KERNELS.pop((op, recipe), None)


def _lookup(op: str, recipe: Recipe | None) -> tuple[KernelFn, PlannerFn | None] | None:
    found = _KERNELS.get((op, recipe)) if recipe is not None else None
    return found if found is not None else _KERNELS.get((op, None))


def registered_kernel(op: str, recipe: Recipe | None = None) -> KernelFn | None:
    """The kernel a CUDA call of ``op`` with ``recipe`` runs (that recipe's, else the default), or None."""
    found = _lookup(op, recipe)
    return found[0] if found is not None else None


def no_products(d: torch.Tensor, c: torch.Tensor | None) -> Callable[[], None]:
    """What an op with K = 0 must do: ``d = c``, or zeros without ``c`` (no host sync)."""

    def fill() -> None:
        if c is None:
            d.zero_()
        elif c.data_ptr() != d.data_ptr():
            d.copy_(c)

    return fill


def run_op(op: str, device: torch.device, reference: KernelFn, *args, recipe: Recipe | None = None,
           empty: bool = False, trivial: Callable[[], None] | None = None, plan_key: tuple | None = None,
           **kwargs) -> None:
    """Run ``op`` on ``device``: the reference off CUDA, else the architecture check then the kernel.

    ``recipe``: the call's resolved recipe, which picks the kernel (not passed on: the op's arguments
    hold it already). On CUDA, once the architecture is known to be supported: ``empty`` (nothing to
    write, e.g. M = 0) returns at once and ``trivial`` (e.g. :func:`no_products` when K = 0) runs
    instead of the kernel, so kernels never see those degenerate shapes. ``plan_key``: the call's
    validated signature, under which the planner registered with the kernel that ran (if any) files a
    launch plan. The signature must determine the recipe (the ops' signatures hold the recipe argument
    and d's dtype, from which a missing one is inferred), so that a plan never serves another recipe.
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
    found = _lookup(op, recipe)
    if found is None:
        raise KernelNotAvailableError(
            f"{op}: the SM90 kernel is not available yet in this version of dg_moe; "
            "run on CPU tensors for the reference implementation"
        )
    kernel, planner = found
    kernel(*args, **kwargs)
    if plan_key is not None and planner is not None and _memo.plan(plan_key) is None:
        _memo.remember_plan(plan_key, planner(*args, **kwargs))
