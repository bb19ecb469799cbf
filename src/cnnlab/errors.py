"""The exception types for what a user can cause.

A ``CnnlabError`` carries one clear sentence: what was received and what is accepted. The CLI
prints it without a traceback and exits with its ``exit_code`` (2 for a mistake in the input).
It subclasses ``ValueError`` so that library callers can catch it the usual way.

Two kinds are not the input's fault and exit differently: ``DiskFullError`` (exit 1; the file
and the free space named) and the trainer's ``TrainingDiverged`` (exit 3).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

MAX_ECHO = 200  # never echo more than this many characters of a user's input


class CnnlabError(ValueError):
    """A mistake in the user's input (a name, a value, a file), explained in one sentence."""

    exit_code = 2


class DiskFullError(CnnlabError):
    """No space left on the device while writing a file (the previous version stays intact)."""

    exit_code = 1


def clip(text: object, limit: int = MAX_ECHO) -> str:
    """``repr``-free, one-line, at most ``limit`` characters of ``text`` for an error message."""
    s = str(text).replace("\n", "\\n").replace("\r", "\\r")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def unknown_name(kind: str, received: str, valid: Iterable[str]) -> CnnlabError:
    """Build the error for an unknown name, listing the closest valid names first.

    >>> str(unknown_name("model", "lenet", ["lenet5", "mlp"]))
    "unknown model 'lenet'; did you mean 'lenet5'? Valid: lenet5, mlp"
    """
    valid = sorted(valid)
    received = received if isinstance(received, str) else str(received)
    close = difflib.get_close_matches(received[:MAX_ECHO], valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    shown = repr(received) if len(received) <= MAX_ECHO else repr(received[:MAX_ECHO]) + "..."
    return CnnlabError(f"unknown {kind} {shown}; {hint}Valid: {', '.join(valid)}")
