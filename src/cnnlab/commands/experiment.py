"""``cnnlab experiment``: list the lectures' experiments, or run one and print its verdict."""
from __future__ import annotations

import argparse
import sys

from cnnlab.errors import CnnlabError


def add_parsers(sub) -> None:
    p = sub.add_parser("experiment", help="reproduce a lecture's claim and get a verdict (see --list)",
                       description="Run one of the lectures' experiments. It writes results.csv, PNG figures and "
                                   "verdict.md into --out and prints the verdict. Finished configurations in --out "
                                   "are not recomputed, so a killed run continues where it stopped.")
    p.add_argument("name", nargs="?", help="the experiment, see --list")
    p.add_argument("--list", action="store_true", help="name each experiment with its claim, source and time")
    p.add_argument("--quick", action="store_true", help="the quick mode: at most 5 minutes on 2 CPU cores")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="independent repetitions (default 1)")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/experiments/NAME)")
    p.add_argument("--data", metavar="NAME", help="dataset, for the experiments that accept another (e.g. cifar10)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: on a shared 2-core machine one thread was 20x faster "
                        "than two for these small models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_experiment)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from cnnlab import experiments

    if args.list:
        for name in experiments.names():
            s = experiments.spec(name)
            print(f"{name}\n  claim:  {s.claim}\n  source: {s.source}\n"
                  f"  time:   quick {s.quick_time}, full {s.full_time}\n")
        return 0
    if not args.name:
        raise CnnlabError("name an experiment to run, or pass --list; valid: " + ", ".join(experiments.names()))
    experiments.spec(args.name)  # an unknown name lists the valid ones before anything is written
    if args.seeds < 1:
        raise CnnlabError(f"--seeds must be at least 1; received --seeds {args.seeds}")
    if args.threads < 1:
        raise CnnlabError(f"--threads must be at least 1; received --threads {args.threads}")
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc=args.name, unit=" configs", file=sys.stderr, leave=False)

    def progress(key: str) -> None:
        if bar is not None:
            bar.set_postfix_str(key[:40], refresh=False)
            bar.update(1)

    try:
        result = experiments.run(args.name, quick=args.quick, out=args.out, seeds=args.seeds,
                                 overwrite=args.overwrite, data_name=args.data, progress=progress,
                                 threads=args.threads)
    finally:
        if bar is not None:
            bar.close()
    print(result.summary())
    print(f"wrote {result.out}/verdict.md, results.csv, " + ", ".join(f.name for f in result.figures))
    return 0
