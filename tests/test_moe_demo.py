"""`dg-moe demo` at a small shape: both layouts run through fused_moe and pass the contract."""

from __future__ import annotations

import torch

from dg_moe import demo

SMALL = demo.DemoShape(tokens=12, hidden=256, intermediate=128, experts=4, top_k=2, shared_intermediate=128)


def test_run_demo_checks_both_layouts():
    results = demo.run_demo(torch.device("cpu"), SMALL)
    assert [r.mode for r in results] == ["contiguous", "masked"]
    for r in results:
        assert 0 < r.similarity_error < demo.SIMILARITY_LIMIT
        # Against the unquantised layer the FP8 rounding of weights and tokens shows too.
        assert r.bf16_similarity_error > r.similarity_error
        assert r.seconds > 0


def test_main_prints_each_layout_and_succeeds(monkeypatch, capsys):
    monkeypatch.setattr(demo, "CPU_SHAPE", SMALL)
    assert demo.main("cpu") == 0
    out = capsys.readouterr().out
    assert "device: cpu (CPU reference implementation)" in out
    assert "contiguous: global similarity error vs float64 reference" in out
    assert "masked: global similarity error vs float64 reference" in out
    assert "mode auto would pick masked for 12 tokens" in out
    assert "FAIL" not in out
