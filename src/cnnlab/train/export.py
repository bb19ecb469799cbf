"""Export a trained run for use without cnnlab: ONNX, safetensors or TorchScript.

    >>> from cnnlab.train.export import export
    >>> export("runs/pets", "onnx")["max_abs_diff"]        # writes runs/pets/best.onnx
    2.4e-07

- ``onnx``: exported with PyTorch's TorchScript-based ONNX exporter (opset 17, a dynamic batch
  dimension; input ``input`` float32 (N, C, H, W) normalized, output ``logits``), checked with
  ``onnx.checker`` and run in onnxruntime on a seeded random batch: the largest absolute
  difference from PyTorch's logits is reported and must be below ``ONNX_TOLERANCE`` (1e-4) --
  times the largest logit's size when that exceeds 1, as float32 rounding is relative -- or
  nothing is written.
- ``safetensors``: the weights (contiguous: a channels-last model's are not), with the config,
  the dataset's description (input size, mean, std, preprocessing) and the class names as
  metadata (JSON strings), read back and compared before the file is replaced.
- ``torchscript``: ``torch.jit.script`` where it works; where scripting fails (the ResNets'
  ``getattr`` over stages, for example) ``torch.jit.trace`` on the example batch, which fixes
  any data-dependent branch to the one taken (the models here have none in eval mode). The
  same metadata is stored as the extra file ``cnnlab.json``; the reloaded module is compared.

The ONNX and TorchScript files take normalized input; apply ``(x / 255 - mean) / std`` with the
mean and std in their metadata. Every file is written atomically, and only after its check.
The optional packages are the ``export`` extra: ``python -m pip install 'cnnlab[export]'``.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_bytes
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.inference import load_model
from cnnlab.train.predict import WEIGHTS, class_names, model_weights, preprocess_of

FORMATS = ("onnx", "safetensors", "torchscript")
SUFFIXES = {"onnx": ".onnx", "safetensors": ".safetensors", "torchscript": ".torchscript.pt"}
PACKAGES = {"onnx": ("onnx", "onnxruntime"), "safetensors": ("safetensors",), "torchscript": ()}
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17
EXPORT_FORMAT = "cnnlab-export/1"


def require(fmt: str) -> None:
    """Refuse an export whose optional packages are missing, naming the pip command."""
    missing = []
    for package in PACKAGES[fmt]:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise CnnlabError(f"exporting to {fmt} needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''}; install {'them' if len(missing) > 1 else 'it'} "
                          f"with `python -m pip install {' '.join(missing)}` (or `python -m pip install 'cnnlab[export]'`)")


def default_path(run: str | os.PathLike, fmt: str) -> Path:
    """Beside the checkpoint, named after it: runs/x/best.pt -> runs/x/best.onnx."""
    file = ckpt.resolve(run)
    return file.with_name(file.stem + SUFFIXES[fmt])


def metadata(state: dict[str, Any], file: Path, weights: str) -> dict[str, str]:
    """What a user of the exported file needs to know, as string values (safetensors' rule)."""
    meta = dict(state["dataset"])
    meta["classes"] = list(class_names(meta))
    meta["preprocess"] = preprocess_of(meta).to_dict()
    return {"format": EXPORT_FORMAT, "model": state["config"]["model"], "checkpoint": file.name,
            "epoch": str(state.get("epoch", "")), "weights": weights, "config": json.dumps(state["config"]),
            "dataset": json.dumps(meta), "classes": json.dumps(meta["classes"]),
            "input": "float32 (N, C, H, W) = (x / 255 - mean) / std, C, H, W = dataset.input_size"}


def contiguous_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as independent contiguous CPU tensors (safetensors refuses strided or shared ones)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def export(run: str | os.PathLike, format: str = "onnx", out: str | os.PathLike | None = None, *,
           weights: str = "model", batch: int = 4, seed: int = 0) -> dict[str, Any]:
    """Export the model of a run directory or checkpoint; returns what was written and checked.

    The result has ``path``, ``format``, ``bytes`` and, for ONNX and TorchScript,
    ``max_abs_diff`` (exported vs PyTorch logits on a seeded random batch of ``batch``
    normalized images) and ``method`` (``onnx``, ``script`` or ``trace``)."""
    if format not in FORMATS:
        raise CnnlabError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    if weights not in WEIGHTS:
        raise CnnlabError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHTS)}")
    require(format)
    file = ckpt.resolve(run)
    path = Path(out).expanduser() if out is not None else default_path(run, format)
    if path.is_dir():
        path = path / (file.stem + SUFFIXES[format])
    model, state = load_model(file, device="cpu")
    if weights == "ema":
        model.load_state_dict(model_weights(state, weights, file))
    model = model.to(memory_format=torch.contiguous_format).eval()
    meta = metadata(state, file, weights)
    c, h, w = state["dataset"]["input_size"]
    example = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = model(example)
    if format == "safetensors":
        data, result = _safetensors(model, meta)
    elif format == "onnx":
        data, result = _onnx(model, example, reference, meta, state["config"]["model"])
    else:
        data, result = _torchscript(model, example, reference, meta, state["config"]["model"])
    atomic_write_bytes(path, data)
    return {"path": str(path), "format": format, "bytes": len(data), "checkpoint": str(file), "weights": weights,
            **result}


def _safetensors(model: nn.Module, meta: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    from safetensors.torch import load, save

    tensors = contiguous_state(model)
    data = save(tensors, metadata=meta)
    back = load(data)
    if back.keys() != tensors.keys() or any(not torch.equal(back[k], v) for k, v in tensors.items()):
        raise CnnlabError("the safetensors file did not read back equal to the model's weights; nothing was written")
    return data, {"tensors": len(tensors)}


def _onnx(model: nn.Module, example: torch.Tensor, reference: torch.Tensor, meta: dict[str, str], name: str
          ) -> tuple[bytes, dict[str, Any]]:
    import numpy as np
    import onnx
    import onnxruntime

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as e:
        raise CnnlabError(f"model {name!r} could not be exported to ONNX ({_first_line(e)})") from None
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": example.numpy()})[0]
    diff = float(np.abs(got - reference.numpy()).max())
    single = session.run(["logits"], {"input": example[:1].numpy()})[0]  # the batch dimension is dynamic
    diff = max(diff, float(np.abs(single - reference[:1].numpy()).max()))
    limit = tolerance(reference)
    if not diff < limit:
        raise CnnlabError(f"onnxruntime's logits differ from PyTorch's by up to {diff:.3g} (the limit is "
                          f"{limit:.3g}); nothing was written")
    return data, {"max_abs_diff": diff, "method": "onnx", "opset": ONNX_OPSET, "tolerance": limit,
                  "max_abs_logit": float(reference.abs().max())}


def tolerance(logits: torch.Tensor) -> float:
    """``ONNX_TOLERANCE`` for logits up to 1 in size, relative beyond: float32 rounding differences
    grow with the values (an untrained DenseNet-BC-100 gives logits near 2.5e5, where a
    different summation order alone moves them by 0.1)."""
    return ONNX_TOLERANCE * max(1.0, float(logits.abs().max()))


def _torchscript(model: nn.Module, example: torch.Tensor, reference: torch.Tensor, meta: dict[str, str],
                 name: str) -> tuple[bytes, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module, method, why = torch.jit.script(model), "script", None
        except Exception as e:  # scripting rejects dynamic Python (e.g. getattr with a computed name)
            why = _first_line(e)
            try:
                module, method = torch.jit.trace(model, example, check_trace=False), "trace"
            except Exception as e2:
                raise CnnlabError(f"model {name!r} could neither be scripted ({why}) nor traced "
                                  f"({_first_line(e2)})") from None
        buffer = io.BytesIO()
        torch.jit.save(module, buffer, _extra_files={"cnnlab.json": json.dumps(meta)})
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data))
    with torch.no_grad():
        diff = float((loaded(example) - reference).abs().max())
    if not diff < tolerance(reference):
        raise CnnlabError(f"the TorchScript module's logits differ from the model's by up to {diff:.3g}; "
                          f"nothing was written")
    result = {"max_abs_diff": diff, "method": method, "max_abs_logit": float(reference.abs().max())}
    if why is not None:
        result["script_error"] = why
    return data, result


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]
