"""Subcommands of ``cnnlab`` beyond the core ones in ``cnnlab.cli``, one module per area.

Each non-private module here defines ``add_parsers(sub)``, which adds its subcommands to the
argparse sub-parser collection and sets ``func`` on each (a handler ``(args) -> int``). Modules
are discovered automatically, so an area adds its commands without editing ``cli.py``. They parse
and dispatch only: heavy imports (torch, matplotlib) happen inside the handlers, so that
``cnnlab --help`` stays fast.
"""
from __future__ import annotations

import importlib
import pkgutil


def add_all(sub) -> None:
    """Call ``add_parsers(sub)`` of every command module, in name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.add_parsers(sub)
