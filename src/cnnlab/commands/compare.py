"""``cnnlab compare``: several training runs' metric per epoch on one figure."""
from __future__ import annotations

import argparse

from cnnlab.errors import CnnlabError


def add_parsers(sub) -> None:
    p = sub.add_parser("compare", help="plot a metric of several runs on one figure",
                       description="Read each run's metrics.csv (written by `cnnlab train`) and draw the chosen "
                                   "column against the epoch, one line per run, into a PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--metric", default="test_top1", help="a metrics.csv column (default test_top1)")
    p.add_argument("--x", default="epoch", help="the column for the horizontal axis (default epoch)")
    p.add_argument("--label", action="append", metavar="NAME", help="a legend label per run, in order")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from cnnlab.experiments.plots import plot_runs

    if not args.out.lower().endswith(".png"):
        raise CnnlabError(f"--out must name a .png file; received {args.out[:200]!r}")
    plot_runs(args.runs, args.out, metric=args.metric, labels=args.label, x=args.x)
    print(f"wrote {args.out}")
    return 0
