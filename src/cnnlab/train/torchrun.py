"""torchrun as ``cnnlab train --nproc N`` starts it: torch's own launcher (``torch.distributed.run``),
except that a stop signal ends it with status 128 + the signal instead of a traceback.

torchrun turns SIGINT/SIGTERM into a ``SignalException`` after stopping its workers and lets it
escape, so every Ctrl-C printed some thirty lines of torch internals under cnnlab's own one-line
message. ``python -m cnnlab.train.torchrun ARGS`` takes torchrun's arguments unchanged.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as e:  # the workers are already stopped when this is raised
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
