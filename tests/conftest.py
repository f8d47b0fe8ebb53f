"""Test-session setup that must precede every import of the package's Triton kernels."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter. The flag is read when a kernel is
# decorated, i.e. when its module is first imported, by whichever test gets there first: so here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def poisoned_empty(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make torch.empty fill what it returns with one byte value, which the fixture returns.

    torch.empty's contents are unspecified, so correct code cannot tell; but any element a launcher
    leaves unwritten keeps the byte, which is how the tests see what the no-padding kernels skip.
    """
    poison = 0x7F
    real_empty = torch.empty

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        if out.dtype != torch.bool and out.is_contiguous():
            out.reshape(-1).view(torch.uint8).fill_(poison)
        return out

    monkeypatch.setattr(torch, "empty", empty)
    return poison
