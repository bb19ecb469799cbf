"""Predict classes of image files with a trained run, applying the run's own preprocessing.

    >>> from cnnlab.train import load_predictor
    >>> predictor = load_predictor("runs/pets")
    >>> [p.top[0] for p in predictor.predict(["cat.jpg"], top_k=3)]
    [(0, 'cat', 0.93)]

Each image is decoded with Pillow into the run's channel count, resized so that it covers the
run's input size (shorter side to size / crop_pct) and centre-cropped, then normalized with the
mean and std saved in the checkpoint -- the evaluation preprocessing of ``cnnlab.data.folder``.
A run trained on an image folder records that preprocessing; for the built-in datasets the
input size alone defines it. Class names come from the checkpoint, else from the dataset's
specification, else they are the label numbers.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab import data as cdata
from cnnlab.data.imagefiles import IMAGE_EXTENSIONS, Preprocess, decode
from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.ema import ema_weights
from cnnlab.train.engine import resolve_device
from cnnlab.train.inference import load_model

WEIGHTS = ("model", "ema")


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[int, str, float]]  # (label, class name, probability), most probable first

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": [{"label": i, "class": c, "probability": p} for i, c, p in self.top]}


def class_names(meta: dict[str, Any]) -> tuple[str, ...]:
    """The class names of a checkpoint's dataset: saved ones, a built-in dataset's, or the labels."""
    n = meta["num_classes"]
    if meta.get("classes") and len(meta["classes"]) == n:
        return tuple(meta["classes"])
    if meta.get("name") in cdata.SPECS and len(cdata.spec(meta["name"]).classes) == n:
        return cdata.spec(meta["name"]).classes
    return tuple(str(i) for i in range(n))


def preprocess_of(meta: dict[str, Any]) -> Preprocess:
    """The evaluation preprocessing of a checkpoint's dataset (saved, or from its input size)."""
    c, h, w = meta["input_size"]
    if meta.get("preprocess"):
        pre = Preprocess.from_dict(meta["preprocess"])
        if (pre.channels, *pre.size) == (c, h, w):
            return pre
    return Preprocess((h, w), c)


def model_weights(state: dict[str, Any], weights: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The checkpoint's own weights (``"model"``) or their moving average (``"ema"``)."""
    if weights not in WEIGHTS:
        raise CnnlabError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHTS)}")
    if weights == "model":
        return state["model"]
    averaged = ema_weights(state)
    if averaged is None:
        raise CnnlabError(f"{path} holds no EMA weights (train with --ema DECAY to keep them); use weights=model")
    return averaged


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (folders: their images, recursively, in sorted order)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise CnnlabError(f"the folder {str(path)[:200]} holds no images ({', '.join(IMAGE_EXTENSIONS[:5])}, ...)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CnnlabError(f"no such image file or folder: {str(path)[:200]}")
    if not files:
        raise CnnlabError("no images given; pass image files or folders")
    return files


class Predictor:
    """A trained model with the preprocessing of its run: ``predict(paths)`` -> Predictions."""

    def __init__(self, model: nn.Module, classes: Sequence[str], pre: Preprocess, mean: Sequence[float],
                 std: Sequence[float], *, device: torch.device | str = "cpu", source: str = "") -> None:
        self.model = model.eval()
        self.classes = tuple(classes)
        self.preprocess = pre
        self.device = torch.device(device)
        c = pre.channels
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.source = source

    def images(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Decode and preprocess image files into a normalized float32 batch (N, C, H, W)."""
        x = torch.from_numpy(np.stack([decode(p, self.preprocess) for p in paths])).to(self.device)
        return (x.float() / 255.0 - self.mean) / self.std

    @torch.inference_mode()
    def probabilities(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Class probabilities (N, num_classes) of the images."""
        logits = self.model(self.images(paths))
        return torch.softmax(logits.float(), dim=1)

    def predict(self, paths: Sequence[str | os.PathLike], *, top_k: int = 5, batch_size: int = 64,
                progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
        """The ``top_k`` classes of each image with their probabilities (all images are decoded
        before any result is returned, so an unreadable file fails the whole call)."""
        if top_k < 1:
            raise CnnlabError(f"top-k must be at least 1; received {top_k}")
        if batch_size < 1:
            raise CnnlabError(f"batch size must be at least 1; received {batch_size}")
        k = min(top_k, len(self.classes))
        out: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start:start + batch_size])
            p, idx = self.probabilities(chunk).topk(k, dim=1)
            for path, probs, labels in zip(chunk, p.tolist(), idx.tolist()):
                out.append(Prediction(str(path), [(i, self.classes[i], q) for i, q in zip(labels, probs)]))
            if progress is not None:
                progress(len(out), len(paths))
        return out


def load_predictor(run: str | os.PathLike, *, device: str = "cpu", weights: str = "model") -> Predictor:
    """A Predictor for a run directory (its best.pt, else last.pt) or a checkpoint file."""
    if weights not in WEIGHTS:
        raise CnnlabError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHTS)}")
    model, state = load_model(run, device=device)
    if weights == "ema":
        model.load_state_dict(model_weights(state, weights, ckpt.resolve(run)))
    meta = state["dataset"]
    return Predictor(model, class_names(meta), preprocess_of(meta), meta["mean"], meta["std"],
                     device=resolve_device(device), source=str(ckpt.resolve(run)))
