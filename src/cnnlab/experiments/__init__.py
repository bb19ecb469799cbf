"""The lectures' experiments, each reproducible from one call with a verdict.

    >>> from cnnlab import experiments
    >>> experiments.names()[:2]
    ['double-descent', 'init']
    >>> result = experiments.run("double-descent", quick=True, out="runs/exp/dd")
    >>> print(result.summary())

Each experiment is one module here, registered with ``@experiment`` (see ``base``); it writes
``results.csv``, PNG figures and ``verdict.md`` (claim, source, what was measured, verdict).
"""
from cnnlab.experiments.base import (FAILS, HOLDS, INCONCLUSIVE, Outcome, Result, Spec, Verdict, combine, names,
                                     run, spec)
from cnnlab.experiments.plots import plot_runs

__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "Outcome", "Result", "Spec", "Verdict", "combine", "names",
           "plot_runs", "run", "spec"]
