"""tools/wgrad_ab_table.py: bench_wgrad logs of several kernel trees read into one side-by-side table."""

from __future__ import annotations

from types import ModuleType

import pytest

from .tool_modules import load_tool

HEADER = f"{'case':<50}     diff  c=d  DG diff  =DG | TFLOPS per library (us) | DG/ours | ours"


def _line(label: str, ours: str, theirs: str | None) -> str:
    peer = f"deepgemm   884.0 ({theirs:>8})" if theirs is not None else "deepgemm n/a (not imported)"
    return (f"{label:<50}  8.1e-09  yes  8.1e-09  yes | dg_moe   749.1 ({ours:>8})  {peer} |    0.85 | "
            "128x152 s6")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return load_tool("wgrad_ab_table")


def test_case_times_reads_both_libraries_and_skips_other_lines(tool: ModuleType) -> None:
    text = "\n".join([
        "NVIDIA H100 80GB HBM3 (132 SMs); torch 2.11",
        "  k_grouped G=4 M=4096 N=7168 sumK=30720: ks=[1792, 2688]",
        HEADER,
        _line("dense M=7168 N=2112 K=4096", "165.6", "140.3"),
        _line("k_grouped G=8 M=7168 N=2048 sumK=30720 (1 empty)", "1171.9", None),
        "dense M=1 N=1 K=1                                  failed: out of memory",
        "17 cases in 54 s",
    ])
    assert tool.case_times(text) == {
        "dense M=7168 N=2112 K=4096": (165.6, 140.3),
        "k_grouped G=8 M=7168 N=2048 sumK=30720 (1 empty)": (1171.9, None),
    }


def test_table_gives_each_tree_its_speed_over_the_first_and_over_deepgemm(tool: ModuleType) -> None:
    first = _line("dense M=4096 N=7168 K=4096", "300.0", "270.0")
    second = _line("dense M=4096 N=7168 K=4096", "250.0", "275.0")
    rows = tool.table([("cur", first), ("new", second), ("empty", "")]).splitlines()
    assert rows[0].split() == ["case", "cur", "|", "new", "|", "empty"]
    cells = [cell.split() for cell in rows[2][50:].split("|")]
    assert cells == [["300.0", "1.00", "0.90"], ["250.0", "1.20", "1.10"], ["-"]]
