"""The output options every `dg-moe bench` takes alike: ``--json PATH | --out DIR`` and ``--plot FILE.png``.

The JSON is the record; the chart is drawn from that same document (dg_moe.bench.plot), so a chart drawn
after the run with `dg-moe bench plot` is the one the run would have drawn. ``--plot`` is checked when the
options are parsed, before any GPU work: a missing matplotlib must not cost a benchmark run.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .plot import FORMATS, check_plot_path


def add_output_options(parser: argparse.ArgumentParser, json_name: str) -> None:
    """Add ``--json PATH``, ``--out DIR`` (for DIR/``json_name``) and ``--plot FILE`` to a bench parser."""
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", metavar="PATH", help="write every result, with the machine's facts, to PATH")
    out.add_argument("--out", metavar="DIR", help=f"write the JSON to DIR/{json_name}")
    parser.add_argument("--plot", metavar="FILE.png",
                        help=f"draw the roofline chart of the results to FILE ({', '.join(FORMATS)}; needs "
                             f'matplotlib: pip install "dg_moe[plot]")')


def write_json(path: str, doc: object) -> None:
    """Write ``doc`` to ``path``, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


@dataclass(frozen=True)
class Outputs:
    """Where a run's JSON and chart go (None: not asked for)."""

    json_path: str | None
    plot_path: str | None

    def write_json(self, doc: Mapping[str, object]) -> None:
        if self.json_path:
            write_json(self.json_path, doc)

    def write_plot(self, doc: Mapping[str, object]) -> None:
        if self.plot_path:
            from .plot import render

            # Through JSON and back: the chart sees exactly what the file records, as `bench plot` would.
            render(json.loads(json.dumps(doc)), self.plot_path)

    def write(self, doc: Mapping[str, object]) -> None:
        """The JSON, then the chart."""
        self.write_json(doc)
        self.write_plot(doc)

    def announce(self) -> str:
        """The closing lines that name the files written ("" when none was asked for)."""
        return "\n".join(f"{what}: {path}" for what, path in (("JSON", self.json_path), ("chart", self.plot_path))
                         if path)


def outputs(args: argparse.Namespace, json_name: str) -> Outputs:
    """The paths the parsed options ask for; raises UsageError now if ``--plot`` cannot be drawn."""
    if args.plot:
        check_plot_path(args.plot, "--plot")
    json_path = args.json or (os.path.join(args.out, json_name) if args.out else None)
    return Outputs(json_path, args.plot)
