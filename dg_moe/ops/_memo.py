"""Signatures of calls whose arguments were already validated, so a repeated call skips the checks.

The key holds everything the checks read: type, dtype, shape, strides and device of every tensor,
and the scalar arguments. The value holds what they derived (e.g. the inferred recipe). Only calls
off the CPU are memoised: there the checks read metadata alone, whereas CPU calls also check
layout values (group ids, prefix sums), which may differ between calls with equal metadata.
Validating a DeepGEMM-shaped call costs ~33 µs of Python; a hit costs a few.

A signature may also hold a launch plan (:func:`plan`): the kernel's launch of such a call reduced to
its pointers and stream, which a repeated eager call runs instead of the dispatch, the kernel's
argument preparation and its look-ups (the op then costs the signature, a look-up and the launch).
Dispatch picks the kernel, and with it the planner, by the call's recipe; a signature determines that
recipe (it holds the recipe argument and d's dtype, from which a missing recipe is inferred), so the plan
kept under a signature always launches the kernel of that signature's recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

_MAX_ENTRIES = 4096
_validated: dict[tuple, object] = {}
_plans: dict[tuple, Callable[..., bool]] = {}

T = TypeVar("T")


def key(op: str, tensors: Callable[[], tuple], scalars: tuple) -> tuple | None:
    """The signature of a call: ``scalars`` plus the metadata of the tensors ``tensors()`` returns
    (None entries allowed), or None when the arguments do not even have that form (then the full
    checks run and raise the right error). Flat on purpose: this runs on every call."""
    try:
        parts = [None if t is None else (t.shape, t.stride(), t.dtype, t.device) for t in tensors()]
        signature = (op, scalars, *parts)
        hash(signature)
    except (AttributeError, LookupError, TypeError):  # LookupError: also a dict given as an operand pair
        return None
    return signature


def validated(signature: tuple | None, device: object, validate: Callable[[], T]) -> T:
    """``validate()``'s result, computed once per signature for tensors off the CPU."""
    memoise = signature is not None and isinstance(device, torch.device) and device.type != "cpu"
    if memoise:
        hit = _validated.get(signature)
        if hit is not None:
            return hit  # type: ignore[return-value]
    result = validate()
    if memoise:
        if len(_validated) >= _MAX_ENTRIES:
            _validated.clear()
        _validated[signature] = result
    return result


def plan(signature: tuple | None) -> Callable[..., bool] | None:
    """The launch plan remembered for ``signature``: called with the signature's tensors, it launches
    and returns True, or returns False when it no longer applies (the op then takes the full path)."""
    return _plans.get(signature) if signature is not None else None


def _declines(*tensors: object) -> bool:
    return False


def remember_plan(signature: tuple, launch: Callable[..., bool] | None) -> None:
    """Keep ``launch`` as the plan of calls with ``signature`` (validated ones: call after the kernel ran).
    None (no plan for such calls) is kept too, as a plan that always declines, so the planner is asked
    once per signature rather than on every call."""
    if len(_plans) >= _MAX_ENTRIES:
        _plans.clear()
    _plans[signature] = launch if launch is not None else _declines
