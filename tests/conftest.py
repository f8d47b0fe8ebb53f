"""Test-session setup that must precede every import of the package's Triton kernels, and the
seeds of random test inputs."""

from __future__ import annotations

import os
import zlib

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


SEED = pytest.StashKey[int]()


def stable_seed(nodeid: str) -> int:
    """The seed of a test's random inputs: the CRC-32 of its node id. hash() of a str would differ
    from one process to the next (PYTHONHASHSEED), and a failure could not be replayed."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This test's seed; a failure's report shows it in a "seed" section."""
    value = stable_seed(request.node.nodeid)
    request.node.stash[SEED] = value
    return value


@pytest.fixture
def cuda_gen(seed: int) -> torch.Generator:
    """A CUDA generator seeded with this test's seed: the same inputs on every run of the test."""
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.failed and SEED in item.stash:
        report.sections.append(("seed", f"{item.stash[SEED]}, the CRC-32 of the node id {item.nodeid!r}: "
                                        "running this test again draws the same inputs"))
