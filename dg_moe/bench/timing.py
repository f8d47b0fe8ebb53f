"""GPU and eager timing as docs/performance.md (Method) prescribes.

GPU time: a CUDA graph of ``calls`` launches, each preceded by a 256 MB memset that flushes L2,
replayed several times; the same graph of memsets alone is subtracted; medians throughout. Peers
timed together have their replays interleaved.
Eager time: wall time per call of back-to-back eager calls (host cost included); peers timed together
have their rounds of calls interleaved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

FLUSH_BYTES = 256 * 2**20
CALLS = 10
"""Calls captured in one graph, each after an L2 flush."""
REPLAYS = 15
"""Rounds of replays; each round replays every graph once."""


def describe_error(err: BaseException) -> str:
    """One line for a failed call: the exception's type and the first line of its message."""
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return f"{type(err).__name__}: {text}"


def _capture(body: Callable[[], None]) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def gpu_times_us(fns: Sequence[Callable[[], None]], calls: int = CALLS, replays: int = REPLAYS) -> list[float | str]:
    """Median kernel time of each of ``fns`` in microseconds, L2 flushed before every call.

    The graphs' replays are interleaved (every fn once, and the flush-only graph, per round), so
    clock drift over the measurement falls on every peer alike rather than on whichever ran while
    the GPU was hotter. A fn that fails to run or to be captured gets the error's text instead.
    """
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")

    def flushed(fn: Callable[[], None] | None) -> Callable[[], None]:
        def body() -> None:
            for _ in range(calls):
                flush.zero_()
                if fn is not None:
                    fn()
        return body

    graphs: list[torch.cuda.CUDAGraph | str] = [_capture(flushed(None))]
    for fn in fns:
        try:
            fn()  # compile and warm outside the capture
            torch.cuda.synchronize()
            graphs.append(_capture(flushed(fn)))
        except Exception as err:  # a peer that cannot run reports why instead of a number
            graphs.append(f"n/a ({describe_error(err)})")
    times: list[list[float]] = [[] for _ in graphs]
    for _ in range(replays):
        for graph, samples in zip(graphs, times, strict=True):
            if isinstance(graph, str):
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    flush_ms = statistics.median(times[0])
    return [graph if isinstance(graph, str) else max(statistics.median(samples) - flush_ms, 0.0) * 1e3 / calls
            for graph, samples in zip(graphs[1:], times[1:], strict=True)]


def gpu_time_us(fn: Callable[[], None], calls: int = CALLS, replays: int = REPLAYS) -> float:
    """Median kernel time of ``fn`` in microseconds, L2 flushed before every call; raises if it fails."""
    fn()  # errors surface here, with their traceback, rather than as text
    (us,) = gpu_times_us([fn], calls, replays)
    if isinstance(us, str):
        raise RuntimeError(us)
    return us


def eager_us(fn: Callable[[], None], calls: int = 200) -> float:
    """Wall time per eager call in microseconds, including the host's launch path."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e6 / calls


EAGER_CALLS = 10
"""Back-to-back eager calls in one round of :func:`eager_times_us`."""
EAGER_ROUNDS = 5
"""Rounds of :func:`eager_times_us`; each round times every fn once."""


def eager_times_us(fns: Sequence[Callable[[], None]], calls: int = EAGER_CALLS,
                   rounds: int = EAGER_ROUNDS) -> list[float | str]:
    """Median wall time per eager call of each of ``fns`` in microseconds, host included.

    Each round runs ``calls`` back-to-back calls of every fn in turn, synchronised before and after,
    so drift falls on every peer alike, as in :func:`gpu_times_us`. A fn whose first call fails gets
    the error's text instead.
    """
    ready: list[Callable[[], None] | str] = []
    for fn in fns:
        try:
            fn()
            torch.cuda.synchronize()
            ready.append(fn)
        except Exception as err:  # a peer that cannot run reports why instead of a number
            ready.append(f"n/a ({describe_error(err)})")
    samples: list[list[float]] = [[] for _ in ready]
    for _ in range(rounds):
        for fn, times in zip(ready, samples, strict=True):
            if isinstance(fn, str):
                continue
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e6 / calls)
    return [fn if isinstance(fn, str) else statistics.median(times) for fn, times in zip(ready, samples, strict=True)]
