"""The driver bindings' ctypes structs and enum values against cuda.h (no GPU): a small C program
compiled against the CUDA headers prints what the C compiler sees, and Python must agree."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dg_moe.jit import cuda_driver as cu

# Each: (Python value, the C expression printing cuda.h's).
ENUMS = {
    "CUDA_SUCCESS": "CUDA_SUCCESS",
    "CUDA_ERROR_INVALID_CONTEXT": "CUDA_ERROR_INVALID_CONTEXT",
    "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES": "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES",
    "CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION": "CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION",
    "CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL": "CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL",
    "CU_TENSOR_MAP_DATA_TYPE_UINT8": "CU_TENSOR_MAP_DATA_TYPE_UINT8",
    "CU_TENSOR_MAP_DATA_TYPE_FLOAT32": "CU_TENSOR_MAP_DATA_TYPE_FLOAT32",
    "CU_TENSOR_MAP_DATA_TYPE_BFLOAT16": "CU_TENSOR_MAP_DATA_TYPE_BFLOAT16",
    "CU_TENSOR_MAP_INTERLEAVE_NONE": "CU_TENSOR_MAP_INTERLEAVE_NONE",
    "CU_TENSOR_MAP_SWIZZLE_NONE": "CU_TENSOR_MAP_SWIZZLE_NONE",
    "CU_TENSOR_MAP_SWIZZLE_32B": "CU_TENSOR_MAP_SWIZZLE_32B",
    "CU_TENSOR_MAP_SWIZZLE_64B": "CU_TENSOR_MAP_SWIZZLE_64B",
    "CU_TENSOR_MAP_SWIZZLE_128B": "CU_TENSOR_MAP_SWIZZLE_128B",
    "CU_TENSOR_MAP_L2_PROMOTION_L2_256B": "CU_TENSOR_MAP_L2_PROMOTION_L2_256B",
    "CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE": "CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE",
    "TENSOR_MAP_BYTES": "sizeof(CUtensorMap)",
}
# (Python struct, C type, fields whose offsets are compared; a nested field is "outer.inner").
STRUCTS = [
    (
        cu.CUlaunchConfig,
        "CUlaunchConfig",
        [
            "gridDimX",
            "gridDimY",
            "gridDimZ",
            "blockDimX",
            "blockDimY",
            "blockDimZ",
            "sharedMemBytes",
            "hStream",
            "attrs",
            "numAttrs",
        ],
    ),
    (
        cu.CUlaunchAttribute,
        "CUlaunchAttribute",
        ["id", "value", "value.clusterDim.x", "value.clusterDim.y", "value.clusterDim.z"],
    ),
    (cu.CUlaunchAttributeValue, "CUlaunchAttributeValue", ["clusterDim"]),
]


def _cuda_include() -> Path | None:
    roots = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    try:
        from dg_moe.jit.nvrtc import get_nvrtc

        roots.insert(0, str(get_nvrtc().cuda_include.parent))
    except Exception:  # no NVRTC: the toolkit's headers may still be there
        pass
    for root in filter(None, roots):
        include = Path(root) / "include"
        if (include / "cuda.h").is_file():
            return include
    return None


def _offset(py_type: type, path: str) -> int:
    offset = 0
    for name in path.split("."):
        field = getattr(py_type, name)
        offset += field.offset
        py_type = dict(py_type._fields_)[name]
    return offset


def _c_program() -> str:
    lines = ["#include <cuda.h>", "#include <stddef.h>", "#include <stdio.h>", "int main(void) {", 'printf("{");']
    items = [(f"enum.{name}", f"(long long)({expr})") for name, expr in ENUMS.items()]
    for _, c_type, fields in STRUCTS:
        items.append((f"size.{c_type}", f"(long long)sizeof({c_type})"))
        items.append((f"align.{c_type}", f"(long long)_Alignof({c_type})"))
        items += [(f"offset.{c_type}.{f}", f"(long long)offsetof({c_type}, {f})") for f in fields]
    for i, (key, expr) in enumerate(items):
        lines.append(f'printf("{"," if i else ""}\\"{key}\\": %lld", {expr});')
    lines += ['printf("}\\n");', "return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def cuda_h(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    compiler = shutil.which("cc") or shutil.which("gcc")
    include = _cuda_include()
    if compiler is None or include is None:
        pytest.skip(f"needs a C compiler ({compiler}) and cuda.h ({include})")
    folder = tmp_path_factory.mktemp("cuda_h")
    (folder / "layout.c").write_text(_c_program())
    subprocess.run(
        [compiler, "-std=c11", f"-I{include}", "layout.c", "-o", "layout"],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(subprocess.run([str(folder / "layout")], capture_output=True, text=True, check=True).stdout)


def test_enum_values_are_cuda_h_s(cuda_h: dict[str, int]) -> None:
    assert {name: getattr(cu, name) for name in ENUMS} == {name: cuda_h[f"enum.{name}"] for name in ENUMS}


@pytest.mark.parametrize("py_type,c_type,fields", STRUCTS, ids=[s[1] for s in STRUCTS])
def test_struct_layout_is_cuda_h_s(cuda_h: dict[str, int], py_type: type, c_type: str, fields: list[str]) -> None:
    assert ctypes.sizeof(py_type) == cuda_h[f"size.{c_type}"]
    assert ctypes.alignment(py_type) == cuda_h[f"align.{c_type}"]
    assert {f: _offset(py_type, f) for f in fields} == {f: cuda_h[f"offset.{c_type}.{f}"] for f in fields}


def test_a_missing_driver_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from dg_moe.errors import DeviceNotAvailableError

    monkeypatch.setattr(cu, "LIBRARY", "libcuda-that-does-not-exist.so.1")
    cu._open.cache_clear()
    try:
        with pytest.raises(DeviceNotAvailableError, match="libcuda-that-does-not-exist"):
            cu.get_driver()
    finally:
        cu._open.cache_clear()
