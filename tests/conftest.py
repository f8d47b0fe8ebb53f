"""Test-session setup that must precede every import of the package's Triton kernels, the one skip
condition of the tests that compile with nvcc, and the seeds of random test inputs."""

from __future__ import annotations

import functools
import os
import sysconfig
import zlib
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter. The flag is read when a kernel is
# decorated, i.e. when its module is first imported, by whichever test gets there first: so here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    """With DG_MOE_TEST_INSTALLED=1 (.ci/wheel), refuse to run unless dg_moe is the copy installed in this
    Python's site-packages: there the tests check the installed wheel, and a checkout on sys.path would
    stand in for it unnoticed."""
    if os.environ.get("DG_MOE_TEST_INSTALLED") != "1":
        return
    # Imported here, after the Triton flag above, as every import of the package must be.
    import dg_moe

    package = Path(dg_moe.__file__).resolve().parent
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    if not package.is_relative_to(site_packages):
        raise pytest.UsageError(f"DG_MOE_TEST_INSTALLED=1: dg_moe was imported from {package}, "
                                f"not from the installed copy in {site_packages}")
    print(f"dg_moe {dg_moe.__version__} imported from the installed copy: {package}")


@functools.cache
def _missing_toolchain() -> str | None:
    """Why the JIT cannot compile on this machine, or None when it can; asked once per session."""
    # Imported here: importing dg_moe imports its Triton kernels, which must come after the flag above.
    from dg_moe.errors import ToolchainNotFoundError
    from dg_moe.jit import get_toolchain

    try:
        get_toolchain()
    except ToolchainNotFoundError as exc:
        return str(exc)
    return None


@functools.cache
def _missing_nvrtc() -> str | None:
    """Why the JIT's NVRTC backend cannot compile here, or None when it can; asked once per session."""
    from dg_moe.errors import ToolchainNotFoundError
    from dg_moe.jit.nvrtc import get_nvrtc

    try:
        get_nvrtc()
    except ToolchainNotFoundError as exc:
        return str(exc)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked ``nvcc`` (``nvrtc``) where the JIT's toolchain (libnvrtc) is missing, naming what is missing.

    Checked before the test's fixtures run (a compiling module fixture would error, not skip). The
    test extra installs nvcc, so only an install without it skips.
    """
    if item.get_closest_marker("nvcc") is not None:
        reason = _missing_toolchain()
        if reason is not None:
            pytest.skip(f"needs the JIT toolchain: {reason}")
    if item.get_closest_marker("nvrtc") is not None:
        reason = _missing_nvrtc()
        if reason is not None:
            pytest.skip(f"needs NVRTC: {reason}")


@pytest.fixture
def cuda_untouchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any CUDA query fails the test: what must work without a GPU may not even ask for one."""
    def touched(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA was queried")

    for name in ("is_available", "device_count", "current_device", "get_device_properties",
                 "get_device_capability", "get_device_name", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, touched)


@pytest.fixture
def nvrtc_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty kernel cache under tmp_path with DG_MOE_JIT_BACKEND=nvrtc, the JIT's memo cleared before
    and after."""
    from dg_moe import jit

    monkeypatch.setenv("DG_MOE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DG_MOE_JIT_BACKEND", "nvrtc")
    jit.reset()
    yield tmp_path
    jit.reset()


@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty kernel cache shared by one module's tests (DG_MOE_CACHE_DIR), so a module that compiles
    many variants compiles each once; the variable is restored after the module."""
    path = tmp_path_factory.mktemp("dg_moe_cache")
    old = os.environ.get("DG_MOE_CACHE_DIR")
    os.environ["DG_MOE_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        del os.environ["DG_MOE_CACHE_DIR"]
    else:
        os.environ["DG_MOE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def sm90() -> None:
    """Skips the module's tests unless an SM90 GPU is present (use with autouse in a GPU module)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip(f"needs an SM90 GPU, found {torch.cuda.get_device_name()}")


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


# Property tests (tests/test_fuzz_ops.py). "ci", the default: few examples, derandomised (each test draws
# the same examples on every run, so a CI failure replays locally), no example database written into
# the checkout. "fuzz" (HYPOTHESIS_PROFILE=fuzz) searches longer with fresh randomness; a failure
# prints the seed and the @reproduce_failure blob. No deadline: the first call of an op is slower.
# The adapters' CI venvs (.ci/vllm, .ci/sglang) install pytest alone and run no property test: there the
# profiles have nothing to configure.
try:
    from hypothesis import settings
except ImportError:
    settings = None
if settings is not None:
    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                              print_blob=True)
    settings.register_profile("fuzz", max_examples=1000, deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


def pytest_runtest_teardown(item: pytest.Item) -> None:
    """After a GPU test, hand its freed blocks back to the driver: under pytest-xdist every worker shares
    one card, and a worker's caching allocator kept what its largest test had held (46 GiB in one worker
    of `pytest -m gpu -n 8` on an 80 GB H100, where nine big-shape tests of other workers then ran out of
    memory)."""
    if item.get_closest_marker("gpu") is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.failed and SEED in item.stash:
        report.sections.append(("seed", f"{item.stash[SEED]}, the CRC-32 of the node id {item.nodeid!r}: "
                                        "running this test again draws the same inputs"))
