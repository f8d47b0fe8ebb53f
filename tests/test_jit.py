"""JIT runtime on the CPU: toolchain discovery, nvcc compilation for sm_90a, the on-disk cache
(key, locking, corruption), the ctypes loader, and the CPU side of the scale op.

Compiles are few and shared through module-scoped fixtures: a small fake kernel family in a
temporary source root exercises the cache, and the real sm90_scale library is compiled once.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dg_moe import jit
from dg_moe.errors import CompileError, CudaError, ToolchainNotFoundError
from dg_moe.jit import cache, runtime, source, toolchain
from dg_moe.jit.selftest import scale

REPO = Path(__file__).resolve().parents[1]
SCALE_ARGS = {"DTYPE": "__nv_bfloat16", "BLOCK_M": 32, "BLOCK_N": 128, "STAGES": 4, "THREADS": 128}
FAKE = "fake_probe"

FAKE_LAUNCH = """\
// A tiny kernel family for the cache tests: one kernel, two host entries.
#include "common/abi.cuh"
#include "common/fake_probe.cuh"

#ifndef DG_MOE_VALUE
#error "fake_probe needs DG_MOE_VALUE"
#endif

__global__ void fake_probe_kernel(int* out) { *out = DG_MOE_VALUE; }

DG_MOE_EXPORT int fake_probe_get(int* out) {
  *out = DG_MOE_VALUE + FAKE_PROBE_OFFSET;
  return 0;
}

DG_MOE_EXPORT int fake_probe_status(int status) { return status; }
"""
FAKE_HEADER = "#pragma once\n#define FAKE_PROBE_OFFSET 1000\n"


def _write_fake_root(root: Path) -> Path:
    (root / "launch").mkdir(parents=True)
    (root / "common").mkdir()
    (root / "launch" / f"{FAKE}.cu").write_text(FAKE_LAUNCH)
    (root / "common" / f"{FAKE}.cuh").write_text(FAKE_HEADER)
    (root / "common" / "unused.cuh").write_text("#pragma once\n")
    (root / "launch" / "fake_broken.cu").write_text('#include "common/abi.cuh"\nthis is not C++;\n')
    return root


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("dg_moe_cache")
    saved = {k: os.environ.get(k) for k in ("DG_MOE_CACHE_DIR", "DG_MOE_JIT_DEBUG", "DG_MOE_PTXAS_VERBOSE")}
    os.environ["DG_MOE_CACHE_DIR"] = str(root)
    os.environ.pop("DG_MOE_JIT_DEBUG", None)
    os.environ.pop("DG_MOE_PTXAS_VERBOSE", None)
    jit.reset()
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    jit.reset()


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_fake_root(tmp_path_factory.mktemp("fake_csrc"))


@pytest.fixture(scope="module")
def fake_lib(cache_root: Path, fake_root: Path) -> jit.KernelLibrary:
    return jit.build(FAKE, {"VALUE": 1}, source_root=fake_root)


@pytest.fixture(scope="module")
def scale_so(cache_root: Path) -> Path:
    return jit.compile_only("sm90_scale", SCALE_ARGS)


def _delta(before: dict[str, int]) -> dict[str, int]:
    now = jit.stats()
    return {k: now[k] - before[k] for k in now}


def _child_env(cache_root: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, DG_MOE_CACHE_DIR=str(cache_root), PYTHONPATH=path, **extra)


_CHILD = """
import json, os, sys, time
from pathlib import Path
go = os.environ.get("GO_FILE")
from dg_moe import jit
if go:
    while not os.path.exists(go):
        time.sleep(0.005)
start = time.perf_counter()
lib = jit.build(sys.argv[1], json.loads(sys.argv[2]), source_root=sys.argv[3] or None)
ms = (time.perf_counter() - start) * 1e3
print(json.dumps({"ms": ms, "stats": jit.stats(), "path": str(lib.path)}))
"""


def _child_cmd(family: str, args: dict, root: Path | None) -> list[str]:
    return [sys.executable, "-c", _CHILD, family, json.dumps(args), str(root or "")]


# --- toolchain --------------------------------------------------------------------------------


@pytest.mark.nvcc
def test_toolchain_finds_nvcc_13_and_cutlass(cache_root: Path) -> None:
    tc = jit.get_toolchain()
    assert tc.nvcc_version.startswith("13."), tc
    assert (tc.cutlass_include / "cute").is_dir() and (tc.cutlass_include / "cutlass").is_dir()
    assert (tc.cuda_include / "cuda.h").is_file() and (tc.cuda_include / "cudaTypedefs.h").is_file()
    assert tc.cutlass_version
    info = jit.toolchain_info()
    assert info["errors"] is None, info
    assert info["nvcc"] == str(tc.nvcc) and info["nvcc_version"] == tc.nvcc_version
    assert info["cache_dir"] == str(cache_root)
    # The version probe is kept on disk, so later processes need not run nvcc --version.
    assert list((cache_root / "toolchain").glob("nvcc-*.json"))


def test_bogus_nvcc_override_names_it(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DG_MOE_NVCC", "/nonexistent/bin/nvcc")
    jit.reset()
    try:
        with pytest.raises(ToolchainNotFoundError, match="DG_MOE_NVCC=.*/nonexistent/bin/nvcc"):
            jit.get_toolchain()
        info = jit.toolchain_info()  # never raises
        assert info["nvcc"] is None and "/nonexistent/bin/nvcc" in info["errors"]
    finally:
        monkeypatch.undo()
        jit.reset()


def test_nvcc_found_in_wheel_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "site" / "nvidia" / "cu13" / "bin" / "nvcc"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("DG_MOE_NVCC", raising=False)
    assert toolchain.find_nvcc() == fake


def test_static_cudart_found_in_wheel_layout(tmp_path: Path) -> None:
    # The wheels keep libcudart_static.a in lib/, where nvcc's profile (lib64/) does not look.
    root = tmp_path / "nvidia" / "cu13"
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("")
    assert toolchain.find_cuda_lib(nvcc) is None
    for sub in ("lib", "lib64"):
        (root / sub).mkdir()
        (root / sub / "libcudart_static.a").write_bytes(b"")
        assert toolchain.find_cuda_lib(nvcc) == root / sub  # a toolkit's lib64 first


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    # What build gives under nvrtc (a CubinKernel) is tests/test_jit_nvrtc.py's.
    monkeypatch.setenv("DG_MOE_JIT_BACKEND", "NVRTC")
    assert jit.env.backend() == "nvrtc"
    monkeypatch.setenv("DG_MOE_JIT_BACKEND", "clang")
    with pytest.raises(ValueError, match="nvcc"):
        jit.env.backend()
    monkeypatch.setenv("DG_MOE_PRINT_CONFIGS", "1")
    assert jit.print_configs_enabled()


# --- generated source and key -----------------------------------------------------------------


def test_render_source_and_argument_checks() -> None:
    text = source.render_source("sm90_scale", {"DTYPE": "float", "BLOCK_M": 64, "SWAP": True})
    assert text.splitlines()[1:] == [
        "#define DG_MOE_BLOCK_M 64",
        "#define DG_MOE_DTYPE float",
        "#define DG_MOE_SWAP true",
        '#include "launch/sm90_scale.cu"',
    ]
    with pytest.raises(ValueError, match="UPPER_CASE"):
        source.render_source("sm90_scale", {"block_m": 64})
    with pytest.raises(ValueError, match="C\\+\\+ identifier"):
        source.render_source("sm90_scale", {"DTYPE": "float\n#include </etc/passwd>"})
    with pytest.raises(ValueError, match="lowercase identifier"):
        source.render_source("../evil", {})


def test_scale_key_covers_its_headers() -> None:
    names = [name for name, _ in source.header_digests(source.render_source("sm90_scale", SCALE_ARGS),
                                                       [source.CSRC_DIR])]
    assert names[0] == "launch/sm90_scale.cu"
    assert {"common/abi.cuh", "common/tma.cuh", "common/mbarrier.cuh", "kernels/sm90_scale.cuh"} <= set(names)


@pytest.mark.nvcc
def test_key_changes_with_included_header_only(cache_root: Path, tmp_path: Path) -> None:
    root = _write_fake_root(tmp_path / "csrc")
    key = jit.cache_key(FAKE, {"VALUE": 1}, source_root=root)
    assert jit.cache_key(FAKE, {"VALUE": 1}, source_root=root) == key
    assert jit.cache_key(FAKE, {"VALUE": 2}, source_root=root) != key
    (root / "common" / "unused.cuh").write_text("#pragma once\n// not included by fake_probe\n")
    assert jit.cache_key(FAKE, {"VALUE": 1}, source_root=root) == key
    (root / "common" / f"{FAKE}.cuh").write_text(FAKE_HEADER + "// edited\n")
    assert jit.cache_key(FAKE, {"VALUE": 1}, source_root=root) != key


@pytest.mark.nvcc
def test_unknown_family_and_compile_error(cache_root: Path, fake_root: Path) -> None:
    with pytest.raises(ValueError, match="no launch/no_such_family.cu"):
        jit.build("no_such_family", {})
    with pytest.raises(CompileError, match="this is not C"):
        jit.compile_only("fake_broken", {}, source_root=fake_root)
    leftovers = list((cache_root / "fake_broken").iterdir())
    assert all(p.suffix == ".lock" for p in leftovers), leftovers  # no entry, no staging folder


# --- compile, load, call ----------------------------------------------------------------------


@pytest.mark.nvcc
def test_scale_compiles_for_sm90a(scale_so: Path) -> None:
    entry = scale_so.parent
    assert scale_so.is_file() and scale_so.stat().st_size > 0
    meta = json.loads((entry / cache.META_FILE).read_text())
    assert meta["arch"] == "sm_90a" and "-gencode=arch=compute_90a,code=sm_90a" in meta["flags"]
    assert meta["kernel_sha256"] == cache.file_sha256(scale_so)
    assert (entry / cache.SOURCE_FILE).read_text().endswith('#include "launch/sm90_scale.cu"\n')
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        listing = subprocess.run([cuobjdump, "--list-elf", str(scale_so)], capture_output=True, text=True).stdout
        assert "sm_90a" in listing
    dll = ctypes.CDLL(str(scale_so))
    assert hasattr(dll, "dg_moe_sm90_scale") and hasattr(dll, "dg_moe_error_string")


@pytest.mark.nvcc
def test_scale_entry_turns_status_into_cuda_error(scale_so: Path) -> None:
    before = jit.stats()
    lib = jit.build("sm90_scale", SCALE_ARGS)
    assert _delta(before)["compiles"] == 0  # compile_only already cached it
    fn = lib.function("dg_moe_sm90_scale", (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_void_p))
    fn(None, None, 1.0, 0, 8, None)  # M = 0: nothing to do, status 0
    with pytest.raises(CudaError, match="dg_moe_sm90_scale failed with CUDA error 100002: .*rejected its arguments"):
        fn(None, None, 1.0, 4, 7, None)  # rows of 14 bytes
    if not torch.cuda.is_available():
        # Valid arguments but no driver: the runtime's own error comes back.
        with pytest.raises(CudaError) as err:
            fn(16, 16, 1.0, 4, 8, None)
        assert err.value.code not in (0, 100002)


@pytest.mark.nvcc
def test_fake_library_entries(fake_lib: jit.KernelLibrary) -> None:
    get = fake_lib.function("fake_probe_get", (ctypes.POINTER(ctypes.c_int),))
    value = ctypes.c_int(0)
    get(ctypes.byref(value))
    assert value.value == 1001
    fake_lib.function("fake_probe_status", (ctypes.c_int,))
    with pytest.raises(CudaError) as err:
        fake_lib.call("fake_probe_status", 3)
    assert err.value.code == 3 and err.value.text == "initialization error"
    with pytest.raises(ValueError, match="already bound"):
        fake_lib.function("fake_probe_get", (ctypes.c_void_p,))
    with pytest.raises(AttributeError, match="no_such_entry"):
        fake_lib.function("no_such_entry", ())


# --- cache behaviour --------------------------------------------------------------------------


@pytest.mark.nvcc
def test_second_build_in_process_is_a_dict_hit(fake_lib: jit.KernelLibrary, fake_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled on a warm build")

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("touched the disk on a warm build")

    monkeypatch.setattr(runtime, "run_nvcc", no_compile)
    monkeypatch.setattr(cache, "check_entry", no_disk)
    before = jit.stats()
    start = time.perf_counter()
    again = jit.build(FAKE, {"VALUE": 1}, source_root=fake_root)
    warm_us = (time.perf_counter() - start) * 1e6
    assert again is fake_lib
    assert _delta(before) == {"memory_hits": 1, "disk_hits": 0, "compiles": 0, "rebuilds": 0}
    print(f"warm build: {warm_us:.1f} us")


@pytest.mark.nvcc
def test_second_process_loads_without_compiling(fake_lib: jit.KernelLibrary, cache_root: Path,
                                                fake_root: Path) -> None:
    done = subprocess.run(_child_cmd(FAKE, {"VALUE": 1}, fake_root), capture_output=True, text=True,
                          env=_child_env(cache_root, DG_MOE_JIT_DEBUG="1"), check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stats"]["compiles"] == 0 and result["stats"]["disk_hits"] == 1
    assert "cache hit" in done.stderr and "compile:" not in done.stderr
    assert result["path"] == str(fake_lib.path)
    print(f"cached kernel loaded in a fresh process in {result['ms']:.2f} ms")


@pytest.mark.nvcc
def test_concurrent_processes_compile_once(cache_root: Path, fake_root: Path, tmp_path: Path) -> None:
    fresh_cache = tmp_path / "cache"
    go = tmp_path / "go"
    env = _child_env(fresh_cache, DG_MOE_JIT_DEBUG="1", GO_FILE=str(go))
    procs = [
        subprocess.Popen(_child_cmd(FAKE, {"VALUE": 2}, fake_root), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    go.touch()  # both children start building at once
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(r["stats"]["compiles"] for r in results) == 1, outputs
    assert sum(err.count("compile:") for _, err in outputs) == 1
    assert results[0]["path"] == results[1]["path"]
    key = Path(results[0]["path"]).parent.name
    assert sorted(p.name for p in (fresh_cache / FAKE).iterdir()) == [key, f"{key}.lock"]


def _replace(path: Path, data: bytes) -> None:
    # Corrupt by replacing the file (new inode), never in place: a library mapped by this
    # process must not change under it.
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _corrupt(entry: Path, how: str) -> None:
    so, meta = entry / cache.LIBRARY_FILE, entry / cache.META_FILE
    if how == "garbage":
        _replace(so, os.urandom(so.stat().st_size))
    elif how == "truncated":
        _replace(so, so.read_bytes()[: so.stat().st_size // 2])
    elif how == "no_library":
        so.unlink()
    elif how == "no_meta":
        meta.unlink()
    elif how == "bad_meta":
        _replace(meta, b"{not json")
    elif how == "undloadable":  # the recorded hash matches, but dlopen fails
        garbage = b"\x7fELF" + os.urandom(4096)
        _replace(so, garbage)
        record = json.loads(meta.read_text())
        record["kernel_sha256"] = cache.file_sha256(so)
        _replace(meta, json.dumps(record).encode())


@pytest.mark.nvcc
@pytest.mark.parametrize("how", ["garbage", "truncated", "no_library", "no_meta", "bad_meta", "undloadable"])
def test_corrupt_entry_is_detected_and_rebuilt(cache_root: Path, fake_root: Path, how: str) -> None:
    args = {"VALUE": 3}
    so = jit.compile_only(FAKE, args, source_root=fake_root)  # intact entry (compiled by the first case)
    _corrupt(so.parent, how)
    assert cache.check_entry(so.parent, so.parent.name, runtime.KEY_FORMAT) is not None or how == "undloadable"
    before = jit.stats()
    if how == "undloadable":
        lib = jit.build(FAKE, args, source_root=fake_root)  # only loading notices this one
        value = ctypes.c_int(0)
        lib.function("fake_probe_get", (ctypes.POINTER(ctypes.c_int),))(ctypes.byref(value))
        assert value.value == 1003
    else:
        assert jit.compile_only(FAKE, args, source_root=fake_root) == so
    assert _delta(before)["rebuilds"] == 1 and _delta(before)["compiles"] == 1
    assert cache.check_entry(so.parent, so.parent.name, runtime.KEY_FORMAT) is None
    assert not [p for p in so.parent.parent.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


@pytest.mark.nvcc
def test_cache_size_and_dir(cache_root: Path, fake_lib: jit.KernelLibrary) -> None:
    assert jit.cache_dir() == cache_root
    assert jit.cache_size_bytes() >= fake_lib.path.stat().st_size > 0


# --- the scale op without a GPU ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_scale_on_cpu_is_the_torch_product(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(129, 136, generator=g) * 5 + 0.5).to(dtype)
    assert torch.equal(scale(x, 1.3377), x * 1.3377)
    out = torch.full_like(x, float("nan"))
    assert scale(x, -2.5, out=out) is out and torch.equal(out, x * -2.5)
    y = x.clone()
    assert scale(y, 3, out=y) is y and torch.equal(y, x * 3)
    assert scale(torch.empty(0, 8, dtype=dtype), 2.0).shape == (0, 8)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: torch.randn(4, 8).half(), TypeError, "x must be torch.bfloat16 or torch.float32"),
        (lambda: torch.randn(4, 8, 2), ValueError, r"x must be 2-D \[M, N\], got shape \(4, 8, 2\)"),
        (lambda: torch.randn(8, 4).t(), ValueError, r"x must be row-major contiguous.*x.contiguous\(\)"),
        (lambda: torch.randn(4, 7), ValueError, "multiple of 16 bytes.*N=7.*pad N to a multiple of 4"),
        (lambda: torch.randn(4, 12, dtype=torch.bfloat16), ValueError, "24 bytes; pad N to a multiple of 8"),
        (lambda: torch.randn(33)[1:].view(4, 8), ValueError, r"x.data_ptr\(\) must be 16-byte aligned"),
        (lambda: [[1.0]], TypeError, "x must be a torch.Tensor"),
    ],
)
def test_scale_rejects_bad_x(make, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        scale(make(), 2.0)


def test_scale_rejects_bad_out_and_alpha() -> None:
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="out must match x"):
        scale(x, 2.0, out=torch.empty(4, 16))
    with pytest.raises(ValueError, match="out must match x"):
        scale(x, 2.0, out=torch.empty(4, 8, dtype=torch.bfloat16))
    buf = torch.randn(40)
    with pytest.raises(ValueError, match="partially overlaps"):
        scale(buf[:32].view(4, 8), 2.0, out=buf[8:40].view(4, 8))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        scale(x, "2")
    with pytest.raises(TypeError, match="alpha must be a real number"):
        scale(x, True)


@pytest.mark.nvcc
def test_loadtime_script_reports(cache_root: Path, scale_so: Path) -> None:
    env = _child_env(cache_root)
    done = subprocess.run([sys.executable, "-m", "dg_moe.jit.loadtime", "--runs", "1"], capture_output=True,
                          text=True, env=env, check=True, timeout=300)
    assert "loaded in a fresh process in" in done.stdout and "compiles in children: 0" in done.stdout
    print(done.stdout.strip())



def test_compile_each_turns_a_rejected_variant_into_an_outcome(monkeypatch):
    """In a worker: a compile error becomes the variant's outcome (the others go on); the counters tell
    a compile from a cache hit."""
    from dg_moe.jit import parallel

    def compile_only(family, args):
        if args["BAD"]:
            raise CompileError("nvcc: error: static assertion failed")
        runtime._stats["compiles"] += args["NEW"]
        return Path(f"/cache/{family}/kernel.so")

    monkeypatch.setattr(parallel, "compile_only", compile_only)
    monkeypatch.setattr(runtime, "_stats", dict(runtime._stats))
    failed = parallel._compile_counted("f", 0, {"BAD": True, "NEW": 0})
    assert (failed.index, failed.path, failed.compiled, failed.error) == (0, None, False,
                                                                          "nvcc: error: static assertion failed")
    assert parallel._compile_counted("f", 1, {"BAD": False, "NEW": 1}).compiled
    cached = parallel._compile_counted("f", 2, {"BAD": False, "NEW": 0})
    assert (cached.index, cached.path, cached.compiled, cached.error) == (2, Path("/cache/f/kernel.so"), False, None)


def test_compile_many_passes_the_source_tree_to_each_worker(monkeypatch, tmp_path):
    from dg_moe.jit import parallel

    seen = []

    def fake_compile_only(family, args, source_root=None):
        seen.append((family, dict(args), source_root))
        return tmp_path / f"{len(seen)}.so"

    class InlinePool:
        def __init__(self, max_workers):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, items):
            return map(fn, items)

    monkeypatch.setattr(parallel, "check_toolchain", lambda: None)
    monkeypatch.setattr(parallel, "compile_only", fake_compile_only)
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", InlinePool)
    variants = [{"BLOCK_N": 128}, {"BLOCK_N": 152}]
    assert parallel.compile_many("fam", variants, source_root="/trees/main") == [tmp_path / "1.so", tmp_path / "2.so"]
    assert parallel.compile_many("fam", variants[:1]) == [tmp_path / "3.so"]
    assert seen == [("fam", {"BLOCK_N": 128}, "/trees/main"), ("fam", {"BLOCK_N": 152}, "/trees/main"),
                    ("fam", {"BLOCK_N": 128}, None)]
