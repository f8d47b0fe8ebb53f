"""Test-session setup that must precede every import of the package's Triton kernels."""

from __future__ import annotations

import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter. The flag is read when a kernel is
# decorated, i.e. when its module is first imported, by whichever test gets there first: so here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
