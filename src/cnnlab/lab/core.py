"""The lab's state, independent of the web server: the current network, its dataset, the one
training job, the stream of points, and saving/loading runs inside the lab's directory.

    >>> lab = Lab("runs", datasets={"tiny": my_dataset})   # inject a dataset (tests), or
    >>> lab = Lab("runs")                                   # use the cached ones (MNIST...)
    >>> lab.set_model({"spec": layers, "data": "mnist"}); lab.start({"lr": 0.01})
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import data as cdata
from cnnlab import models, spec
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_text
from cnnlab.lab import views
from cnnlab.lab.job import Knobs, TrainingJob
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import build_model
from cnnlab.train.optim import OPTIMIZERS

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_POINTS = 200_000


class Busy(CnnlabError):
    """A request that needs the training job to be idle (or running) came at the wrong time."""


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


class Lab:
    def __init__(self, work_dir: str | Path, *, datasets: dict[str, cdata.Dataset] | None = None,
                 data_root: str | None = None, device: str = "cpu", max_steps: int | None = None) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._injected = dict(datasets or {})
        self._loaded: dict[str, cdata.Dataset] = {}
        self.data_root = data_root
        self.device = device
        self.max_steps = max_steps
        self.model_lock = threading.Lock()  # held by the training loop during each step
        self._lock = threading.RLock()  # the lab's own state
        self.model: nn.Module | None = None
        self.desc: dict[str, Any] = {}
        self.job: TrainingJob | None = None
        self.knobs = Knobs()
        self.points: list[dict[str, Any]] = []
        self.version = 0  # bumped whenever the network changes: the page clears its curves
        self.closed = False
        self._zoo_cache: dict[str, list[dict[str, Any]]] = {}

    # --- datasets ---------------------------------------------------------------------------------

    def dataset_names(self) -> list[str]:
        if self._injected:
            return list(self._injected)
        root = cdata.data_root(self.data_root)
        return [n for n in cdata.names() if (root / n / "cnnlab-uint8.npz").is_file()]

    def dataset(self, name: str) -> cdata.Dataset:
        if name in self._injected:
            return self._injected[name]
        if name not in self.dataset_names():
            raise CnnlabError(f"dataset {str(name)[:40]!r} is not available here; available: "
                              f"{', '.join(self.dataset_names()) or 'none'} (train it once with cnnlab train "
                              f"--data NAME to fetch it)")
        if name not in self._loaded:
            self._loaded[name] = cdata.load_dataset(name, self.data_root)
        return self._loaded[name]

    def _meta(self, key: str, ds: cdata.Dataset) -> dict[str, Any]:
        return {"name": key, "num_classes": ds.num_classes, "input_size": list(ds.input_size),
                "mean": list(ds.mean), "std": list(ds.std)}

    def zoo(self, data: str) -> list[dict[str, Any]]:
        """Registered models that run on ``data`` (built on the meta device: no memory, no time)."""
        if data in self._zoo_cache:
            return self._zoo_cache[data]
        fits = []
        for name in models.names():
            if self.closed:
                raise CnnlabError("the lab is shutting down")
            params = self._fits(name, data)
            if params is not None:
                fits.append({"name": name, "params": params, "paper": models.info(name).paper})
        self._zoo_cache[data] = fits
        return fits

    def _fits(self, name: str, data: str) -> int | None:
        """The parameter count of zoo model ``name`` built for ``data``, or None if it cannot run on it."""
        from cnnlab.inspect import check_input_size

        ds = self.dataset(data)
        try:
            with torch.device("meta"):
                m = build_model(TrainConfig(model=name), ds.num_classes, ds.input_size)
            check_input_size(m, ds.input_size)
        except Exception:  # a model that cannot take this input is simply not offered
            return None
        return models.count_params(m)

    # --- the network ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {"datasets": {n: self._dataset_info(n) for n in self.dataset_names()},
                    "specs": {n: spec.load(p) for n, p in sorted(spec.bundled().items())},
                    "work_dir": str(self.work_dir), "knobs": self.knobs.__dict__, "status": self.status(),
                    "optimizers": list(OPTIMIZERS)}

    def _dataset_info(self, name: str) -> dict[str, Any]:
        if name in self._injected:
            ds = self._injected[name]
            return {"input_size": list(ds.input_size), "classes": list(ds.classes)}
        s = cdata.spec(name)
        return {"input_size": list(s.input_size), "classes": list(s.classes)}

    def status(self) -> dict[str, Any]:
        job = self.job
        return {"state": job.state if job else "idle", "step": job.step if job else 0,
                "epoch": round(job.epoch, 3) if job else 0, "error": job.error if job else None,
                "model": self.desc.get("label"), "data": self.desc.get("data"), "version": self.version,
                "params": models.count_params(self.model) if self.model is not None else 0}

    def _training(self) -> bool:
        return self.job is not None and self.job.state in ("running", "paused")

    def _refuse_while_training(self, what: str) -> None:
        if self._training():
            raise Busy(f"cannot {what} while a network is training (step {self.job.step}); stop it first")

    def table(self, text: str, data: str) -> dict[str, Any]:
        """The Build view's table for spec text (JSON or YAML) on dataset ``data``."""
        try:
            layers = spec.parse(text)
        except CnnlabError as e:
            return {"rows": [], "total_params": 0, "error": str(e)}
        info = self._dataset_info(data) if data in self.dataset_names() else None
        size = tuple(info["input_size"]) if info else None
        classes = len(info["classes"]) if info else None
        try:
            return {**spec.table(layers, size, classes), "layers": layers}
        except CnnlabError as e:
            return {"rows": [], "total_params": 0, "error": str(e)}

    def set_model(self, request: dict[str, Any]) -> dict[str, Any]:
        """Build a network: ``{"data": name, "spec": text or layers}`` or ``{"data", "zoo": name}``."""
        data = request.get("data")
        with self._lock:
            self._refuse_while_training("change the network")
            ds = self.dataset(data)
            torch.manual_seed(int(request.get("seed", 0)))
            if "spec" in request:
                layers = request["spec"]
                layers = spec.parse(layers) if isinstance(layers, str) else spec.validate(layers)
                model = spec.build(layers, input_size=ds.input_size, num_classes=ds.num_classes)
                desc = {"kind": "spec", "spec": layers, "label": "layer list", "data": data}
            elif "zoo" in request:
                name = request["zoo"]
                if not isinstance(name, str) or name not in models.names() or self._fits(name, data) is None:
                    raise CnnlabError(f"model {str(name)[:40]!r} does not run on {data}; pick one from the list")
                model = build_model(TrainConfig(model=name), ds.num_classes, ds.input_size)
                desc = {"kind": "zoo", "zoo": name, "label": name, "data": data}
            else:
                raise CnnlabError("a network is a layer list ('spec') or a zoo model name ('zoo')")
            self._install(model.to(self.device), desc)
            return self.status()

    def _install(self, model: nn.Module, desc: dict[str, Any]) -> None:
        self.model, self.desc = model, desc
        self.job = None
        self.points = []
        self.version += 1

    # --- training ---------------------------------------------------------------------------------

    def _on_point(self, point: dict[str, Any]) -> None:
        with self._lock:
            if len(self.points) < MAX_POINTS:
                self.points.append({**point, "version": self.version})

    def start(self, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._lock:
            if self._training():
                raise Busy(f"a network is already training (step {self.job.step}); one training job at a time "
                           f"— pause or stop it first")
            if self.model is None:
                raise CnnlabError("build a network first (Build view), then train it")
            self.knobs = self.knobs.updated(knobs or {})
            previous = self.job
            self.job = TrainingJob(self.model, self.dataset(self.desc["data"]), self.knobs,
                                   on_point=self._on_point, lock=self.model_lock, device=self.device,
                                   max_steps=self.max_steps, seed=self.version,
                                   start_step=previous.step if previous else 0,
                                   start_examples=previous.examples if previous else 0)
            self.job.start()
            return self.status()

    def control(self, action: str) -> dict[str, Any]:
        with self._lock:
            if action not in ("pause", "resume", "stop"):
                raise CnnlabError(f"unknown action {str(action)[:20]!r}; valid: pause, resume, stop")
            if not self._training():
                raise Busy(f"nothing is training, so there is nothing to {action}")
            job = self.job
            getattr(job, action)() if action != "stop" else None
        if action == "stop":
            job.stop()  # outside the lab lock: the last points need it
        return self.status()

    def set_knobs(self, values: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.knobs = self.knobs.updated(values)
            if self.job is not None:
                self.job.set_knobs(self.knobs)
            return {"knobs": self.knobs.__dict__}

    def points_since(self, index: int) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            return self.points[index:], len(self.points)

    # --- looking inside ---------------------------------------------------------------------------

    def _image(self, index: int) -> tuple[torch.Tensor, int, cdata.Dataset]:
        if self.model is None:
            raise CnnlabError("build or load a network first")
        ds = self.dataset(self.desc["data"])
        if not isinstance(index, int) or not 0 <= index < len(ds.test_y):
            raise CnnlabError(f"test image index must be 0..{len(ds.test_y) - 1}; received {str(index)[:20]}")
        loader = cdata.BatchLoader(ds.test_x[index:index + 1], ds.test_y[index:index + 1], batch_size=1,
                                   mean=ds.mean, std=ds.std, shuffle=False, device=self.device)
        return loader.normalize(loader.x), int(ds.test_y[index]), ds

    def inside(self, index: int) -> dict[str, Any]:
        x, label, ds = self._image(index)
        with self.model_lock:
            result = views.activations(self.model, x)
            filters = views.first_filters(self.model)
        raw = ds.test_x[index]
        return {**result, "filters": filters, "label": label, "classes": list(ds.classes), "index": index,
                "image": {"shape": list(raw.shape), "bytes": raw.permute(1, 2, 0).flatten().tolist()},
                "step": self.job.step if self.job else 0}

    def conv(self, index: int, layer: int, channel: int, oy: int, ox: int, in_channel: int = 0) -> dict[str, Any]:
        x, _, _ = self._image(index)
        with self.model_lock:
            return views.conv_explained(self.model, x, layer, channel, oy, ox, in_channel)

    def predict(self, pixels: list[list[float]]) -> dict[str, Any]:
        if self.model is None:
            raise CnnlabError("build or load a network first")
        ds = self.dataset(self.desc["data"])
        if tuple(ds.input_size) != (1, 28, 28):
            raise CnnlabError(f"drawing needs a network for 1×28×28 digits; this one reads "
                              f"{'×'.join(map(str, ds.input_size))} images ({ds.name})")
        digit = views.mnist_like(pixels)
        loader = cdata.BatchLoader(digit.view(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), batch_size=1,
                                   mean=ds.mean, std=ds.std, shuffle=False, device=self.device)
        with self.model_lock, torch.inference_mode():
            was = self.model.training
            self.model.eval()
            try:
                logits = self.model(loader.normalize(loader.x))
            finally:
                self.model.train(was)
        probs = torch.softmax(logits[0].float(), 0).tolist()
        return {"probs": probs, "classes": list(ds.classes), "digit": digit.flatten().tolist()}

    # --- keeping it -------------------------------------------------------------------------------

    def _run_path(self, name: Any) -> Path:
        if not isinstance(name, str) or not RUN_NAME.match(name) or ".." in name:
            raise CnnlabError(f"a run name is letters, digits, '_', '-' and '.' (at most 64, no '..'); "
                              f"received {str(name)[:64]!r}")
        path = (self.work_dir / name).resolve()
        if path.parent != self.work_dir:
            raise CnnlabError(f"runs are kept directly inside {self.work_dir}; received {name!r}")
        return path

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.work_dir.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and ((p / ckpt.BEST).is_file() or (p / ckpt.LAST).is_file()):
                out.append({"name": p.name})
        return out

    def _config(self, data: str, run_dir: Path) -> dict[str, Any]:
        k = self.knobs
        base = {"data": data, "optimizer": k.optimizer, "lr": k.lr, "momentum": k.momentum,
                "batch_size": k.batch_size, "weight_decay": k.weight_decay, "schedule": "constant",
                "label_smoothing": 0.0,  # the lab trains with the plain cross-entropy
                "epochs": max(1, round(self.job.epoch)) if self.job else 1, "device": self.device}
        if self.desc["kind"] == "zoo":
            base["model"] = self.desc["zoo"]
        config = TrainConfig().to_dict()
        for key, value in base.items():
            if key in config:
                config[key] = value
        if self.desc["kind"] == "spec":
            hints = typing.get_type_hints(TrainConfig)
            hint = hints.get("spec")
            # ``cnnlab train --spec``: the layer list itself where the field holds data, else the
            # spec file saved beside the checkpoint.
            config["spec"] = str(run_dir / "spec.json") if hint in (str, str | None) else self.desc["spec"]
        return config

    def save(self, name: str) -> dict[str, Any]:
        """Save the current network as a run directory that ``cnnlab eval`` reads; the directory
        appears complete or not at all (written beside, then renamed)."""
        target = self._run_path(name)
        with self._lock:
            if self.model is None:
                raise CnnlabError("there is no network to save; build and train one first")
            if target.exists():
                raise CnnlabError(f"{target} already exists; pick another name")
            key = self.desc["data"]
            ds = self.dataset(key)
            with self.model_lock:
                weights = _cpu_state(self.model)
            epoch = self.job.epoch if self.job else 0
            config = self._config(key, target)
            history = [p for p in self.points if p.get("kind") in ("train", "test")]
            state = {"model": weights, "config": config, "dataset": self._meta(key, ds), "epoch": int(epoch),
                     "step": self.job.step if self.job else 0, "params": models.count_params(self.model),
                     "history": [{k: v for k, v in p.items() if k != "version"} for p in history[-5000:]]}
            if self.desc["kind"] == "spec":
                state["spec"] = self.desc["spec"]
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=self.work_dir))
        try:
            ckpt.save_checkpoint(tmp / ckpt.BEST, state)
            atomic_write_text(tmp / "config.json", json.dumps(state["config"], indent=2, sort_keys=True) + "\n")
            if "spec" in state:
                atomic_write_text(tmp / "spec.json", json.dumps({"layers": state["spec"]}, indent=2) + "\n")
            atomic_write_text(tmp / "lab.json", json.dumps({"saved": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                            "step": state["step"], "history": state["history"]}) + "\n")
            tmp.rename(target)  # atomic on one filesystem; fails if the name was taken meanwhile
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {"saved": str(target), "name": target.name}

    def load(self, name: str) -> dict[str, Any]:
        """Load a run directory inside the lab's directory (any zoo model, or a saved layer list)."""
        path = self._run_path(name)
        with self._lock:
            self._refuse_while_training("load a run")
            model, state = load_run(path)
            data = state["dataset"]["name"]
            self.dataset(data)  # the data must be here to look inside
            label = state["config"].get("model") if "spec" not in state else "layer list"
            desc = {"kind": "spec" if "spec" in state else "zoo", "spec": state.get("spec"),
                    "zoo": state["config"].get("model"), "label": f"{label} ({path.name})", "data": data}
            self._install(model.to(self.device), desc)
            return self.status()

    def shutdown(self) -> None:
        """Stop training (after its current step); nothing is being written then."""
        self.closed = True
        job = self.job
        if job is not None:
            job.stop()


def load_run(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A run's model and checkpoint state: ``cnnlab.train.load_model`` for zoo runs; a run saved
    from a layer list is rebuilt from the spec in its checkpoint."""
    file = ckpt.resolve(path)
    state = ckpt.load_checkpoint(file)
    if "spec" in state:
        meta = state["dataset"]
        model = spec.build(state["spec"], input_size=tuple(meta["input_size"]), num_classes=meta["num_classes"])
        ckpt.load_model_state(model, state, file)
        return model.eval(), state
    from cnnlab.train import load_model

    return load_model(path)
