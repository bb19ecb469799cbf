"""The one exception type for a user's mistake.

A ``CnnlabError`` carries one clear sentence: what was received and what is accepted. The CLI
prints it without a traceback and exits with status 2. It subclasses ``ValueError`` so that
library callers can catch it the usual way.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlabError(ValueError):
    """A mistake in the user's input (a name, a value, a file), explained in one sentence."""


def unknown_name(kind: str, received: str, valid: Iterable[str]) -> CnnlabError:
    """Build the error for an unknown name, listing the closest valid names first.

    >>> str(unknown_name("model", "lenet", ["lenet5", "mlp"]))
    "unknown model 'lenet'; did you mean 'lenet5'? Valid: lenet5, mlp"
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(received, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return CnnlabError(f"unknown {kind} {received!r}; {hint}Valid: {', '.join(valid)}")
