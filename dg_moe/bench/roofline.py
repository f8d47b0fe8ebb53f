"""The peaks every benchmark's floor is computed from, and the roof of one case (pure, no GPU).

docs/performance.md (Method) asks for two lower bounds on a call's time: its FLOPs at the GPU's peak rate
and its bytes at the memory bandwidth; the larger is the floor. The roof of a case is its work done in
the floor's time: in TFLOPS the FP8 peak for a compute-bound case, less for one that must stream its
weights; in GB/s the HBM bandwidth for a memory-bound case, less for one the math holds back.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..kernels.sm90_fp8_gemm.heuristic import PEAK_FP8_FLOPS_PER_SM

# Datasheet HBM bandwidth (bytes/s) by a substring of the device name, first match wins (so "H200" is
# tried before "H20"); an unknown GPU gets no floor. `dg-moe bench moe` prints its floor from this table.
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "H800": 3.35e12, "H20": 4.0e12}
HBM_SOURCE = "datasheet HBM bandwidth by GPU name (dg_moe/bench/roofline.py)"
FP8_SOURCE = ("the GEMM cost model's per-SM FP8 rate (1979 TFLOPS over an H100 SXM's 132 SMs) times the SM "
              "count; optimistic for GPUs clocked lower (H100 PCIe) or with throttled tensor cores (H20)")


# The compute floor of `dg-moe bench moe` (issue 16): the routed FLOPs at a dense FP8 rate GEMMs can approach,
# where the cost model's rate above is the datasheet peak. No measured peak is recorded here, so H100/H200 SXM
# (and H800, the same chip) take the rate issue 16's goals set, 1500 TFLOPS; the PCIe card is clocked lower
# and takes the cost model's rate (scaled by its SM count) instead, as any GPU not listed does.
COMPUTE_FLOOR_FLOPS_PER_S = {"H100 PCIe": None, "H200": 1.5e15, "H100": 1.5e15, "H800": 1.5e15}
COMPUTE_FLOOR_SOURCE = ("1500 TFLOPS, the dense FP8 rate issue 16's goals put the compute floor at for "
                        "H100/H200 SXM (not measured by this run; the datasheet peak is 1979 TFLOPS)")


def hbm_bandwidth(device_name: str) -> float | None:
    """Datasheet HBM bytes/s of the named GPU, or None."""
    return next((bw for key, bw in HBM_BYTES_PER_S.items() if key in device_name), None)


def fp8_peak(sms: int | None) -> float | None:
    """Dense FP8 FLOP/s of an SM90 GPU with ``sms`` SMs (the kernel cost model's rate), or None without a count."""
    return PEAK_FP8_FLOPS_PER_SM * sms if isinstance(sms, int) and sms > 0 else None


def compute_floor_rate(device_name: str, sms: int | None) -> dict[str, object]:
    """The FLOP/s a MoE layer's compute floor is priced at and where it comes from: ``{"fp8_flops_per_s": rate
    or None, "source": text}``, 1500 TFLOPS on an H100/H200 SXM, else the cost model's peak."""
    listed = next((key for key in COMPUTE_FLOOR_FLOPS_PER_S if key in device_name), None)
    if listed is not None and COMPUTE_FLOOR_FLOPS_PER_S[listed]:
        return {"fp8_flops_per_s": COMPUTE_FLOOR_FLOPS_PER_S[listed], "source": COMPUTE_FLOOR_SOURCE}
    rate = fp8_peak(sms)
    return {"fp8_flops_per_s": rate, "source": FP8_SOURCE if rate else "no FP8 rate known for this GPU"}


def peaks(device_name: str | None, sms: int | None) -> dict[str, object]:
    """The ``roofline`` entry of a benchmark's JSON meta: the peaks its chart measures cases against."""
    return {"fp8_flops_per_s": fp8_peak(sms), "hbm_bytes_per_s": hbm_bandwidth(device_name or ""),
            "fp8_source": FP8_SOURCE, "hbm_source": HBM_SOURCE}


def peaks_of(meta: Mapping[str, object]) -> dict[str, object]:
    """The peaks a JSON's meta recorded, else the ones its GPU name and SM count give (files written
    before the meta carried them)."""
    recorded = meta.get("roofline")
    if isinstance(recorded, Mapping):
        return dict(recorded)
    gpu, sms = meta.get("gpu"), meta.get("sms")
    return peaks(gpu if isinstance(gpu, str) else None, sms if isinstance(sms, int) else None)


def floor_s(flops: float | None, nbytes: float | None, peak: Mapping[str, object]) -> float | None:
    """The larger of the compute and the memory lower bound on the time, seconds; None when neither is known."""
    fp8, hbm = peak.get("fp8_flops_per_s"), peak.get("hbm_bytes_per_s")
    bounds = []
    if flops and isinstance(fp8, (int, float)) and fp8 > 0:
        bounds.append(flops / fp8)
    if nbytes and isinstance(hbm, (int, float)) and hbm > 0:
        bounds.append(nbytes / hbm)
    return max(bounds) if bounds else None


def roof(unit: str, flops: float | None, nbytes: float | None, peak: Mapping[str, object]) -> float | None:
    """The best throughput the case can reach, in ``unit`` ("TFLOPS" or "GB/s"): its work over its floor."""
    work = flops if unit == "TFLOPS" else nbytes
    floor = floor_s(flops, nbytes, peak)
    if not work or floor is None:
        return None
    return work / floor / (1e12 if unit == "TFLOPS" else 1e9)


def peak_line(unit: str, peak: Mapping[str, object]) -> float | None:
    """The flat ceiling of a chart in ``unit``: the FP8 peak in TFLOPS or the HBM bandwidth in GB/s."""
    value = peak.get("fp8_flops_per_s" if unit == "TFLOPS" else "hbm_bytes_per_s")
    if not isinstance(value, (int, float)) or value <= 0:
        return None
    return value / (1e12 if unit == "TFLOPS" else 1e9)
