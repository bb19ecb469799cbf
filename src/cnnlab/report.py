"""One self-contained HTML page about a trained run (``cnnlab report RUN``): the config and
summary, learning curves, the confusion matrix and most-confused pairs, the top losses, the
first-layer filters with their Gabor fits, feature maps and saliency of a few test images, the
robustness curve with a few adversarial examples, and the model summary table.

Every image is inline (``data:image/png;base64``) and there is no script and no link to the
network, so the file can be mailed or opened offline. It sits above ``train`` and ``inspect``
(it reads a run directory and calls both) and is written atomically.

    >>> build_report("runs/lenet5-mnist", "report.html")
"""
from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnlab import data as cdata
from cnnlab import inspect
from cnnlab.fileio import atomic_write_text
from cnnlab.inspect import plots

Log = Callable[[str], None]


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion_png(cm: torch.Tensor, classes: tuple[str, ...]) -> bytes:
    fig = plots._figure(6, 5)
    ax = fig.add_subplot(1, 1, 1)
    counts = cm.numpy()
    im = ax.imshow(counts, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    c = len(classes)
    if c <= 20:
        ax.set_xticks(range(c), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(c), classes, fontsize=7)
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (test set)")
    fig.tight_layout()
    return plots.png_bytes(fig)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:.5em 0}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.note{color:#666;font-size:.85em}"""


def build_report(run: str | os.PathLike, out: str | os.PathLike, *, device: str = "cpu",
                 data_root: str | None = None, images: int = 4, attack_limit: int = 500,
                 eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3), log: Log | None = None) -> Path:
    """Write the report of ``run`` to ``out`` and return its path. ``images`` test images get
    feature maps and saliency; the FGSM robustness curve uses the first ``attack_limit`` test images."""
    from cnnlab.train import load_model
    from cnnlab.train.evaluation import confusion_matrix, most_confused

    log = log or (lambda line: None)
    run = Path(run)
    model, state = load_model(run, device=device)
    meta = state["dataset"]
    cfg = state["config"]
    ds = cdata.load_dataset(meta["name"], data_root)
    mean, std = ds.mean, ds.std
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    test_unit = ds.test_x.float() / 255
    test_norm = (test_unit - m) / s
    name = Path(str(cfg["spec"])).stem if cfg.get("spec") else cfg["model"]  # a layer list: its file
    sections: list[str] = []

    # config and summary
    run_dir = run if run.is_dir() else run.parent
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    keys = ("test_top1", "test_top5", "test_loss", "epochs_run", "best_epoch", "train_seconds", "params")
    sections.append("<h2>Summary</h2>" + (_table(["", "value"], [[k, summary[k]] for k in keys if k in summary])
                                          if summary else '<p class="note">no summary.json (unfinished run)</p>')
                    + "<details><summary>configuration</summary><pre>"
                    + html.escape(json.dumps(cfg, indent=2)) + "</pre></details>")

    # learning curves
    curves = run_dir / "curves.png"
    sections.append("<h2>Learning curves</h2>" + (_img(curves.read_bytes(), "learning curves") if curves.is_file()
                                                  else '<p class="note">no curves.png in the run</p>'))

    # confusion matrix, most-confused pairs, top losses
    log("evaluating the test set")
    with torch.no_grad():
        pred = torch.cat([model(test_norm[i:i + 1000].to(device)).argmax(1).cpu()
                          for i in range(0, len(test_norm), 1000)])
    cm = confusion_matrix(pred, ds.test_y, ds.num_classes)
    pairs = most_confused(cm, ds.classes, k=8)
    accuracy = float((pred == ds.test_y).float().mean())
    sections.append(f"<h2>Confusion matrix</h2><p>test accuracy {accuracy:.2%} on {len(pred):,} images</p>"
                    + _img(_confusion_png(cm, ds.classes), "confusion matrix")
                    + "<h3>Most confused pairs</h3>"
                    + _table(["true", "predicted", "count"], [list(p) for p in pairs]))
    top = inspect.top_losses(model, test_norm, ds.test_y, k=16)
    fig = plots.image_grid_figure(test_unit[[t.index for t in top]],
                                  [f"#{t.index} {ds.classes[t.true]}→{ds.classes[t.predicted]} "
                                   f"({t.probability:.0%})\nloss {t.loss:.2f}" for t in top], cols=8)
    sections.append("<h2>Top losses</h2><p>the test images with the highest loss: index, true→predicted "
                    "(confidence)</p>" + _img(plots.png_bytes(fig), "top losses"))

    # filters, feature maps, saliency
    convs = inspect.conv_layer_names(model)
    if convs:
        w = inspect.filters(model)
        parts = ["<h2>First-layer filters</h2>"]
        fit = None
        if w.shape[1] in (1, 3) and min(w.shape[2:]) >= 3:
            fit = inspect.gabor_fit(w)
            parts.append(f"<p>Gabor fits beside each filter; {fit.fraction_gabor_like(0.8):.0%} have R² ≥ 0.8 "
                         f"(mean R² {float(fit.r2.mean()):.2f})</p>")
        fig = plots.filter_figure(w, title=f"{convs[0]}", fitted=None if fit is None else fit.fitted,
                                  r2=None if fit is None else fit.r2)
        parts.append(_img(plots.png_bytes(fig), "first-layer filters"))
        sections.append("".join(parts))
        k = min(images, len(ds.test_y))
        maps = inspect.activations(model, test_norm[:1].to(device), kinds=("conv",))
        fig = plots.activation_figure(test_unit[0], {kk: v[0].cpu() for kk, v in maps.items()},
                                      title="feature maps of test image 0", max_channels=12)
        sections.append("<h2>Feature maps</h2>" + _img(plots.png_bytes(fig), "feature maps"))
    else:
        k = min(images, len(ds.test_y))
        sections.append('<h2>Filters and feature maps</h2><p class="note">the model has no convolution layer</p>')
    x = test_norm[:k].to(device)
    sal = inspect.saliency(model, x, None, "grad")
    with torch.no_grad():
        proba = model(x).softmax(1).cpu()
    captions = [f"#{i} true {ds.classes[int(ds.test_y[i])]}, pred {ds.classes[int(proba[i].argmax())]} "
                f"({float(proba[i].max()):.0%})" for i in range(k)]
    fig = plots.saliency_figure(test_unit[:k], sal.cpu(), captions, title="|∂ score / ∂ x| (Simonyan et al. 2014)")
    sections.append("<h2>Saliency</h2>" + _img(plots.png_bytes(fig), "saliency maps"))

    # robustness
    log(f"FGSM robustness curve on {min(attack_limit, len(ds.test_y))} test images")
    n = min(attack_limit, len(ds.test_y))
    curve = inspect.robustness_curve(model, test_unit[:n], ds.test_y[:n], list(eps), method="fgsm",
                                     mean=mean, std=std)
    fig = plots.curve_figure({f"{name}, FGSM": ([p.eps for p in curve], [p.accuracy for p in curve])},
                             xlabel="ε", ylabel="test accuracy (%)", percent=True,
                             title=f"accuracy under FGSM ({n} test images)")
    k_adv = min(6, n)
    xb, yb = test_unit[:k_adv].to(device), ds.test_y[:k_adv].to(device)
    e = max(eps)
    adv = inspect.fgsm(model, xb, yb, e, mean=mean, std=std)
    with torch.no_grad():
        p0 = model((xb - m.to(device)) / s.to(device)).softmax(1).cpu()
        p1 = model((adv - m.to(device)) / s.to(device)).softmax(1).cpu()
    fig2 = plots.adversarial_figure(xb.cpu(), adv.cpu(), [f"{ds.classes[int(p.argmax())]} ({float(p.max()):.0%})"
                                                         for p in p0],
                                    [f"{ds.classes[int(p.argmax())]} ({float(p.max()):.0%})" for p in p1], eps=e)
    sections.append("<h2>Adversarial robustness</h2>" + _img(plots.png_bytes(fig), "robustness curve")
                    + _table(["ε", "accuracy"], [[f"{p.eps:g}", f"{p.accuracy:.2%}"] for p in curve])
                    + f"<p>FGSM at ε={e:g}: original, perturbation, adversarial</p>"
                    + _img(plots.png_bytes(fig2), "adversarial examples"))

    # model summary
    summary_text = str(inspect.summary(model, tuple(meta["input_size"])).format())
    sections.append("<h2>Model summary</h2><pre>" + html.escape(summary_text) + "</pre>")

    title = f"{name} on {meta['name']}: {run_dir.name}"
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=\"note\">cnnlab report of {html.escape(str(run))}</p>" + "".join(sections) + "</body></html>\n")
    out = Path(out)
    atomic_write_text(out, page)
    return out
