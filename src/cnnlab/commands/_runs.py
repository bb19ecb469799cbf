"""Shared by the inspection commands (inspect, attack, report): load a run and its test data without
touching the network, check indices, and print a short table.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from cnnlab.errors import CnnlabError


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def dataset_on_board(name: str, root: str | None = None) -> None:
    """Raise one sentence saying which files to put where if ``name`` is not in the local cache.

    Inspection never downloads: a run can be looked at only where its data already is.
    """
    from cnnlab import data
    from cnnlab.data.datasets import CACHE_FILE

    spec = data.spec(name)
    directory = data.data_root(root) / name
    if (directory / CACHE_FILE).is_file():
        return
    sources = spec.sources()
    if any(all((directory / f).is_file() for f in s.files) for s in sources):
        return
    options = " or ".join(", ".join(s.files) for s in sources)
    raise CnnlabError(f"the run's dataset {name} is not on this machine; run `cnnlab data {name}` or put "
                      f"{options} in {directory}")


def load_run(run: str, *, device: str = "cpu", data_root: str | None = None) -> tuple[Any, dict, Any]:
    """(model in eval mode, checkpoint state, dataset) of a run directory or checkpoint file."""
    from cnnlab import data
    from cnnlab.train import load_model

    model, state = load_model(run, device=device)
    name = state["dataset"]["name"]
    dataset_on_board(name, data_root)
    ds = data.load_dataset(name, data_root, log=log)
    return model, state, ds


def check_index(index: int, n: int, what: str = "test image") -> None:
    if not 0 <= index < n:
        raise CnnlabError(f"--index must be a {what} index in [0, {n - 1}]; received {index}")


def parse_int_list(text: str, flag: str, *, lo: int, hi: int) -> list[int]:
    """``0-9`` or ``1,3,5`` or ``0-2,7`` -> sorted unique ints in [lo, hi]."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            a, sep, b = part.strip().partition("-")
            first, last = (int(a), int(b)) if sep else (int(a), int(a))
            out.update(range(first, last + 1))
    except ValueError:
        raise CnnlabError(f"{flag} takes numbers and ranges such as 0-9 or 1,3,5; received {text[:80]!r}") from None
    if not out or min(out) < lo or max(out) > hi:
        raise CnnlabError(f"{flag} must lie in [{lo}, {hi}]; received {text[:80]!r}")
    return sorted(out)


def parse_float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CnnlabError(f"{flag} takes numbers separated by commas; received {text[:80]!r}") from None
    if not values:
        raise CnnlabError(f"{flag} needs at least one number; received {text[:80]!r}")
    return values


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(lines)


def write_csv(path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    import csv
    import io

    from cnnlab.fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(headers)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def unit_images(ds, indices) -> Any:
    """Test images ``indices`` as float [0, 1] (N, C, H, W)."""
    return ds.test_x[indices].float() / 255.0


def normalizer(ds):
    """x in [0, 1] -> the normalized input the run's model was trained on."""
    import torch

    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return lambda x: (x - mean.to(x.device, x.dtype)) / std.to(x.device, x.dtype)


def run_model_name(state: dict) -> str:
    """The model's name for titles: the layer list's file stem for a run built from one."""
    cfg = state.get("config", {})
    spec = cfg.get("spec")
    if spec:
        from pathlib import Path

        return Path(str(spec)).stem
    return str(cfg.get("model", "model"))
