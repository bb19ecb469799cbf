"""Rebuild a saved run's model and evaluate it: ``load_model`` and ``evaluate_checkpoint``."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from cnnlab import data as cdata
from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import build_model, resolve_device

Log = Any


def load_model(path: str | os.PathLike, *, device: str = "cpu", backend: str | None = None,
               model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (or run directory) with its weights, in eval mode.

    The checkpoint is verified first (digest, structure, finite weights); a model built from a
    layer list is rebuilt from the list stored in the checkpoint (``state["spec"]``). ``model``: a
    module of your own (as given to ``fit(..., model=)``) to load the weights into, instead of
    rebuilding it from the import path the run recorded."""
    file = ckpt.resolve(path)
    state = ckpt.load_checkpoint(file)
    try:
        cfg = TrainConfig.from_dict(state["config"])
    except CnnlabError as e:
        raise ckpt.CorruptCheckpoint(f"{file} is not a usable cnnlab checkpoint: its config is invalid ({e})") \
            from None
    if backend is not None:
        cfg = cfg.updated({"backend": backend})
    meta = state["dataset"]
    layers = state.get("spec")
    if model is None:
        model = build_model(cfg, meta["num_classes"], tuple(meta["input_size"]), layers=layers)
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
    """Top-1, top-5 and loss of a checkpoint on the test set of its dataset (or of ``data``):
    ``evaluate_runs`` of one run, in the trainer's names."""
    from cnnlab.train.evaluation import evaluate_runs

    result = evaluate_runs([path], data=data, data_root=data_root, batch_size=batch_size, device=device,
                           dataset=dataset, log=log)
    member = result["members"][0]
    return {"checkpoint": member["checkpoint"], "model": member["model"], "data": result["data"],
            "epoch": member["epoch"], "test_top1": member["top1"], "test_top5": member["top5"],
            "test_loss": member["loss"], "samples": result["samples"]}
