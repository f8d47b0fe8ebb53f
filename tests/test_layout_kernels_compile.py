"""CI (no GPU): the layout Triton kernels compile for sm_90, and their PTX keeps the numeric contract.

Triton's interpreter (how CI runs the kernels) does not compile them, so an error only the compiler
sees (a non-constexpr global, a type the backend rejects) would otherwise first show on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ptx_facts() -> list[dict]:
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_sm90_compile.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout)


def test_every_variant_compiles(ptx_facts):
    kernels = {f["kernel"] for f in ptx_facts}
    assert kernels == {"token_rows_to_fp8_kernel", "tokens_to_fp8_rows_kernel", "silu_mul_to_fp8_kernel",
                       "weighted_reduce_kernel", "masked_route_index_kernel", "contiguous_block_counts_kernel",
                       "contiguous_route_offsets_kernel", "contiguous_route_place_kernel"}
    assert len(ptx_facts) == 48


def test_no_fma_contraction_and_ieee_division(ptx_facts):
    # The reference rounds after each product and sum; IEEE division where it divides.
    for facts in ptx_facts:
        assert facts["fma_f32"] == 0, facts
        assert facts["local_memory"] == 0, facts
        quantizes = facts["kernel"] == "silu_mul_to_fp8_kernel" or facts["constants"].get("QUANTIZE") == "True"
        assert (facts["div_rn_f32"] > 0) == quantizes, facts


def test_fp8_written_with_the_hardware_rn_conversion(ptx_facts):
    for facts in ptx_facts:
        quantizes = facts["kernel"] == "silu_mul_to_fp8_kernel" or facts["constants"].get("QUANTIZE") == "True"
        assert (facts["cvt_e4m3"] > 0) == quantizes, facts
