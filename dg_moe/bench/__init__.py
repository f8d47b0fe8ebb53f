"""Benchmark harness: dg_moe beside its peers, one process, timed as docs/performance.md prescribes."""
