"""A loaded kernel library: its host entries bound through ctypes, statuses turned into CudaError."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CudaError

ERROR_STRING_ENTRY = "dg_moe_error_string"


class KernelLibrary:
    """One compiled ``kernel.so``; entries are bound once with ``function()`` and called many times.

    Host entries return an ``int`` status (0 = success, else a cudaError_t or dg_moe status); a
    bound entry raises ``CudaError(entry, status, text)`` on a non-zero status and returns None.
    """

    def __init__(self, path: Path, family: str, key: str):
        self.path = path
        self.family = family
        self.key = key
        # RTLD_NOW: a library with unresolved symbols fails here (and is rebuilt) rather than mid-call.
        self._dll = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        error_string = getattr(self._dll, ERROR_STRING_ENTRY)
        error_string.argtypes = (ctypes.c_int,)
        error_string.restype = ctypes.c_char_p
        self._error_string = error_string
        self._functions: dict[str, tuple[tuple[Any, ...], Callable[..., None]]] = {}

    def error_string(self, status: int) -> str:
        """CUDA's (or dg_moe's) text for a status returned by one of this library's entries."""
        text = self._error_string(status)
        return text.decode(errors="replace") if text else f"status {status}"

    def has_entry(self, entry: str) -> bool:
        """Whether the library exports ``entry``."""
        return hasattr(self._dll, entry)

    def function(self, entry: str, argtypes: Sequence[Any]) -> Callable[..., None]:
        """The exported ``int entry(...)`` bound with ctypes ``argtypes``; memoised per entry."""
        argtypes = tuple(argtypes)
        bound = self._functions.get(entry)
        if bound is not None:
            if bound[0] != argtypes:
                raise ValueError(f"{self.family}: entry {entry} already bound with argtypes {bound[0]}")
            return bound[1]
        if not self.has_entry(entry):
            raise AttributeError(f"{self.path} ({self.family}) exports no entry {entry!r}")
        fn = getattr(self._dll, entry)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
        fn.errcheck = self._check
        self._functions[entry] = (argtypes, fn)
        return fn

    def call(self, entry: str, *args: Any) -> None:
        """Call an entry bound earlier with ``function()``."""
        bound = self._functions.get(entry)
        if bound is None:
            raise KeyError(f"{self.family}: bind {entry!r} with function(entry, argtypes) before call()")
        bound[1](*args)

    def _check(self, status: int, fn: Any, args: tuple[Any, ...]) -> None:
        if status != 0:
            raise CudaError(fn.__name__, status, self.error_string(status))

    def __repr__(self) -> str:
        return f"KernelLibrary({self.family}, key={self.key[:16]}, path={self.path})"
