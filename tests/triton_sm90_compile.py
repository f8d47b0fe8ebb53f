"""Compile the layout Triton kernels for sm_90 without a GPU and print facts about their PTX as JSON.

Run as a script (tests/test_layout_kernels_compile.py does, in a fresh process): the test session sets
TRITON_INTERPRET=1, under which ``triton.jit`` yields interpreted functions that cannot be compiled.
"""

from __future__ import annotations

import json
import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from dg_moe.layout import _triton_kernels as kernels  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
ROUTING = {"src_ptr": "*bf16", "src_row_stride": "i32", "src_sf_ptr": "*fp32", "src_sf_row_stride": "i32",
           "src_sf_col_stride": "i32", "row_token_ptr": "*i64", "a_ptr": "*u8", "sfa_ptr": "*fp32",
           "rows_per_group": "i32", "sfa_group_stride": "i32", "sfa_col_stride": "i32"}
SCATTER = {**{k: v for k, v in ROUTING.items() if k != "row_token_ptr"}, "inverse_ptr": "*i32"}
INDEX = {"ids_ptr": "*i64", "inverse_ptr": "*i32", "masked_m_ptr": "*i32", "overflow_ptr": "*i32",
         "num_entries": "i32", "num_experts": "i32", "max_m": "i32"}
COUNTS = {"ids_ptr": "*i64", "counts_ptr": "*i32", "num_entries": "i32", "num_experts": "i32"}
OFFSETS = {"bases_ptr": "*i32", "starts_ptr": "*i32", "psum_ptr": "*i32", "num_blocks": "i32", "num_experts": "i32"}
PLACE = {"ids_ptr": "*i64", "bases_ptr": "*i32", "starts_ptr": "*i32", "inverse_ptr": "*i32", "layout_ptr": "*i32",
         "num_entries": "i32", "num_experts": "i32"}
ACTIVATION = {"x_ptr": "*bf16", "x_row_stride": "i32", "valid_ptr": "*i8", "q_ptr": "*u8", "sfa_ptr": "*fp32",
              "rows_per_group": "i32", "sfa_group_stride": "i32", "sfa_col_stride": "i32"}
REDUCE = {"y_ptr": "*bf16", "y_row_stride": "i32", "inverse_ptr": "*i32", "w_ptr": "*fp32", "w_row_stride": "i32",
          "w_col_stride": "i32", "out_ptr": "*i16", "width": "i32"}


def ptx_facts(fn, signature: dict[str, str], constants: dict[str, object]) -> dict[str, object]:
    signature = {**signature, **{name: "constexpr" for name in constants}}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants), target=TARGET,
                              options={"enable_fp_fusion": False, "num_warps": 4})
    ptx = compiled.asm["ptx"]
    return {
        "kernel": fn.__name__, "constants": {k: str(v) for k, v in constants.items()},
        "fma_f32": len(re.findall(r"\bfma\.rn\.f32\b", ptx)),
        "cvt_e4m3": len(re.findall(r"cvt\.rn\.satfinite\.e4m3x2\.f32", ptx)),
        "div_rn_f32": len(re.findall(r"\bdiv\.rn\.f32\b", ptx)),
        "local_memory": len(re.findall(r"\b(ld|st)\.local\b", ptx)),
    }


def main() -> None:
    facts = []
    for num_blocks in (1, 9, 56):  # one block, a full and a partial 8-block step, DeepSeek-V3's H
        for quantize in (True, False):
            signature = dict(ROUTING) if quantize else {**ROUTING, "src_ptr": "*u8"}
            for ue8m0 in (False, True):
                constants = {"NUM_BLOCKS": num_blocks, "QUANTIZE": quantize, "UE8M0": ue8m0, "CHUNK": 8}
                facts.append(ptx_facts(kernels.token_rows_to_fp8_kernel, signature, constants))
            scatter = dict(SCATTER) if quantize else {**SCATTER, "src_ptr": "*u8"}
            facts.append(ptx_facts(kernels.tokens_to_fp8_rows_kernel, scatter,
                                   {"TOP_K": 8, "NUM_BLOCKS": num_blocks, "QUANTIZE": quantize, "UE8M0": False,
                                    "CHUNK": 8}))
        # Row flags (the contiguous op's psum form), the masked op's counts and the contiguous op's per-row
        # experts, padding written or not.
        for valid in ("flags", "counts", "experts"):
            signature = ACTIVATION if valid == "flags" else {**ACTIVATION, "valid_ptr": "*i32"}
            for zero_padding in (True, False):
                facts.append(ptx_facts(kernels.silu_mul_to_fp8_kernel, signature,
                                       {"NUM_BLOCKS": num_blocks, "UE8M0": False, "CHUNK": 8, "VALID": valid,
                                        "ZERO_PADDING": zero_padding}))
    for top_k in (1, 8):
        facts.append(ptx_facts(kernels.weighted_reduce_kernel, REDUCE, {"TOP_K": top_k, "BLOCK": 1024}))
    # One decode token of top-8 (one chunk) to T = 512 (128 chunks), int64 and int32 ids.
    for ids_type, num_chunks in (("*i64", 1), ("*i64", 128), ("*i32", 32)):
        facts.append(ptx_facts(kernels.masked_route_index_kernel, {**INDEX, "ids_ptr": ids_type},
                               {"BLOCK": 32, "NUM_CHUNKS": num_chunks}))
    # The contiguous index kernels at the launcher's sizes (BLOCK 128, 4096-element tiles): E = 128 and
    # E = 512, one step over blocks to T*k = 32768 (256 blocks), int64 and int32 ids.
    for ids_type, experts_pad in (("*i64", 128), ("*i32", 512)):
        facts.append(ptx_facts(kernels.contiguous_block_counts_kernel, {**COUNTS, "ids_ptr": ids_type},
                               {"BLOCK": 128, "SUB": 4096 // experts_pad, "E_PAD": experts_pad}))
        facts.append(ptx_facts(kernels.contiguous_route_place_kernel, {**PLACE, "ids_ptr": ids_type},
                               {"BLOCK": 128, "SUB": 32}))
    for experts_pad, num_steps in ((128, 1), (128, 8), (512, 32)):
        facts.append(ptx_facts(kernels.contiguous_route_offsets_kernel, OFFSETS,
                               {"E_PAD": experts_pad, "STEP": 4096 // experts_pad, "NUM_STEPS": num_steps,
                                "ALIGN": 128}))
    json.dump(facts, sys.stdout)


if __name__ == "__main__":
    main()
