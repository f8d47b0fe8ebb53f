"""Roofline charts of the `dg-moe bench` results, drawn from their JSON alone (no GPU, no torch call).

One panel per family of cases, one group of bars per case: the throughput every timed library reached
(dg_moe first, then DeepGEMM or the MoE layer on its GEMMs, then the cuBLAS or torch peer), in the unit
the benchmark reports it in (TFLOPS for compute-bound GEMMs, GB/s for memory-bound ones: masked/decode
GEMMs, the decode MoE layer, the layout kernels). Each group carries its roof, the case's work done in
its floor time (the larger of FLOPs at the FP8 peak and bytes at the HBM bandwidth, docs/performance.md;
for the MoE layer the floors its rows record, FLOPs at the compute floor's rate), with dg_moe's share of
it printed above; a dashed line marks the flat peak. The peaks are the ones the run recorded in its meta
(dg_moe.bench.roofline), so a chart redrawn later shows what the run measured against.

matplotlib is optional (``pip install "dg_moe[plot]"``); only ``render`` imports it, and the benchmarks
call ``check_plot_path`` before their GPU work so a missing one fails in the first second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..cli_args import CommandParser
from ..errors import UsageError
from .roofline import peak_line, peaks_of, roof

FORMATS = (".png", ".svg", ".pdf")
INSTALL = 'pip install "dg_moe[plot]"'
SCHEMAS = ("dg_moe.bench.gemm/1", "dg_moe.bench.moe/2", "dg_moe.bench.layout/1")

# Ours in blues, DeepGEMM in oranges, the cuBLAS/torch peers in grey: the same library keeps its colour
# in every panel and every benchmark.
COLOURS = {
    "dg_moe": "#1f5fa8", "dg_moe_psum": "#1f5fa8", "dg_moe_rows": "#74a9cf", "triton": "#1f5fa8",
    "deepgemm": "#e6770b", "deepgemm_psum": "#e6770b", "deepgemm_rows": "#fdb863", "deepgemm_layer": "#e6770b",
    "cublas_blockwise": "#7f7f7f", "grouped_mm_bf16": "#7f7f7f", "bmm_bf16": "#7f7f7f", "bf16_grouped": "#7f7f7f",
    "torch": "#7f7f7f",
}
FALLBACK_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def require_matplotlib(what: str) -> None:
    """Raise UsageError naming the fix when matplotlib cannot be imported; ``what`` names the asker."""
    try:
        import matplotlib  # noqa: F401  (only its presence is checked here)
    except ImportError as err:
        raise UsageError(f"{what} needs matplotlib, which is not importable ({type(err).__name__}: {err}); "
                         f"install it with: {INSTALL}") from None


def check_plot_path(path: str, what: str) -> None:
    """Raise UsageError now, before any GPU work, if ``path`` cannot be drawn: a format matplotlib is not
    asked for here, or no matplotlib."""
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise UsageError(f"{what} {path!r}: the chart's file must end in {', '.join(FORMATS)}")
    require_matplotlib(what)


# --- what to draw (pure) ----------------------------------------------------------------------------


@dataclass
class Group:
    """One case: its label, each library's throughput, and its roof (None: no peak known)."""

    label: str
    values: dict[str, float]
    roof: float | None


@dataclass
class Panel:
    """One family of cases in one unit; ``series`` in bar order, ours first."""

    title: str
    unit: str
    series: list[str]
    groups: list[Group]
    peak: float | None
    notes: list[str] = field(default_factory=list)


def _rate(work: object, us: object, unit: str) -> float | None:
    """``work`` (FLOPs or bytes) per ``us`` microseconds in ``unit``; None for a time that is a reason."""
    if not isinstance(work, (int, float)) or not isinstance(us, (int, float)) or us <= 0 or work <= 0:
        return None
    return work / us / (1e6 if unit == "TFLOPS" else 1e3)


def _missing_notes(series: Sequence[str], rows: Sequence[Mapping[str, object]], groups: Sequence[Group]) -> list[str]:
    """Why a library has no bar in some cases: the first reason its JSON gives, and how often."""
    notes = []
    for label in series:
        absent = [i for i, g in enumerate(groups) if label not in g.values]
        if not absent:
            continue
        why = rows[absent[0]].get("times_us", {}).get(label, "not run")
        notes.append(f"{label}: no bar in {len(absent)} of {len(groups)} cases ({str(why)[:110]})")
    return notes


def _series(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Every label of the rows' ``times_us``, in the order the benchmark lists them (ours first)."""
    out: list[str] = []
    for row in rows:
        out += [label for label in row.get("times_us", {}) if label not in out]
    return out


def _gemm_panels(doc: Mapping[str, object], peak: Mapping[str, object]) -> list[Panel]:
    from .gemm_report import TITLES

    panels = []
    for family, rows in doc.get("results", {}).items():
        if not rows:
            continue
        unit = rows[0]["unit"]
        groups = []
        for row in rows:
            case = row["case"]
            ceiling = roof(unit, case.get("flops"), case.get("bytes"), peak)
            # The dg_moe wording of a label ("M=64 N=2112 K=7168") one field per line under its bars.
            groups.append(Group(row["label"].replace(" ", "\n"), dict(row["throughput"]), ceiling))
        series = _series(rows)
        panels.append(Panel(TITLES.get(family, family), unit, series, groups, peak_line(unit, peak),
                            _missing_notes(series, rows, groups)))
    eager = doc.get("eager")
    if panels and isinstance(eager, Mapping):
        times = ", ".join(f"{k} {v:.1f} us" for k, v in eager["times_us"].items() if isinstance(v, (int, float)))
        panels[-1].notes.append(f"eager call (host included, not charted): {times or 'n/a'}")
    return panels


def _moe_panels(doc: Mapping[str, object], peak: Mapping[str, object]) -> list[Panel]:
    rows = doc.get("results", [])
    compute = (doc.get("meta") or {}).get("compute_floor") or {}
    rate = compute.get("fp8_flops_per_s")
    roof_note = (f"roof: work over max(weight floor, compute floor at {rate / 1e12:.0f} TFLOPS), the floors "
                 "time_over_floor uses" if isinstance(rate, (int, float)) else "roof: work over the weight floor")
    panels = []
    # Decode batches stream the experts' weights (GB/s of the touched experts' FP8 weights); prefill batches
    # are priced by their expert GEMMs (TFLOPS), as GPU time and as eager wall time.
    for mode, key, unit, title in (
        ("masked", "gpu_us", "GB/s", "Fused MoE layer, decode (masked layout; GPU time of graph replays): GB/s of "
                                     "the touched experts' FP8 weights"),
        ("contiguous", "gpu_us", "TFLOPS", "Fused MoE layer, prefill (contiguous layout; GPU time of graph "
                                           "replays): TFLOPS of the expert GEMMs"),
        ("contiguous", "eager_us", "TFLOPS", "Fused MoE layer, prefill (contiguous layout; eager wall time, host "
                                             "included): TFLOPS of the expert GEMMs"),
    ):
        chosen = [r for r in rows if r.get("mode") == mode and isinstance(r.get(key), Mapping)]
        if not chosen:
            continue
        groups = []
        for r in chosen:
            work = r.get("flops") if unit == "TFLOPS" else r.get("weight_bytes")
            values = {label: _rate(work, us, unit) for label, us in r[key].items()}
            floors = [f for f in (r.get("weight_floor_us"), r.get("compute_floor_us")) if isinstance(f, (int, float))]
            groups.append(Group(f"{r['model']}\nT={r['tokens']}", {k: v for k, v in values.items() if v is not None},
                                _rate(work, max(floors), unit) if floors else None))
        times = [{"times_us": r[key]} for r in chosen]
        series = _series(times)
        panels.append(Panel(title, unit, series, groups, peak_line(unit, peak),
                            [*_missing_notes(series, times, groups), roof_note]))
    return panels


def _layout_panels(doc: Mapping[str, object], peak: Mapping[str, object]) -> list[Panel]:
    rows = doc.get("results", [])
    panels = []
    for layout in dict.fromkeys(r["layout"] for r in rows):
        chosen = [r for r in rows if r["layout"] == layout]
        tokens = ", ".join(str(t) for t in dict.fromkeys(r["tokens"] for r in chosen))
        # Layout ops do no FP8 math worth pricing: their floor is their bytes at the HBM bandwidth.
        groups = [Group(r["op"], dict(r["throughput"]), roof("GB/s", None, r["bytes"], peak)) for r in chosen]
        series = _series(chosen)
        panels.append(Panel(f"Layout ops, {layout} layout (T={tokens}): GB/s of compulsory bytes", "GB/s", series,
                            groups, peak_line("GB/s", peak), _missing_notes(series, chosen, groups)))
    return panels


def panels(doc: object) -> list[Panel]:
    """What to draw from a benchmark's JSON document; UsageError for anything else."""
    schema = doc.get("schema") if isinstance(doc, Mapping) else None
    if schema not in SCHEMAS:
        raise UsageError(f"not a dg-moe bench result (schema {schema!r}; expected one of {', '.join(SCHEMAS)}): "
                         "write one with `dg-moe bench gemm|moe|layout --json PATH`")
    peak = peaks_of(doc.get("meta") or {})
    build = {"gemm": _gemm_panels, "moe": _moe_panels, "layout": _layout_panels}[schema.split(".")[2].split("/")[0]]
    return build(doc, peak)


def headline(doc: Mapping[str, object]) -> str:
    """The chart's title: the benchmark, the GPU and its clock, the versions; then how to read the roofs."""
    meta = doc.get("meta") or {}
    name = doc["schema"].split(".")[2].split("/")[0]
    gpu = meta.get("gpu") or "unknown GPU"
    facts = [f"{meta['sms']} SMs" if meta.get("sms") else None,
             f"SM clock {meta['sm_clock_mhz']} MHz" if isinstance(meta.get("sm_clock_mhz"), int) else None]
    versions = ", ".join(f"{k} {meta[k]}" for k in ("dg_moe", "torch") if meta.get(k))
    facts_text = ", ".join(f for f in facts if f)
    first = f"dg-moe bench {name}: {gpu}" + (f" ({facts_text})" if facts_text else "") + (
        f"; {versions}" if versions else "")
    return first + "\nroof = work / max(FLOPs / FP8 peak, bytes / HBM bandwidth); % = dg_moe's share of the roof"


# --- drawing (matplotlib) ---------------------------------------------------------------------------


def _draw(ax: object, panel: Panel) -> None:
    """One panel: grouped bars, each group's roof as a black bar across it with ours' share, the peak dashed."""
    n = max(len(panel.series), 1)
    width = 0.8 / n
    colours = iter(FALLBACK_COLOURS)
    top = 0.0
    for i, label in enumerate(panel.series):
        xs = [g for g, group in enumerate(panel.groups) if label in group.values]
        heights = [panel.groups[g].values[label] for g in xs]
        colour = COLOURS.get(label) or next(colours, "#333333")
        hatch = "//" if label.endswith("_rows") else None  # the per-row layout beside the psum one
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], heights, width, label=label, color=colour, hatch=hatch,
               edgecolor="white", linewidth=0.5)
        top = max([top, *heights])
    roof_label = "roof: work / floor time"
    for x, group in enumerate(panel.groups):
        if group.roof is None:
            continue
        ax.hlines(group.roof, x - 0.45, x + 0.45, colors="black", linewidth=2, label=roof_label)
        roof_label = None  # one legend entry for every group's roof
        ours = group.values.get(panel.series[0]) if panel.series else None
        if ours is not None:
            ax.text(x, group.roof, f"{100 * ours / group.roof:.0f}%", ha="center", va="bottom", fontsize=7)
        top = max(top, group.roof)
    if panel.peak is not None:
        what = "FP8 peak" if panel.unit == "TFLOPS" else "HBM bandwidth"
        ax.axhline(panel.peak, color="#b22222", linestyle="--", linewidth=1,
                   label=f"{what} {panel.peak:.0f} {panel.unit}")
        top = max(top, panel.peak)
    if not any(group.values for group in panel.groups):
        ax.text(0.5, 0.5, "no timed call in this family", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylim(0, (top or 1.0) * 1.12)
    ax.set_xticks(range(len(panel.groups)))
    ax.set_xticklabels([g.label for g in panel.groups], fontsize=7)
    ax.set_xlim(-0.6, len(panel.groups) - 0.4)
    ax.set_ylabel(panel.unit)
    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    if panel.notes:
        # The x label is the one place constrained layout keeps clear of the tick labels.
        ax.set_xlabel("\n".join(panel.notes), fontsize=7, loc="left")


def render(doc: Mapping[str, object], path: str) -> None:
    """Draw the chart of a benchmark's JSON document to ``path`` (its suffix picks the format)."""
    todo = panels(doc)
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed

    widest = max([len(p.groups) for p in todo] + [1])
    # Wide enough for a group's multi-line tick label (about an inch), and for the two-line title.
    fig = Figure(figsize=(min(max(10.0, 2.5 + 1.15 * widest), 24.0), 1.2 + 4.2 * max(len(todo), 1)),
                 layout="constrained", dpi=110)
    fig.suptitle(headline(doc), fontsize=10)
    if not todo:
        fig.text(0.5, 0.5, "no results recorded", ha="center", va="center")
    for ax, panel in zip(fig.subplots(len(todo), 1, squeeze=False)[:, 0] if todo else [], todo, strict=True):
        _draw(ax, panel)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)


# --- `dg-moe bench plot` ----------------------------------------------------------------------------


def build_parser() -> CommandParser:
    """The options of `dg-moe bench plot`; nothing here needs a GPU."""
    parser = CommandParser(prog="dg-moe bench plot",
                           description="Draw the roofline chart of a `dg-moe bench gemm|moe|layout --json` result.")
    parser.add_argument("results", metavar="RESULTS.json", help="the JSON a benchmark wrote")
    parser.add_argument("--out", metavar="FILE.png",
                        help=f"the chart's file ({', '.join(FORMATS)}; default: RESULTS with .png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry of `dg-moe bench plot`: read the JSON, draw the chart, print its path."""
    args = build_parser().parse_args(argv)
    out = args.out or os.path.splitext(args.results)[0] + ".png"
    check_plot_path(out, "--out" if args.out else "the chart")
    try:
        with open(args.results) as f:
            doc = json.load(f)
    except OSError as err:
        raise UsageError(f"cannot read {args.results!r}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{args.results!r} is not JSON ({err})") from None
    try:
        render(doc, out)
    except UsageError as err:  # a document of no benchmark: name the file it came from
        raise UsageError(f"{args.results}: {err}") from None
    print(f"chart: {out}")
    return 0
