"""Arithmetic and presentation of `dg-moe bench gemm`'s results (pure, no GPU).

A result row (one case) is a dict:
- ``family``, ``label``, ``case`` (the case's description);
- ``times_us``: label -> microseconds, or a string saying why that call has no time;
- ``unit`` ("TFLOPS" or "GB/s") and ``throughput``: label -> value, for the timed calls;
- ``ratios``: dg_moe form -> DeepGEMM time / dg_moe time (> 1: dg_moe faster), None without both;
- ``bitwise``: dg_moe form -> whether its valid output rows equal DeepGEMM's bit for bit (only the
  forms both libraries ran); ``bitwise_equal``: all of them, None when nothing was compared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from .gemm_cases import FORMS, Case, MaskedCase, call_labels

SCHEMA = "dg_moe.bench.gemm/1"
TITLES = {
    "dense": "Dense FP8 GEMM (TFLOPS; GPU time, L2 flushed)",
    "contiguous": "Contiguous grouped FP8 GEMM (TFLOPS on valid rows; psum and per-row layouts)",
    "masked": "Masked grouped FP8 GEMM (GB/s: weights, valid A and D rows, scales)",
}

Time = float | str


def ratio(peer_us: Time | None, ours_us: Time | None) -> float | None:
    """``peer_us / ours_us`` when both are positive times, else None."""
    if isinstance(peer_us, float) and isinstance(ours_us, float) and peer_us > 0 and ours_us > 0:
        return peer_us / ours_us
    return None


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the values that are numbers; None when there are none."""
    logs = [math.log(v) for v in values if v is not None and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def throughput(case: Case, us: float) -> float:
    """TFLOPS for GEMMs priced by their work, GB/s for masked ones (decode: weight streaming)."""
    if isinstance(case, MaskedCase):
        return case.bytes_moved / us / 1e3
    return case.flops / us / 1e6


def unit(family: str) -> str:
    return "GB/s" if family == "masked" else "TFLOPS"


def result_row(case: Case, times_us: Mapping[str, Time], bitwise: Mapping[str, bool]) -> dict[str, object]:
    """One case's row, from its times and the forms whose outputs were compared."""
    forms = FORMS[case.family]
    return {
        "family": case.family,
        "label": case.label,
        "case": case.describe(),
        "times_us": dict(times_us),
        "unit": unit(case.family),
        "throughput": {k: throughput(case, v) for k, v in times_us.items() if isinstance(v, float) and v > 0},
        "ratios": {ours: ratio(times_us.get(peer), times_us.get(ours)) for ours, peer in forms.items()},
        "bitwise": dict(bitwise),
        "bitwise_equal": all(bitwise.values()) if bitwise else None,
    }


def geomeans(rows_by_family: Mapping[str, Sequence[Mapping[str, object]]]) -> dict[str, dict[str, object]]:
    """Per family and dg_moe form: the geomean of DeepGEMM time / dg_moe time, and how many cases had one."""
    out: dict[str, dict[str, object]] = {}
    for family, rows in rows_by_family.items():
        if family not in FORMS:
            continue
        out[family] = {}
        for form in FORMS[family]:
            values = [r["ratios"][form] for r in rows if r["ratios"].get(form) is not None]
            out[family][form] = {"geomean": geomean(values), "cases": len(values)}
    return out


def eager_row(dg_moe_us: Time, deepgemm_us: Time, case: Case) -> dict[str, object]:
    """The eager line: host-inclusive wall time per call of each library."""
    return {"case": case.describe(), "times_us": {"dg_moe": dg_moe_us, "deepgemm": deepgemm_us},
            "ratio": ratio(deepgemm_us, dg_moe_us)}


def document(meta: Mapping[str, object], rows_by_family: Mapping[str, Sequence[Mapping[str, object]]],
             eager: Mapping[str, object] | None) -> dict[str, object]:
    """The JSON written by ``--json``: everything measured, with the machine and the peer's status."""
    return {
        "schema": SCHEMA,
        "meta": dict(meta),
        "results": {family: list(rows) for family, rows in rows_by_family.items()},
        "geomeans": geomeans(rows_by_family),
        "eager": dict(eager) if eager is not None else None,
    }


def _cell(value: object, width: int, digits: int = 0) -> str:
    if isinstance(value, float):
        return f"{value:>{width}.{digits}f}"
    return f"{'n/a' if value is None or isinstance(value, str) else value:>{width}}"


def progress_line(index: int, total: int, row: Mapping[str, object], seconds: float) -> str:
    """What one finished case prints: each call's time, the ratios and the comparison."""
    times = ", ".join(f"{k} {v:.1f} us" if isinstance(v, float) else f"{k} n/a"
                      for k, v in row["times_us"].items())
    ratios = ", ".join(f"DG/{k} {v:.2f}" for k, v in row["ratios"].items() if v is not None) or "no ratio"
    return (f"[{row['family']} {index}/{total}] {row['label']}: {times}; {ratios}; "
            f"bitwise_equal={row['bitwise_equal']} ({seconds:.1f} s)")


def table(family: str, rows: Sequence[Mapping[str, object]]) -> list[str]:
    """The family's table: throughput of every call, the ratios, the comparison, then the geomeans
    and the reason behind every n/a."""
    labels = call_labels(family)
    forms = list(FORMS[family])
    width = max([len(r["label"]) for r in rows] + [4])
    head = f"{'case':<{width}} " + " ".join(f"{lab:>{max(len(lab), 8)}}" for lab in labels)
    head += " " + " ".join(f"{'DG/' + f:>{max(len(f) + 3, 8)}}" for f in forms) + "  bitwise"
    lines = [TITLES[family], head]
    reasons: dict[str, str] = {}
    for r in rows:
        cells = []
        for lab in labels:
            cells.append(_cell(r["throughput"].get(lab), max(len(lab), 8)))
            value = r["times_us"].get(lab)
            if isinstance(value, str):
                reasons.setdefault(lab, value)
        cells += [_cell(r["ratios"][f], max(len(f) + 3, 8), 2) for f in forms]
        equal = {True: "yes", False: "NO", None: "-"}[r["bitwise_equal"]]
        lines.append(f"{r['label']:<{width}} " + " ".join(cells) + f"  {equal}")
    for form, g in geomeans({family: rows})[family].items():
        value = "n/a" if g["geomean"] is None else f"{g['geomean']:.3f}"
        lines.append(f"geomean DeepGEMM / {form} time: {value} over {g['cases']} cases (> 1: dg_moe faster)")
    lines += [f"{lab}: {why}" for lab, why in reasons.items()]  # every reason starts with "n/a"
    return lines


def eager_line(eager: Mapping[str, object]) -> str:
    times = eager["times_us"]
    parts = [f"{k} {v:.1f} us" if isinstance(v, float) else f"{k} n/a ({v})" for k, v in times.items()]
    case = eager["case"]
    ratio_text = "n/a" if eager["ratio"] is None else f"{eager['ratio']:.2f}"
    return (f"Eager call {case['m']} x {case['n']} x {case['k']}, MN-major SFA, wall time per call: "
            f"{', '.join(parts)}; DeepGEMM / dg_moe {ratio_text}")
