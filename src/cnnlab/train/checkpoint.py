"""Checkpoints: one torch file per checkpoint, written atomically, verified on every load.

A training checkpoint (``last.pt``) holds the model weights, the optimizer and scheduler state,
the RNG state (and under ``ranks`` each process's own RNG, guard and partial-epoch state when
several trained together), the epoch and step, the dataset's shape and the resolved config, so
that a run can be resumed bit for bit and evaluated without its command line; it also carries
the weights of the best epoch so far, so that ``best.pt`` can always be rebuilt from it. A model
checkpoint (``best.pt``, ``init.pt``) holds only ``model``, ``config``, ``dataset`` and ``epoch``.

``torch.load`` does not check the zip's CRCs: a flipped bit in a tensor loads as an altered
weight. So every checkpoint stores ``sha256``, a digest of its whole content (every tensor's
dtype, shape and bytes, every other value), and ``load_checkpoint`` recomputes and compares it;
it also refuses non-finite weights (on save too) and checks the structure (the keys, the config,
the dataset), naming the first problem in one line. Loading never runs pickled code
(``weights_only=True``). A checkpoint written before digests existed (no ``sha256``) is still
accepted.
"""
from __future__ import annotations

import hashlib
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open

FORMAT = "cnnlab-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"
INIT = "init.pt"
MODEL_KEYS = ("model", "config", "dataset", "epoch")  # every checkpoint
TRAIN_KEYS = ("optimizer", "scheduler", "rng", "step", "history", "best_metric", "best_epoch")  # last.pt


class CorruptCheckpoint(CnnlabError):
    """A checkpoint whose content does not match its digest, or whose structure is wrong."""


# --- the content digest ----------------------------------------------------------------------------

def content_digest(state: Any) -> str:
    """sha256 over a checkpoint's content, independent of how torch lays out the zip file.

    Dicts are hashed in key order (keys with their type), tensors as dtype, shape and raw bytes,
    floats exactly (``float.hex``), everything else by type and ``repr``.
    """
    h = hashlib.sha256()
    stack = [state]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(b"T" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            items = sorted(v.items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0])))
            h.update(b"D" + struct.pack("<q", len(items)))
            for k, value in reversed(items):
                stack.append(value)
                stack.append(("key", type(k).__name__, str(k)))
        elif isinstance(v, (list, tuple)):
            h.update((b"L" if isinstance(v, list) else b"U") + struct.pack("<q", len(v)))
            stack.extend(reversed(v))
        elif isinstance(v, float):
            h.update(b"F" + v.hex().encode())
        else:
            h.update(b"V" + type(v).__name__.encode() + b":" + repr(v).encode())
    return h.hexdigest()


# --- saving ------------------------------------------------------------------------------------

def first_nonfinite(weights: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor in ``weights`` holding NaN or infinity."""
    for name, t in weights.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and \
                not bool(torch.isfinite(t).all()):
            return name
    return None


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with its format marker and content digest.

    Refuses (``CnnlabError``) weights that hold NaN or infinity: a non-finite checkpoint is
    never written, so the previous one stays the last good one.
    """
    bad = first_nonfinite(state.get("model", {}))
    if bad is not None:
        raise CnnlabError(f"refusing to save {path}: the weight {bad!r} holds NaN or infinity")
    payload = {k: v for k, v in state.items() if k not in ("format", "sha256")}
    payload = {"format": FORMAT, **payload}
    payload["sha256"] = content_digest({k: v for k, v in payload.items() if k != "sha256"})
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def model_checkpoint(state: dict[str, Any], model_state: dict[str, torch.Tensor] | None = None,
                     **extra: Any) -> dict[str, Any]:
    """The model-only checkpoint of ``state`` (``best.pt``, ``init.pt``): weights, config, dataset,
    epoch, and ``spec`` when the model was built from a layer list."""
    out = {"model": state["model"] if model_state is None else model_state, "config": state["config"],
           "dataset": state["dataset"], "epoch": state["epoch"]}
    for key in ("spec", "params"):
        if key in state:
            out[key] = state[key]
    out.update(extra)
    return out


# --- RNG ---------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- loading -----------------------------------------------------------------------------------

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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    training: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely and verify it: digest, structure, finite weights.

    ``training=True`` also requires what resuming needs (optimizer, scheduler, RNG, history).
    A corrupt, foreign or malformed file is one clear ``CnnlabError``.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise CorruptCheckpoint(f"{path} is not a readable cnnlab checkpoint (corrupt: it declares more data "
                                f"than fits in memory)") from None
    except Exception as e:  # any failure to unpickle means the file is not usable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptCheckpoint(f"{path} is not a readable cnnlab checkpoint (corrupt or truncated: "
                                f"{first[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path} is not a cnnlab checkpoint (no {FORMAT!r} marker)")
    expected = state.pop("sha256", None)
    if expected is not None:
        if content_digest(state) != expected:
            raise CorruptCheckpoint(f"{path} is corrupt: its content does not match the sha256 stored in it "
                                    f"(a damaged file or a bit flip); use another checkpoint or retrain")
    validate_state(state, path, training=training)
    return state


def _problem(state: dict[str, Any], training: bool) -> str | None:
    """The first structural problem of a loaded checkpoint, or None."""
    keys = MODEL_KEYS + (TRAIN_KEYS if training else ())
    for key in keys:
        if key not in state:
            return f"the key {key!r} is missing"
    model = state["model"]
    if not isinstance(model, dict) or not model:
        return "'model' is not a mapping of weights"
    for name, t in model.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            return f"the weight {str(name)[:60]!r} is not a tensor"
    if not isinstance(state["config"], dict) or not isinstance(state["config"].get("model"), str):
        return "'config' is not a training config with a model name"
    meta = state["dataset"]
    if not isinstance(meta, dict):
        return "'dataset' is not a mapping"
    for key in ("name", "num_classes", "input_size"):
        if key not in meta:
            return f"'dataset' lacks {key!r}"
    size = meta["input_size"]
    if not (isinstance(meta["num_classes"], int) and meta["num_classes"] >= 1 and isinstance(size, (list, tuple))
            and len(size) == 3 and all(isinstance(s, int) and s >= 1 for s in size)):
        return f"'dataset' has an impossible shape ({meta['num_classes']!r} classes of {size!r})"
    for key in ("mean", "std"):
        if key in meta and not (isinstance(meta[key], (list, tuple)) and len(meta[key]) == size[0] and
                                all(isinstance(v, (int, float)) and math.isfinite(v) for v in meta[key])):
            return f"'dataset' has an impossible {key} ({str(meta[key])[:60]})"
    if "std" in meta and any(v <= 0 for v in meta["std"]):
        return "'dataset' has a non-positive std"
    if not isinstance(state["epoch"], int) or state["epoch"] < 0:
        return f"'epoch' is not a whole number ({state['epoch']!r})"
    if training:
        if not isinstance(state["optimizer"], dict) or not isinstance(state["scheduler"], dict):
            return "the optimizer or scheduler state is not a mapping"
        if not isinstance(state["rng"], dict) or not isinstance(state["rng"].get("torch"), torch.Tensor):
            return "the RNG state is missing"
        if not isinstance(state["history"], list) or len(state["history"]) != state["epoch"]:
            return "the history does not have one row per epoch"
        if not isinstance(state["step"], int) or not isinstance(state["best_epoch"], int):
            return "'step' or 'best_epoch' is not a whole number"
        if "best_model" in state and not isinstance(state["best_model"], dict):
            return "'best_model' is not a mapping of weights"
        if "ranks" in state:
            return _ranks_problem(state["ranks"])
    return None


def _ranks_problem(ranks: Any) -> str | None:
    """The first problem of the per-process states (``ranks``) of a data-parallel ``last.pt``."""
    if not isinstance(ranks, list) or not ranks:
        return "'ranks' is not a list of the processes' states"
    for rank, own in enumerate(ranks):
        if not isinstance(own, dict) or not isinstance(own.get("rng"), dict) or \
                not isinstance(own["rng"].get("torch"), torch.Tensor):
            return f"the RNG state of process {rank} is missing"
        for key in ("guard", "partial"):
            if own.get(key) is not None and not isinstance(own[key], dict):
                return f"the {key} state of process {rank} is not a mapping"
    return None


def validate_state(state: dict[str, Any], path: str | os.PathLike, *, training: bool = False) -> None:
    """Raise ``CorruptCheckpoint`` naming the first structural problem or non-finite weight."""
    problem = _problem(state, training)
    if problem is not None:
        raise CorruptCheckpoint(f"{path} is not a usable cnnlab checkpoint: {problem}")
    for key in ("model", "best_model"):
        bad = first_nonfinite(state.get(key) or {})
        if bad is not None:
            raise CorruptCheckpoint(f"{path} holds non-finite weights ({bad!r} has NaN or infinity in {key!r}); "
                                    f"the run diverged before it was saved or the file was altered")


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike,
                     key: str = "model") -> None:
    """Load weights, turning a key or shape mismatch into one sentence naming both models and
    the first differing weight."""
    weights = state[key]
    saved = state.get("config", {}).get("model", "?") if isinstance(state.get("config"), dict) else "?"
    own = model.state_dict()
    detail = None
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing:
        detail = f"the weight {missing[0]!r} is missing" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    elif unexpected:
        detail = f"it has an unexpected weight {unexpected[0]!r}"
    else:
        for k, t in own.items():
            if tuple(weights[k].shape) != tuple(t.shape):
                detail = f"{k!r} has shape {tuple(weights[k].shape)}, the model expects {tuple(t.shape)}"
                break
    if detail is not None:
        raise CnnlabError(f"{path} holds weights of model {saved!r} that do not fit this model ({detail[:160]})")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CnnlabError(f"{path} holds weights of model {saved!r} that do not fit this model ({first[:160]})") \
            from None
