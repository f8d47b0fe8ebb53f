"""The facts a benchmark result needs beside its numbers: GPU, clocks, library versions."""

from __future__ import annotations

import platform
import subprocess

import torch

import dg_moe

_SMI_FIELDS = ("clocks.sm", "clocks.max.sm", "clocks.applications.graphics", "power.limit", "driver_version")


def _nvidia_smi(index: int) -> dict[str, str]:
    """Clock and driver fields from nvidia-smi, or an ``error`` entry when it cannot answer."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=15, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return {"error": f"{type(err).__name__}: {err}"[:200]}
    return dict(zip(_SMI_FIELDS, (v.strip() for v in out.split(",")), strict=False))


def _sm_clock_mhz(index: int) -> int | str:
    """torch's reading of the SM clock (NVML through pynvml), or why there is none."""
    try:
        return int(torch.cuda.clock_rate(index))
    except Exception as err:  # pynvml missing or NVML unavailable: the nvidia-smi fields remain
        return f"n/a ({type(err).__name__})"


def machine_facts() -> dict[str, object]:
    """GPU name, SMs, clocks (torch and nvidia-smi; read when called, so call it right after timing),
    and the versions of Python, torch, CUDA and dg_moe."""
    facts: dict[str, object] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "dg_moe": dg_moe.__version__,
    }
    if not torch.cuda.is_available():
        return {**facts, "gpu": None}
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        **facts, "gpu": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1), "sm_clock_mhz": _sm_clock_mhz(index),
        "nvidia_smi": _nvidia_smi(index),
    }
