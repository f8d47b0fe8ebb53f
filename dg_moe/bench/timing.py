"""GPU and eager timing as PERFORMANCE.md prescribes.

GPU time: a CUDA graph of ``calls`` launches, each preceded by a 256 MB memset that flushes L2,
replayed several times; the same graph of memsets alone is subtracted; medians throughout.
Eager time: wall time per call of back-to-back eager calls (host cost included).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

FLUSH_BYTES = 256 * 2**20


def _graph_ms(body: Callable[[], None], replays: int) -> float:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gpu_time_us(fn: Callable[[], None], calls: int = 10, replays: int = 7) -> float:
    """Median kernel time of ``fn`` in microseconds, L2 flushed before every call."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    fn()  # compile and warm outside the capture
    torch.cuda.synchronize()

    def with_fn() -> None:
        for _ in range(calls):
            flush.zero_()
            fn()

    def flush_only() -> None:
        for _ in range(calls):
            flush.zero_()

    total = _graph_ms(with_fn, replays)
    flushes = _graph_ms(flush_only, replays)
    return max(total - flushes, 0.0) * 1e3 / calls


def eager_us(fn: Callable[[], None], calls: int = 200) -> float:
    """Wall time per eager call in microseconds, including the host's launch path."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e6 / calls
