"""Evaluation the way the lectures evaluate: top-1/top-5, test-time augmentation, ensembles and
the confusion matrix.

Both TTA and ensembles average softmax outputs (Ryu, ch. 3, "Ensemble learning" and "Test-time
data augmentation"): an ensemble is M = theta_1 m_1 + ... + theta_K m_K with theta_i >= 0 summing
to 1, and TTA is the ensemble (1/K) sum_i M(T_i(X)) of one model over K transformed inputs.

    >>> result = evaluate_runs(["runs/a", "runs/b"], tta="flip", weights=[0.7, 0.3])
    >>> result["ensemble"]["top1"], result["most_confused"][:3]
    >>> print(format_evaluation(result))
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab import data as cdata
from cnnlab.errors import CnnlabError, unknown_name
from cnnlab.fileio import atomic_open
from cnnlab.train.metrics import topk_correct

TTA_MODES = ("none", "flip", "crops", "10crop")
TTA_VIEWS = {"none": 1, "flip": 2, "crops": 5, "10crop": 10}


# --- test-time augmentation --------------------------------------------------------------------

def check_tta(mode: str, height: int, width: int, *, pad: int = 4) -> None:
    """Refuse an unknown mode, or one that images of ``height`` x ``width`` cannot support."""
    if mode not in TTA_MODES:
        raise unknown_name("test-time augmentation", mode, TTA_MODES)
    if mode in ("crops", "10crop") and not 0 < pad < min(height, width):
        raise CnnlabError(f"test-time augmentation {mode!r} takes its crops from the image zero-padded by pad pixels, "
                          f"which needs 0 < pad < {min(height, width)} for {height}x{width} inputs; "
                          f"received pad={pad}")


def tta_views(x: Tensor, mode: str, *, pad: int = 4) -> list[Tensor]:
    """The views of a normalized batch ``x`` (B, C, H, W) that test-time augmentation averages over.

    - ``"none"``: ``[x]``.
    - ``"flip"``: ``[x, hflip(x)]``.
    - ``"crops"``: five crops, the center and the four corners. AlexNet crops 224x224 patches
      out of 256x256 images (Krizhevsky et al. 2012, sec. 4.1), but our models take the whole
      small image, so the crops are H x W windows of ``x`` zero-padded by ``pad`` on each side:
      the center crop is ``x`` itself, the corner crops are ``x`` shifted by ``pad`` pixels
      diagonally. Zero in normalized units is the dataset's mean intensity.
    - ``"10crop"``: the five crops and their horizontal mirrors (AlexNet's ten patches), in the
      order ``crops + [hflip(c) for c in crops]``.

    Every view has the shape and memory format of ``x``.
    """
    if x.ndim != 4:
        raise CnnlabError(f"test-time augmentation needs a batch of images (B, C, H, W); "
                          f"received shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    check_tta(mode, h, w, pad=pad)
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, x.flip(-1)]
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    offsets = [(pad, pad), (0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad)]  # center, then the corners
    crops = [padded[:, :, i:i + h, j:j + w] for i, j in offsets]
    crops[0] = x
    if mode == "10crop":
        crops += [c.flip(-1) for c in crops]
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [c.contiguous(memory_format=fmt) for c in crops]


@torch.inference_mode()
def predict_proba(model: nn.Module, loader: Iterable, *, tta: str = "none", pad: int = 4) -> Tensor:
    """Softmax probabilities (N, num_classes), averaged over the TTA views, in eval mode.

    ``loader`` yields (x, y) batches in a fixed order, like an unshuffled ``cnnlab.data.BatchLoader``;
    the rows of the result follow that order. The model's mode is restored afterwards.
    """
    if tta not in TTA_MODES:
        raise unknown_name("test-time augmentation", tta, TTA_MODES)
    was_training = model.training
    model.eval()
    try:
        out = []
        for x, _ in loader:
            views = tta_views(x, tta, pad=pad)
            proba = sum(_softmax(model(v)) for v in views) / len(views)  # (B, num_classes)
            out.append(proba)
    finally:
        model.train(was_training)
    if not out:
        raise CnnlabError("cannot evaluate on an empty loader; it yielded no batches")
    return torch.cat(out)


def _softmax(output: Any) -> Tensor:
    logits = output[0] if isinstance(output, tuple) else output  # (logits, *aux) models
    return torch.softmax(logits.float(), dim=1)


# --- ensembles and metrics -------------------------------------------------------------------

def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """The ensemble weights theta_i, checked (>= 0, one per member, not all zero) and summing to 1."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise CnnlabError(f"an ensemble of {count} members needs {count} weights; received {len(weights)}: {weights}")
    if any(not (w >= 0 and w < float("inf")) for w in weights):
        raise CnnlabError(f"ensemble weights must be finite and non-negative; received {weights}")
    total = sum(weights)
    if total <= 0:
        raise CnnlabError(f"ensemble weights must not all be zero; received {weights}")
    return [w / total for w in weights]


def ensemble_proba(probas: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """The weighted average sum_i theta_i p_i of the members' probabilities (weights normalized)."""
    if not probas:
        raise CnnlabError("an ensemble needs at least one member; received none")
    shapes = {tuple(p.shape) for p in probas}
    if len(shapes) != 1:
        raise CnnlabError(f"ensemble members must predict the same (samples, classes); "
                          f"received shapes {sorted(shapes)}")
    theta = normalized_weights(weights, len(probas))
    return sum(t * p for t, p in zip(theta, probas))


def metrics_from_proba(proba: Tensor, target: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy and the loss: the mean negative log of the target's probability.

    The loss is the cross-entropy of the (averaged) probabilities themselves, so for a single
    model without TTA it equals the usual cross-entropy of the logits. A probability that
    underflowed to zero is clamped to the smallest positive float, keeping the loss finite.
    """
    if proba.ndim != 2 or target.shape != proba.shape[:1]:
        raise CnnlabError(f"expected probabilities (N, C) and N targets; received {tuple(proba.shape)} "
                          f"and {tuple(target.shape)}")
    target = target.to(proba.device)
    n = len(target)
    top1, top5 = topk_correct(proba, target, (1, 5))
    p_target = proba.gather(1, target.unsqueeze(1)).squeeze(1).double()
    loss = -p_target.clamp_min(torch.finfo(proba.dtype).tiny).log().mean()
    return {"top1": top1.item() / n, "top5": top5.item() / n, "loss": loss.item()}


# --- the confusion matrix --------------------------------------------------------------------

def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class.

    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
    tensor([[1, 1],
            [0, 1]])
    """
    if pred.shape != target.shape or pred.ndim != 1:
        raise CnnlabError(f"expected equally long 1-d predictions and targets; received {tuple(pred.shape)} "
                          f"and {tuple(target.shape)}")
    pred, target = pred.long(), target.long().to(pred.device)
    for name, t in (("predictions", pred), ("targets", target)):
        if len(t) and (t.min() < 0 or t.max() >= num_classes):
            raise CnnlabError(f"{name} must be class indices in [0, {num_classes}); received values from "
                              f"{t.min().item()} to {t.max().item()}")
    # Each (true, predicted) pair is one cell index true * C + predicted; one bincount counts them all.
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def most_confused(cm: Tensor, classes: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells as (true class, predicted class, count), largest first.

    Only pairs that occur are listed; ties keep row-major order (true class, then predicted).
    """
    _check_classes(cm, classes)
    if k < 0:
        raise CnnlabError(f"k must be non-negative; received k={k}")
    off = cm.detach().cpu().clone()
    off.fill_diagonal_(0)
    flat = off.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: -flat[i])  # stable: ties stay in row-major order
    c = len(classes)
    return [(classes[i // c], classes[i % c], int(flat[i])) for i in order[:k] if flat[i] > 0]


def _check_classes(cm: Tensor, classes: Sequence[str]) -> None:
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise CnnlabError(f"a confusion matrix for {len(classes)} classes must be {len(classes)}x{len(classes)}; "
                          f"received shape {tuple(cm.shape)}")


def format_confusion(cm: Tensor, classes: Sequence[str]) -> str:
    """A text table: one row per true class (index and name, or the index alone when the name is
    the index, as MNIST's digits are), one column per predicted class index, and each class's
    accuracy (its recall) at the end of its row."""
    _check_classes(cm, classes)
    cm = cm.detach().cpu()
    c = len(classes)
    width = max(len(str(int(cm.max()))) if cm.numel() else 1, len(str(c - 1)))
    names = [str(i) if str(name) == str(i) else f"{i} {name}" for i, name in enumerate(classes)]
    label = max(len(n) for n in names)
    lines = ["rows: true class, columns: predicted class",
             " " * label + " | " + " ".join(f"{j:>{width}}" for j in range(c)) + " |    acc"]
    lines.append("-" * len(lines[-1]))
    for i, name in enumerate(names):
        row_total = int(cm[i].sum())
        acc = f"{cm[i, i].item() / row_total:6.1%}" if row_total else "     -"
        lines.append(f"{name:<{label}} | " + " ".join(f"{int(v):>{width}}" for v in cm[i]) + f" | {acc}")
    return "\n".join(lines)


def plot_confusion(cm: Tensor, classes: Sequence[str], path: str | os.PathLike, *, title: str = "") -> None:
    """Save the confusion matrix as a heatmap PNG with the counts in the cells (up to 30 classes)."""
    _check_classes(cm, classes)
    from matplotlib.figure import Figure

    counts = cm.detach().cpu().numpy()
    c = len(classes)
    size = min(max(4.0, 0.5 * c + 2), 20)
    fig = Figure(figsize=(size + 1, size))  # no pyplot: the global backend stays as the caller set it
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="count")
    ticks = range(c) if c <= 30 else range(0, c, max(1, c // 20))
    ax.set_xticks(list(ticks), [classes[i] for i in ticks], rotation=45 if c <= 10 else 90,
                  ha="right" if c <= 10 else "center")
    ax.set_yticks(list(ticks), [classes[i] for i in ticks])
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "confusion matrix")
    if c <= 30:  # beyond that the numbers no longer fit in the cells
        threshold = counts.max() / 2 if counts.size else 0
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8 if c <= 15 else 6,
                        color="white" if counts[i, j] > threshold else "black")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


class _Labels:
    """Iterates a loader unchanged and keeps the labels of its batches (``seen``)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader, self.seen = loader, []

    def __iter__(self):
        for x, y in self.loader:
            self.seen.append(y)
            yield x, y


def _decode_rows(ds, files: Sequence[int], worst: Sequence[Any]) -> Tensor:
    """The test images of ``worst`` decoded again from a streamed folder (uint8 (K, C, H, W))."""
    from cnnlab.data.imagefiles import decode

    split = ds.split("test")
    return torch.stack([torch.from_numpy(decode(split.path(files[t.index]), ds.preprocess)) for t in worst])


def plot_top_losses(ds: cdata.Dataset, worst: Sequence[Any], path: str | os.PathLike, *, title: str = "",
                    images: Tensor | None = None) -> None:
    """Save the test images of ``worst`` (``cnnlab.inspect.TopLoss`` rows) in a grid, each captioned
    with its index, true -> predicted class, the predicted class's probability and the loss.
    ``images``: those images as uint8 (K, C, H, W), when ``ds`` does not hold its test set in memory."""
    from cnnlab.inspect import plots

    if images is None:
        images = ds.test_x[[t.index for t in worst]]
    images = images.float() / 255  # uint8 (K, C, H, W) -> [0, 1]
    captions = [f"#{t.index} {ds.classes[t.true]}→{ds.classes[t.predicted]} ({t.probability:.0%})\n"
                f"loss {t.loss:.2f}" for t in worst]
    plots.save_png(plots.image_grid_figure(images, captions, cols=min(8, len(worst)), title=title), path)


def format_top_losses(result: dict[str, Any]) -> str:
    """The ``"top_losses"`` of ``evaluate_runs`` as a text table, highest loss first."""
    classes = result["classes"]
    rows = [(str(r), str(t["index"]), classes[t["true"]], classes[t["predicted"]], f"{t['probability']:.1%}",
             f"{t['loss']:.3f}") for r, t in enumerate(result["top_losses"], 1)]
    head = ("rank", "index", "true", "predicted", "confidence", "loss")
    files = [t["path"] for t in result["top_losses"] if "path" in t]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [f"top {len(rows)} losses (confidence: of the predicted class)",
             "  ".join(f"{h:>{w}}" for h, w in zip(head, widths)) + ("  file" if files else "")]
    lines += ["  ".join(f"{v:>{w}}" for v, w in zip(row, widths)) + (f"  {files[i]}" if files else "")
              for i, row in enumerate(rows)]
    return "\n".join(lines)


# --- evaluating saved runs -------------------------------------------------------------------

def _describe(meta: dict) -> str:
    return f"{meta['name']} ({meta['num_classes']} classes of {'x'.join(map(str, meta['input_size']))})"


def check_dataset(meta: dict, ds: cdata.Dataset, what: str = "the runs were") -> None:
    """Refuse evaluating a model trained on ``meta``'s shape on a dataset of another shape."""
    if ds.num_classes != meta["num_classes"] or list(ds.input_size) != list(meta["input_size"]):
        raise CnnlabError(f"{what} trained on {_describe(meta)}; {ds.name} has {ds.num_classes} classes of "
                          f"{'x'.join(map(str, ds.input_size))}")


FLIP_SENSITIVE = ("mnist",)


def evaluate_runs(
    paths: Sequence[str | os.PathLike],
    *,
    data: str | None = None,
    data_root: str | None = None,
    tta: str = "none",
    tta_pad: int = 4,
    weights: Sequence[float] | None = None,
    batch_size: int = 1000,
    device: str = "cpu",
    confusion_png: str | os.PathLike | None = None,
    dataset: cdata.Dataset | None = None,
    top_losses: int | None = None,
    top_losses_png: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate one run, or an ensemble of runs, on the test set of their dataset.

    Each member is scored alone (with ``tta`` applied); with two or more members the weighted
    ensemble of their probabilities is scored too (``tta_pad``: the padding of the crops
    modes, see ``tta_views``). The confusion matrix is the ensemble's (or
    the single model's). ``dataset`` is an already loaded dataset (else ``data``, or the runs'
    own dataset, is loaded). ``top_losses``: also list the K test images whose true class has the
    lowest (ensemble, TTA-averaged) probability, i.e. the highest loss, as fastai's
    ``ClassificationInterpretation.plot_top_losses`` shows them, and draw them in a grid saved
    to ``top_losses_png`` (if given). Returns ``{"members", "ensemble" (2+ members), "tta",
    "weights", "confusion", "most_confused", "classes", "data", "samples"}``, plus
    ``"top_losses"`` (dicts of index, loss, true, predicted, probability) when asked for.
    """
    from cnnlab.train.config import TrainConfig
    from cnnlab.train.engine import resolve_device, use_channels_last
    from cnnlab.train.inference import load_model

    if not paths:
        raise CnnlabError("evaluation needs at least one run directory or checkpoint; received none")
    if tta not in TTA_MODES:
        raise unknown_name("test-time augmentation", tta, TTA_MODES)
    theta = normalized_weights(weights, len(paths))
    if batch_size < 1:
        raise CnnlabError(f"batch size must be at least 1; received batch_size={batch_size}")
    if top_losses is not None and top_losses < 1:
        raise CnnlabError(f"the number of top losses must be at least 1; received {top_losses}")

    from cnnlab.train.checkpoint import resolve

    loaded = [(path, *load_model(path, device=device)) for path in paths]
    first_path, _, first_state = loaded[0]
    meta = first_state["dataset"]
    for path, _, state in loaded[1:]:
        other = state["dataset"]
        if (other["name"], other["num_classes"], list(other["input_size"])) != \
                (meta["name"], meta["num_classes"], list(meta["input_size"])):
            raise CnnlabError(f"ensemble members must be trained on the same data; {first_path} was trained on "
                              f"{_describe(meta)} but {path} on {_describe(other)}")
    if dataset is not None:
        ds = dataset
    elif data is None and meta["name"] not in cdata.SPECS and not meta["name"].startswith("folder:"):
        raise CnnlabError(f"{first_path} was trained on {meta['name'][:60]!r}, a dataset of your own; evaluate it "
                          f"from Python with dataset=, or pass --data")
    else:
        from cnnlab.train.build import load_data

        run_cfg = TrainConfig.from_dict(first_state["config"]).updated(
            {"data": data or meta["name"], "data_root": data_root})
        ds = load_data(run_cfg, log=log)
    check_dataset(meta, ds, "the runs were" if len(paths) > 1 else "the checkpoint was")
    check_tta(tta, *ds.input_size[1:], pad=tta_pad)
    from cnnlab.data.folder import StreamingFolder

    streaming = isinstance(ds, StreamingFolder)  # an image folder too large for memory
    n_test = len(ds.split("test")) if streaming else len(ds.test_y)
    if top_losses is not None and top_losses > n_test:
        raise CnnlabError(f"the number of top losses must be at most the {n_test} test images of "
                          f"{ds.name}; received {top_losses}")
    if tta in ("flip", "10crop") and ds.name in FLIP_SENSITIVE and log is not None:
        log(f"warning: --tta {tta} averages over mirrored {ds.name} digits, which are not mirror-symmetric; "
            f"it usually costs accuracy there")
    torch_device = resolve_device(device)
    target = None if streaming else ds.test_y.to(torch_device)
    files: list[int] | None = None  # streaming: the file index of each row (unreadable files drop out)

    members, probas = [], []
    for path, model, state in loaded:
        file = resolve(path)
        channels_last = use_channels_last(TrainConfig.from_dict(state["config"]), model)  # as in training
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # Normalize as in training: with the mean and std saved in the checkpoint.
        mean, std = state["dataset"].get("mean", ds.mean), state["dataset"].get("std", ds.std)
        common = dict(batch_size=batch_size, shuffle=False, mean=tuple(mean), std=tuple(std), device=torch_device,
                      channels_last=channels_last)
        if streaming:  # decoded from disk batch by batch; the labels come with the batches
            loader = ds.loader("test", track_indices=True, **common)
            labels = _Labels(loader)
            proba = predict_proba(model, labels, tta=tta, pad=tta_pad)
            if target is None:
                target, files = torch.cat(labels.seen).to(torch_device), list(loader.indices)
                if loader.skipped and log is not None:
                    log(f"skipped {len(loader.skipped)} unreadable test image(s), e.g. {loader.skipped[0]}")
        else:
            loader = cdata.BatchLoader(ds.test_x, ds.test_y, **common)
            proba = predict_proba(model, loader, tta=tta, pad=tta_pad)
        probas.append(proba)
        name = state["config"].get("model", "?") if not state.get("spec") else "spec"
        chosen = state.get("selection") or ({"val_top1": "validation split", "test_top1": "test set (optimistic)"}
                                            .get(state.get("monitor", ""), ""))
        members.append({"path": str(path), "model": name, "checkpoint": str(file), "epoch": state["epoch"],
                        "chosen_on": f"best chosen on {chosen}" if chosen and file.name == "best.pt" else
                        f"the {file.name} checkpoint",
                        **metrics_from_proba(proba, target)})

    result: dict[str, Any] = {"members": members, "tta": tta, "weights": theta, "data": ds.name,
                              "samples": len(target), "classes": list(ds.classes)}
    final = probas[0]
    if len(probas) > 1:
        final = ensemble_proba(probas, theta)
        result["ensemble"] = metrics_from_proba(final, target)
    cm = confusion_matrix(final.argmax(dim=1), target, ds.num_classes).cpu()
    result["confusion"] = cm
    result["most_confused"] = most_confused(cm, ds.classes)
    if top_losses is not None:
        from cnnlab.inspect import top_losses_from_proba

        worst = top_losses_from_proba(final, target, top_losses)
        result["top_losses"] = [{"index": t.index, "loss": t.loss, "true": t.true, "predicted": t.predicted,
                                 "probability": t.probability} for t in worst]
        if streaming:  # name each image's file, and show the files themselves
            for row in result["top_losses"]:
                row["path"] = str(ds.split("test").path(files[row["index"]]))
        if top_losses_png is not None:
            plot_top_losses(ds, worst, top_losses_png, title=f"top losses on {ds.name}: true → predicted (confidence)",
                            images=_decode_rows(ds, files, worst) if streaming else None)
    if confusion_png is not None:
        what = "ensemble of " + ", ".join(m["model"] for m in members) if len(members) > 1 else members[0]["model"]
        plot_confusion(cm, ds.classes, confusion_png,
                       title=f"{what} on {ds.name}" + (f" (TTA: {tta})" if tta != "none" else ""))
    return result


def format_evaluation(result: dict[str, Any]) -> str:
    """The result of ``evaluate_runs`` as text for the terminal: members, ensemble, confusion."""
    lines = [f"{result['data']} test set, {result['samples']} images, TTA: {result['tta']}"]
    many = len(result["members"]) > 1
    for member, theta in zip(result["members"], result["weights"]):
        weight = f"  weight {theta:.3f}" if many else ""
        lines.append(f"  {member['path']} ({member['model']}): top-1 {member['top1']:.2%}  top-5 {member['top5']:.2%}"
                     f"  loss {member['loss']:.4f}{weight}")
    if "ensemble" in result:
        e = result["ensemble"]
        lines.append(f"  ensemble: top-1 {e['top1']:.2%}  top-5 {e['top5']:.2%}  loss {e['loss']:.4f}")
    lines += ["", format_confusion(result["confusion"], result["classes"]), "", "most confused (true -> predicted):"]
    lines += [f"  {t} -> {p}: {n}" for t, p, n in result["most_confused"]] or ["  (none)"]
    return "\n".join(lines)
