"""Rebuild a saved run's model and evaluate it: ``load_model`` and ``evaluate_checkpoint``."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from cnnlab import data as cdata
from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import build_model, evaluate, resolve_device, use_channels_last

Log = Any


def load_model(path: str | os.PathLike, *, device: str = "cpu", backend: str | None = None
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (or run directory) with its weights, in eval mode."""
    file = ckpt.resolve(path)
    state = ckpt.load_checkpoint(file)
    cfg = TrainConfig.from_dict(state["config"])
    if backend is not None:
        cfg = cfg.updated({"backend": backend})
    meta = state["dataset"]
    model = build_model(cfg, meta["num_classes"], tuple(meta["input_size"]))
    ckpt.load_model_state(model, state, file)
    return model.to(resolve_device(device)).eval(), state


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    data: str | None = None,
    data_root: str | None = None,
    batch_size: int = 1000,
    device: str = "cpu",
    dataset: cdata.Dataset | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Top-1, top-5 and loss of a checkpoint on the test set of its dataset (or of ``data``)."""
    model, state = load_model(path, device=device)
    meta = state["dataset"]
    ds = dataset if dataset is not None else cdata.load_dataset(data or meta["name"], data_root, log=log)
    if ds.num_classes != meta["num_classes"] or list(ds.input_size) != list(meta["input_size"]):
        raise CnnlabError(
            f"the checkpoint was trained on {meta['name']} ({meta['num_classes']} classes of "
            f"{'x'.join(map(str, meta['input_size']))}); {ds.name} has {ds.num_classes} classes of "
            f"{'x'.join(map(str, ds.input_size))}")
    cfg = TrainConfig.from_dict(state["config"])
    channels_last = use_channels_last(cfg, model)
    loader = cdata.BatchLoader(ds.test_x, ds.test_y, batch_size=batch_size, shuffle=False, mean=ds.mean,
                               std=ds.std, device=resolve_device(device), channels_last=channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, loader)
    return {"checkpoint": str(ckpt.resolve(path)), "model": cfg.model, "data": ds.name, "epoch": state["epoch"],
            "test_top1": result["top1"], "test_top5": result["top5"], "test_loss": result["loss"],
            "samples": len(ds.test_y)}
