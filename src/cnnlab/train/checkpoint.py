"""Checkpoints: one torch file per checkpoint, written atomically, loaded with ``weights_only=True``.

A checkpoint holds the model weights, the optimizer and scheduler state, the RNG state, the
epoch and step, the dataset's shape and the resolved config, so that a run can be resumed bit for
bit and evaluated without its command line. Loading never runs pickled code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open

FORMAT = "cnnlab-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve(path: str | os.PathLike, which: str = BEST) -> Path:
    """A checkpoint file, or a run directory (then its ``best.pt``, else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in (which, LAST, BEST):
            if (path / name).is_file():
                return path / name
        raise CnnlabError(f"{path} holds no checkpoint ({BEST} or {LAST}); is it a cnnlab run directory?")
    if not path.is_file():
        raise CnnlabError(f"no such checkpoint or run directory: {path}")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a corrupt or foreign file is one clear error."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any failure to unpickle means the file is not usable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"{path} is not a readable cnnlab checkpoint (corrupt or truncated: {first[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (no {FORMAT!r} marker)")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """Load weights, turning a key or shape mismatch into one sentence that names both models."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        saved = state.get("config", {}).get("model", "?")
        detail = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CnnlabError(
            f"{path} holds weights of model {saved!r} that do not fit this model ({detail[:160]})"
        ) from None
