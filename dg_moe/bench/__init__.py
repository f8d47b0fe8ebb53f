"""Benchmark harness: dg_moe beside its peers, one process, PERFORMANCE.md timing."""
