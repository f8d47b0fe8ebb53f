"""A JIT cache stampede (issue 19.3): many processes ask for the same kernel variants at once from an empty
cache, and cache entries are corrupted while they run.

    python3 tools/jit_stampede.py                          GPU: 16 processes x 20 sm90_fp8_gemm variants
    python3 tools/jit_stampede.py --mode compile -p 4 -n 3  no GPU needed: sm90_scale variants, nvcc only

Each worker process (the same script with --worker) waits for a start signal, then
  phase A: requests every variant, starting at a different one per process (so compiles overlap and
           processes also wait on each other's key locks); signals that it is done and waits;
  phase B: forgets its in-process memos (dg_moe.jit.reset(), and in GPU mode the launcher's bound entries
           and the op's launch plans) and requests every variant again, in the opposite order.
Between the phases the parent corrupts --corrupt entries the ways a crashed writer or a damaged disk leaves
them (kernel.so truncated; kernel.so garbled; meta.json gone; each replaced through a new inode, as a live
process's mapping must survive), and leaves a crashed compile's staging folder (.tmp-<key>-...) beside one.

Each phase has its own time limit (--timeout-a, --timeout-b; --timeout sets both). Workers log with
timestamps (seconds since the start signal) what they do: each request's start and end, and the JIT's
DG_MOE_JIT_DEBUG lines (cache miss, the nvcc command, cache hit). A worker still running at its phase's limit
is asked for its Python stack (faulthandler on SIGUSR1) and killed, and the parent says what it was doing:
the variant, whether it waited for a key's lock (and which worker held it, compiling since when), ran nvcc,
or was outside the JIT (with the innermost frames of its stack).

Checks (the script exits 1 on any failure and prints a summary line last):
  - every worker exits 0 within its phase's limit (nothing hangs) and every request gave a correct result: in GPU mode
    fp8_gemm_nt with that variant against the float64 CPU reference; in compile mode the library loads
    (dlopen), its entry runs on arguments that need no GPU (M = 0: status 0; a bad row size: the
    invalid-argument status) and its kernel.so matches the sha256 in meta.json;
  - phase A: each variant compiled exactly once over all processes (dg_moe.jit.stats() summed, and the
    nvcc command lines that DG_MOE_JIT_DEBUG=1 logs counted per key), no rebuild;
  - phase B: each corrupted entry rebuilt exactly once (rebuilds == compiles == --corrupt), every other one a
    disk hit;
  - the cache is left intact: every entry passes the cache's own check, no staging or trash folder remains.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MODES = ("gpu", "compile")
GEMM_K = 512
GEMM_M = 65


def variants(mode: str, count: int) -> list[dict]:
    """The variants asked for: in GPU mode fp8_gemm_nt shapes (N differs, so each is its own kernel
    variant); in compile mode sm90_scale template arguments."""
    if mode == "gpu":
        return [{"n": 64 * (i + 2), "k": GEMM_K} for i in range(count)]
    grid = itertools.product(("float", "__nv_bfloat16"), (32, 64, 16), (64, 128), (2, 4, 3))
    out = []
    for dtype, block_m, block_n, stages in grid:
        out.append({"DTYPE": dtype, "BLOCK_M": block_m, "BLOCK_N": block_n, "STAGES": stages, "THREADS": 128})
        if len(out) == count:
            return out
    raise SystemExit(f"compile mode has at most {len(out)} variants")


# --- worker ------------------------------------------------------------------------------------------------

def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} within {timeout:.0f} s")
        time.sleep(0.01)


class _TimedLines:
    """A text stream that starts every line with ``+SECONDS wN`` (wall-clock seconds since ``t0``, the
    parent's start signal, so lines of different workers compare): the worker's stderr, where the JIT's
    debug lines go too."""

    def __init__(self, stream, t0: float, worker: int):
        self._stream, self._t0, self._tag, self._pending = stream, t0, f"w{worker}", ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._stream.write(f"+{time.time() - self._t0:.2f} {self._tag} {line}\n")
        self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()


def _trace(message: str) -> None:
    print(f"[stampede] {message}", file=sys.stderr, flush=True)


def _request_gpu(variant: dict, index: int) -> str:
    import torch

    import dg_moe
    from dg_moe import layout, reference

    g = torch.Generator().manual_seed(1000 + index)
    n, k = variant["n"], variant["k"]
    a = layout.per_token_cast_to_fp8(torch.randn(GEMM_M, k, generator=g).to(torch.bfloat16))
    b = layout.per_block_cast_to_fp8(torch.randn(n, k, generator=g).to(torch.bfloat16))
    d = torch.full((GEMM_M, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    dg_moe.fp8_gemm_nt(tuple(t.cuda() for t in a), tuple(t.cuda() for t in b), d)
    diff = reference.calc_diff(d.cpu().double(), reference.ref_fp8_gemm_nt(a, b))
    if not diff < 1e-3:
        return f"N={n} K={k}: similarity error {diff:.2e}"
    return ""


def _request_compile(variant: dict, index: int) -> str:
    import ctypes

    from dg_moe import jit
    from dg_moe.errors import CudaError
    from dg_moe.jit import cache

    lib = jit.build("sm90_scale", variant)
    meta = json.loads((lib.path.parent / cache.META_FILE).read_text())
    if meta["kernel_sha256"] != cache.file_sha256(lib.path):
        return f"{lib.path}: kernel.so differs from meta.json"
    fn = lib.function("dg_moe_sm90_scale", (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_void_p))
    fn(None, None, 1.0, 0, 8, None)  # M = 0: nothing to do, status 0 (raises otherwise)
    try:
        fn(None, None, 1.0, 4, 7, None)  # rows of 7 elements are not a multiple of 16 bytes
    except CudaError as err:
        if err.code != 100002:
            return f"variant {index}: unexpected status {err.code}"
    else:
        return f"variant {index}: a bad row size was accepted"
    return ""


def _forget(mode: str) -> None:
    from dg_moe import jit

    jit.reset()
    if mode == "gpu":  # the op's own memos hold bound entries: without this phase B would not ask the JIT
        from dg_moe.kernels.sm90_fp8_gemm import launcher
        from dg_moe.ops import _memo

        launcher._entries.clear()
        _memo._plans.clear()
        _memo._validated.clear()


def worker(opts: argparse.Namespace) -> int:
    from dg_moe import jit

    sync = Path(opts.sync_dir)
    wanted = variants(opts.mode, opts.variants)
    request = _request_gpu if opts.mode == "gpu" else _request_compile
    start = (opts.worker * len(wanted)) // opts.procs
    order = [(start + i) % len(wanted) for i in range(len(wanted))]
    report: dict = {"worker": opts.worker, "errors": []}
    # The parent asks a worker that overran its phase for every thread's stack before killing it.
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    _wait_for(sync / "go", opts.timeout)
    sys.stderr = _TimedLines(sys.__stderr__, float((sync / "go").read_text()), opts.worker)
    for phase, indices in (("A", order), ("B", order[::-1])):
        if phase == "B":
            (sync / f"done-A-{opts.worker}").touch()
            _trace("phase A done, waiting for go-B")
            _wait_for(sync / "go-B", opts.timeout)
            _forget(opts.mode)
        before = jit.stats()
        t0 = time.perf_counter()
        slowest = (-1, 0.0)
        for i in indices:
            _trace(f"phase {phase} variant {i}: request")
            start = time.perf_counter()
            try:
                problem = request(wanted[i], i)
            except Exception as exc:  # noqa: BLE001 - reported, the parent fails the run
                problem = f"variant {i}: {type(exc).__name__}: {exc}"
            took = time.perf_counter() - start
            _trace(f"phase {phase} variant {i}: done in {took:.2f} s{' (' + problem + ')' if problem else ''}")
            slowest = max(slowest, (i, took), key=lambda x: x[1])
            if problem:
                report["errors"].append(f"phase {phase}: {problem}")
        after = jit.stats()
        report[phase] = {k: after[k] - before[k] for k in after}
        report[phase]["seconds"] = round(time.perf_counter() - t0, 2)
        report[phase]["slowest_request"] = [slowest[0], round(slowest[1], 2)]
    print("STAMPEDE " + json.dumps(report), flush=True)
    return 0


# --- parent ------------------------------------------------------------------------------------------------

def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".corrupt")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a new inode: processes that mapped the old file keep it


CORRUPTIONS = ("truncated", "garbled", "no_meta")


def corrupt(entry: Path, how: str) -> None:
    from dg_moe.jit import cache

    so = entry / cache.LIBRARY_FILE
    data = so.read_bytes()
    if how == "truncated":  # a writer that died mid-write, had it written in place
        _replace(so, data[: len(data) // 3])
    elif how == "garbled":  # same size, bytes changed in the middle
        mid = len(data) // 2
        _replace(so, data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 4096]) + data[mid + 4096:])
    elif how == "no_meta":
        (entry / cache.META_FILE).unlink()


def _entries(root: Path, family: str) -> list[Path]:
    folder = root / family
    if not folder.is_dir():  # no worker got as far as a compile
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".tmp-", ".trash-")))


_COMPILE_LINE = re.compile(r"\[dg_moe\.jit\] compile: .*?\.tmp-([0-9a-f]{16})-")
_COMPILED_LINE = re.compile(r"\[dg_moe\.jit\] compiled .*?\.tmp-([0-9a-f]{16})-")
_STAMP = re.compile(r"^\+(\d+\.\d+) w\d+ ")


def _stamp(line: str) -> str:
    match = _STAMP.match(line)
    return f"+{match.group(1)} s" if match else "?"


def _compiling(log: str) -> dict[str, str]:
    """Keys (16 hex digits) whose nvcc run a worker's log starts but does not finish: key -> since when."""
    open_runs: dict[str, str] = {}
    for line in log.splitlines():
        if (match := _COMPILE_LINE.search(line)) is not None:
            open_runs[match.group(1)] = _stamp(line)
        elif (match := _COMPILED_LINE.search(line)) is not None:
            open_runs.pop(match.group(1), None)
    return open_runs


_MISS_LINE = re.compile(r"\[dg_moe\.jit\] cache miss: \S+ (\S+) \((.*)\)$")


def _innermost_frames(lines: list[str], count: int = 4) -> list[str]:
    # faulthandler's dump: "Current thread 0x... (most recent call first):" then '  File "...", line N in f'.
    start = next((i for i, x in enumerate(lines) if x.startswith("Current thread")), None)
    if start is None:
        start = next((i for i, x in enumerate(lines) if x.startswith("Thread ")), len(lines))
    frames = []
    for line in lines[start + 1:]:
        if not line.strip().startswith("File "):
            break
        frames.append(line.strip())
    return frames[:count]


def flock_holders(path: Path) -> list[int]:
    """The processes holding an flock on ``path``, from /proc/locks (Linux; [] where it cannot tell)."""
    try:
        inode = os.stat(path).st_ino
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    holders = []
    for line in table.splitlines():
        fields = line.split()
        # "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF"; waiters have "->" after "N:".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            holders.append(int(fields[4]))
    return holders


def diagnose(worker: int, logs: list[str], lock_holder: Callable[[str], str]) -> list[str]:
    """What a worker that overran its phase was doing, from its timestamped log (with the stack faulthandler
    dumped on SIGUSR1), the other workers' logs and the kernel's lock table (who held the key it waited for).
    ``lock_holder(entry path)`` names the holder of that entry's key lock."""
    lines = logs[worker].splitlines()
    last_trace = max((i for i, x in enumerate(lines) if "[stampede] " in x), default=None)
    last_jit = max((i for i, x in enumerate(lines) if "[dg_moe.jit] " in x), default=None)
    if last_trace is None:
        return [f"worker {worker}: no step logged"]
    step = lines[last_trace].split("[stampede] ", 1)[1]
    out = [f"worker {worker}: last step {step!r} at {_stamp(lines[last_trace])}"]
    in_request = last_jit is not None and last_jit > last_trace
    miss = _MISS_LINE.search(lines[last_jit]) if in_request else None
    mine = _compiling(logs[worker])
    if miss is not None:
        key = Path(miss.group(1)).name[:16]
        compiling = [f"worker {w} since {since}" for w, log in enumerate(logs) if w != worker
                     for k, since in _compiling(log).items() if k == key]
        out.append(f"  waiting since {_stamp(lines[last_jit])} for the lock of key {key} ({miss.group(2)}); "
                   f"held by {lock_holder(miss.group(1))}; nvcc on it: {', '.join(compiling) or 'none running'}")
    elif in_request and mine:
        key, since = next(iter(mine.items()))
        out.append(f"  running nvcc on key {key} since {since}")
    elif last_jit is not None:
        text = lines[last_jit].split("[dg_moe.jit] ", 1)[1]
        out.append(f"  not in the JIT's lock or nvcc (last JIT line at {_stamp(lines[last_jit])}: {text[:120]!r})")
    frames = _innermost_frames(lines)
    if frames:
        out.append("  innermost frames: " + " <- ".join(frames))
    return out


def parent(opts: argparse.Namespace) -> int:
    from dg_moe.jit import cache, runtime

    family = "sm90_fp8_gemm" if opts.mode == "gpu" else "sm90_scale"
    wanted = variants(opts.mode, opts.variants)
    root = Path(opts.cache_dir) if opts.cache_dir else Path(tempfile.mkdtemp(prefix="dg_moe_stampede_"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty: the stampede starts from an empty cache")
    root.mkdir(parents=True, exist_ok=True)
    sync = Path(tempfile.mkdtemp(prefix="dg_moe_stampede_sync_"))
    env = dict(os.environ, DG_MOE_CACHE_DIR=str(root), DG_MOE_JIT_DEBUG="1", PYTHONUNBUFFERED="1")
    toolchain = Path(os.environ.get("DG_MOE_CACHE_DIR") or "~/.cache/dg_moe").expanduser() / "toolchain"
    if toolchain.is_dir():  # the nvcc version probe only, so that no worker spends its time on nvcc --version
        shutil.copytree(toolchain, root / "toolchain")
    print(f"jit_stampede: {opts.procs} processes x {len(wanted)} {family} variants ({opts.mode} mode), "
          f"cache {root}, {opts.corrupt} entries corrupted between the phases", flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "0", "--mode", opts.mode, "--procs", str(opts.procs),
           "--variants", str(opts.variants), "--sync-dir", str(sync),
           # a worker's own waits (for the start signals) must outlast the parent's phase limits
           "--timeout", str(opts.timeout_a + opts.timeout_b + 60)]
    logs = [open(sync / f"worker-{i}.err", "w+") for i in range(opts.procs)]  # noqa: SIM115 - closed below
    procs = []
    for i in range(opts.procs):
        argv = list(cmd)
        argv[argv.index("--worker") + 1] = str(i)
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=logs[i], text=True, env=env))
    failures: list[str] = []
    started = time.monotonic()
    (sync / "go.tmp").write_text(repr(time.time()))
    os.replace(sync / "go.tmp", sync / "go")  # whole: workers read the start time from it

    def finished(i: int, name: str | None) -> bool:
        return procs[i].poll() is not None or (name is not None and (sync / f"{name}-{i}").exists())

    def wait_phase(name: str | None, limit: float) -> list[int]:
        """Wait until every worker finished the phase (its done file, or exited); returns the stragglers."""
        deadline = time.monotonic() + limit
        while not all(finished(i, name) for i in range(opts.procs)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [i for i in range(opts.procs) if not finished(i, name)]

    def lock_holder(entry: str) -> str:
        lock = Path(entry).parent / f"{Path(entry).name}.lock"
        pids = flock_holders(lock)
        workers = {p.pid: i for i, p in enumerate(procs)}
        names = [f"worker {workers[pid]}" if pid in workers else
                 "the stampede's parent (--hold-lock)" if pid == os.getpid() else f"pid {pid} (no worker)"
                 for pid in pids]
        return ", ".join(names) or "no process (per /proc/locks)"

    def read_logs() -> list[str]:
        # Through the path: the parent's descriptor shares its offset with the worker's stderr.
        return [Path(f.name).read_text(errors="replace") for f in logs]

    def report_late(phase: str, late: list[int], limit: float) -> None:
        """Stragglers: asked for their stacks (SIGUSR1), diagnosed while every lock is still held, killed."""
        for i in late:
            procs[i].send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        texts = read_logs()
        for i in late:
            failures.append(f"worker {i} did not finish phase {phase} within {limit:.0f} s; killed")
            print("\n".join(diagnose(i, texts, lock_holder)), flush=True)
        for i in late:
            procs[i].kill()

    late_a = wait_phase("done-A", opts.timeout_a)
    phase_a_s = time.monotonic() - started
    corrupted: dict[str, str] = {}
    if late_a:
        report_late("A", late_a, opts.timeout_a)
    else:
        entries = _entries(root, family)
        for entry, how in zip(entries, itertools.cycle(CORRUPTIONS)):
            if len(corrupted) == opts.corrupt:
                break
            corrupt(entry, how)
            corrupted[entry.name] = how
        if corrupted:  # a crashed compile's staging folder of a corrupted key: its rebuild must sweep it away
            stale = root / family / f".tmp-{entries[0].name[:16]}-crashed"
            stale.mkdir()
            (stale / cache.LIBRARY_FILE).write_bytes(b"\x7fELF partial")
    with contextlib.ExitStack() as held:
        if opts.hold_lock and corrupted:  # a test of the diagnosis: a lock that is never released
            held.enter_context(cache.key_lock(root, family, next(iter(corrupted))))
        started_b = time.monotonic()
        (sync / "go-B").touch()
        late_b = wait_phase(None, opts.timeout_b)
        phase_b_s = time.monotonic() - started_b
        if late_b:
            report_late("B", late_b, opts.timeout_b)
    texts = read_logs()
    reports = []
    for i, p in enumerate(procs):
        out, _ = p.communicate()
        logs[i].close()
        err = texts[i]
        line = next((x for x in out.splitlines() if x.startswith("STAMPEDE ")), None)
        if p.returncode != 0 or line is None:
            if i not in late_a + late_b:
                failures.append(f"worker {i} exited {p.returncode}: {err.strip().splitlines()[-3:]}")
            continue
        report = json.loads(line.removeprefix("STAMPEDE "))
        report["compiled_keys"] = _COMPILE_LINE.findall(err)
        reports.append(report)
        failures += [f"worker {i} {e}" for e in report["errors"]]
    total_s = time.monotonic() - started

    def total(phase: str, counter: str) -> int:
        return sum(r[phase][counter] for r in reports)

    if len(reports) == opts.procs:
        if total("A", "compiles") != len(wanted) or total("A", "rebuilds") != 0:
            failures.append(f"phase A: {total('A', 'compiles')} compiles and {total('A', 'rebuilds')} rebuilds "
                            f"for {len(wanted)} variants (want {len(wanted)} and 0)")
        want_b = len(corrupted)
        if total("B", "compiles") != want_b or total("B", "rebuilds") != want_b:
            failures.append(f"phase B: {total('B', 'compiles')} compiles, {total('B', 'rebuilds')} rebuilds "
                            f"after {want_b} corrupted entries (want {want_b} each)")
        per_key: dict[str, int] = {}
        for r in reports:
            for k in r["compiled_keys"]:
                per_key[k] = per_key.get(k, 0) + 1
        keys = [e.name[:16] for e in _entries(root, family)]
        expected = {k: 1 + any(name.startswith(k) for name in corrupted) for k in keys}
        if per_key != expected:
            failures.append(f"nvcc runs per key {per_key} != expected {expected}")
    folder = root / family
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".trash-"))] if folder.is_dir() else []
    if leftovers:
        failures.append(f"staging/trash folders left in the cache: {leftovers}")
    entries = _entries(root, family)
    if len(entries) != len(wanted):
        failures.append(f"{len(entries)} entries in the cache for {len(wanted)} variants")
    for entry in entries:
        problem = cache.check_entry(entry, entry.name, runtime.KEY_FORMAT)
        if problem is not None:
            failures.append(f"entry {entry.name[:16]} left {problem}")
    for f in failures:
        print(f"FAIL {f}")
    def slowest(phase: str) -> str:
        if not reports:
            return "no worker report"
        r = max(reports, key=lambda r: r[phase]["seconds"])
        variant, seconds = r[phase]["slowest_request"]
        return (f"slowest worker {r['worker']} {r[phase]['seconds']:.1f} s, its longest request variant {variant} "
                f"{seconds:.1f} s")

    verdict = "PASS" if not failures else f"FAIL ({len(failures)} problems)"
    print(f"jit_stampede {verdict}: {opts.procs} procs x {len(wanted)} variants, compiles A={total('A', 'compiles')} "
          f"B={total('B', 'compiles')} (corrupted {sorted(corrupted.values())}), phase A {phase_a_s:.1f} s "
          f"({slowest('A')}), phase B {phase_b_s:.1f} s ({slowest('B')}), total {total_s:.1f} s")
    shutil.rmtree(sync, ignore_errors=True)
    if not opts.keep and not opts.cache_dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--mode", choices=MODES, default="gpu")
    parser.add_argument("-p", "--procs", type=int, default=16)
    parser.add_argument("-n", "--variants", type=int, default=20)
    parser.add_argument("--corrupt", type=int, default=3, help="entries corrupted between the phases (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds each phase may take, unless --timeout-a / --timeout-b say (default 300)")
    parser.add_argument("--timeout-a", type=float, default=None, help="seconds for phase A (cold cache)")
    parser.add_argument("--timeout-b", type=float, default=None, help="seconds for phase B (corrupted entries)")
    parser.add_argument("--cache-dir", default=None, help="an empty folder for the cache (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache folder")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    # Tests of the hang report: the parent holds a corrupted entry's key lock through phase B.
    parser.add_argument("--hold-lock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sync-dir", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker is None and opts.corrupt > opts.variants:  # workers are not told --corrupt
        parser.error("--corrupt must not exceed --variants")
    opts.timeout_a = opts.timeout if opts.timeout_a is None else opts.timeout_a
    opts.timeout_b = opts.timeout if opts.timeout_b is None else opts.timeout_b
    return worker(opts) if opts.worker is not None else parent(opts)


if __name__ == "__main__":
    sys.exit(main())
