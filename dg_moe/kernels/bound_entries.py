"""A kernel family's variant bound to its host entry under either JIT backend, and the cache of bound
entries by call shape that every family's launcher keeps.

The JIT backend (``DG_MOE_JIT_BACKEND``) decides what a variant's entry is: the nvcc-built host entry of
``kernel.so`` (a KernelLibrary function), or under nvrtc the family's Python ``CubinEntry`` on the
variant's CubinKernel. Both take the same arguments, so a launcher calls either alike.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

from ..jit import CubinKernel, build
from ..jit.source import TemplateArg

Entry = Callable[..., None]
K = TypeVar("K", bound=Hashable)


def bind_host_entry(
    family: str,
    template_args: Mapping[str, TemplateArg],
    entry: str,
    argtypes: tuple,
    cubin_entry: Callable[[CubinKernel], Entry],
    source_root: str | None = None,
) -> Entry:
    """The host entry of the variant ``template_args`` of ``family`` (built or loaded from the cache):
    the nvcc library's function ``entry`` with ``argtypes``, or under DG_MOE_JIT_BACKEND=nvrtc
    ``cubin_entry`` of the cubin. ``source_root``: a kernel source tree searched before the package's."""
    built = build(family, template_args, source_root=source_root)
    if isinstance(built, CubinKernel):
        return cubin_entry(built)
    return built.function(entry, argtypes)


def cached_entry(entries: dict[K, Entry], key: K, bind_shape: Callable[[K], Entry]) -> Entry:
    """The entry bound for the call shape ``key``: ``entries[key]``, else ``bind_shape(key)`` kept there.
    A warm call is one look-up; the launcher passes its module's ``entries`` on every call, so a test
    may swap the dict for an empty one."""
    entry = entries.get(key)
    if entry is None:
        entry = bind_shape(key)
        entries[key] = entry
    return entry
