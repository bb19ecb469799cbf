"""Double descent (Ryu, ch. 3, "Modern deep learning: Double descent"; Belkin et al. 2019, Fig. 3
and the random-ReLU-features figure).

Two sweeps past the interpolation threshold on an MNIST subset of n images, K = 10 classes, with
the squared loss on one-hot targets:

- **random ReLU features** ("2-layer ReLU NN with fixed hidden layer weights"): phi(x) = ReLU(Wx),
  W fixed Gaussian, N features; the output layer is the minimum-norm least-squares solution
  a = pinv(Phi) Y (closed form). The threshold is N = n, where Phi becomes square.
- **a trained one-hidden-layer network** (``mlp`` with ``hidden=[H]``): (d+1)H + (H+1)K
  parameters, threshold n K, trained full-batch with Adam on the squared loss towards zero
  training error.

The verdict (``detect_double_descent``): the test risk has a peak near the threshold that is
higher than the risk on both sides of it by at least 20%.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import mean, seeded, subset, tensors
from cnnlab.experiments.plots import figure, save

RISE = 1.2  # the peak must exceed the risk on both sides by this factor to count
BAND = 2.0  # "near the threshold": within a factor of 2 of it


def detect_double_descent(x: Sequence[float], risk: Sequence[float], threshold: float, *,
                          band: float = BAND, rise: float = RISE) -> tuple[str, dict[str, float]]:
    """Is there a peak of ``risk`` near ``threshold`` (within a factor ``band``) that rises above
    the best risk before it and falls again beyond it (each by a factor ``rise``)?

    Returns (status, numbers): holds, does not hold, or inconclusive (a peak of less than ``rise``
    but more than 5%, or no points on one side of the band).

    >>> detect_double_descent([1, 2, 4, 8, 16], [1.0, 0.8, 3.0, 0.6, 0.5], threshold=4)[0]
    'holds'
    """
    pts = sorted(zip(x, risk))
    near = [(p, r) for p, r in pts if threshold / band <= p <= threshold * band and math.isfinite(r)]
    before = [r for p, r in pts if p < threshold / band]
    after = [r for p, r in pts if p > threshold * band]
    if not near or not before or not after:
        return INCONCLUSIVE, {}
    peak_x, peak = max(near, key=lambda t: t[1])
    numbers = {"peak_at": peak_x, "peak": peak, "best_before": min(before), "best_after": min(after),
               "last": pts[-1][1]}
    ratio = min(peak / numbers["best_before"], peak / numbers["best_after"])
    numbers["ratio"] = ratio
    if ratio >= rise:
        return HOLDS, numbers
    if ratio >= 1.05:
        return INCONCLUSIVE, numbers
    return FAILS, numbers


def _squared_risk(pred: torch.Tensor, onehot: torch.Tensor) -> float:
    return ((pred - onehot) ** 2).sum(1).mean().item()  # per sample, summed over the K outputs


def min_norm_least_squares(phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """pinv(phi) @ y through the smaller Gram matrix: (phi^T phi)^+ phi^T y when there are fewer
    features than samples, phi^T (phi phi^T)^+ y otherwise (the interpolating solution of least
    norm). Eigenvalues below n * 1e-15 of the largest count as zero, as in ``torch.linalg.pinv``."""
    n, p = phi.shape
    gram = phi.T @ phi if p <= n else phi @ phi.T  # (min, min)
    lam, u = torch.linalg.eigh(gram)
    keep = lam > lam.max() * max(n, p) * 1e-15
    inv = (u[:, keep] / lam[keep]) @ u[:, keep].T  # the pseudo-inverse of the Gram matrix
    return inv @ (phi.T @ y) if p <= n else phi.T @ (inv @ y)


def random_features_point(x_tr, y_tr, x_te, y_te, n_features: int, seed: int) -> dict[str, float]:
    """Min-norm least squares on N random ReLU features (float64)."""
    g = torch.Generator().manual_seed(seed)
    d = x_tr.shape[1]
    w = torch.randn(d, n_features, generator=g, dtype=torch.float64) / math.sqrt(d)
    phi_tr, phi_te = torch.relu(x_tr @ w), torch.relu(x_te @ w)
    k = int(max(y_tr.max(), y_te.max())) + 1
    t_tr, t_te = F.one_hot(y_tr, k).double(), F.one_hot(y_te, k).double()
    a = min_norm_least_squares(phi_tr, t_tr)
    p_tr, p_te = phi_tr @ a, phi_te @ a
    return {"train_risk": _squared_risk(p_tr, t_tr), "test_risk": _squared_risk(p_te, t_te),
            "train_err": (p_tr.argmax(1) != y_tr).double().mean().item(),
            "test_err": (p_te.argmax(1) != y_te).double().mean().item(), "norm": a.norm().item()}


def trained_mlp_point(ds, hidden: int, steps: int, seed: int, lr: float) -> dict[str, float]:
    from cnnlab import models
    from cnnlab.train.optim import make_optimizer

    seeded(seed)
    c, h, w = ds.input_size
    model = models.create("mlp", hidden=[hidden], num_classes=ds.num_classes, in_channels=c, input_size=h)
    opt = make_optimizer(model, "adam", lr=lr)
    x_tr, y_tr = tensors(ds, "train")
    x_te, y_te = tensors(ds, "test")
    t_tr, t_te = F.one_hot(y_tr, ds.num_classes).float(), F.one_hot(y_te, ds.num_classes).float()
    for _ in range(steps):  # full batch: the risk itself, not a noisy estimate
        opt.zero_grad(set_to_none=True)
        loss = ((model(x_tr) - t_tr) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p_tr, p_te = model(x_tr), model(x_te)
    return {"train_risk": _squared_risk(p_tr, t_tr), "test_risk": _squared_risk(p_te, t_te),
            "train_err": (p_tr.argmax(1) != y_tr).float().mean().item(),
            "test_err": (p_te.argmax(1) != y_te).float().mean().item(),
            "params": sum(p.numel() for p in model.parameters())}


def _plot(path, x, rows, threshold, xlabel, title, logx=True):
    fig, (top, bottom) = figure(2, 1, size=(5.2, 5.6))
    for ax, key, ylabel in ((top, "err", "zero-one loss (%)"), (bottom, "risk", "squared loss")):
        ax.plot(x, [r[f"train_{key}"] * (100 if key == "err" else 1) for r in rows], "o-", ms=3, label="train")
        ax.plot(x, [r[f"test_{key}"] * (100 if key == "err" else 1) for r in rows], "o-", ms=3, label="test")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="interpolation threshold")
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    bottom.set_yscale("symlog", linthresh=1)
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel(xlabel)
    top.legend(fontsize=8)
    top.set_title(title, fontsize=10)
    save(fig, path)


def _averaged(per_seed: list[list[dict]]) -> list[dict]:
    return [{k: mean(run[i][k] for run in per_seed) for k in per_seed[0][i]} for i in range(len(per_seed[0]))]


@experiment("double-descent",
            claim="The test risk peaks at the interpolation threshold and falls again as the model grows past it.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Double descent on 2-layer "
                   "neural network on MNIST'; '2-layer ReLU NN with fixed hidden layer weights'); "
                   "Belkin, Hsu, Ma & Mandal 2019, Fig. 3",
            quick_time="about 1.5 min (99 to 104 s measured)", full_time="about 40 min (estimate)")
def run_double_descent(ctx: Context) -> Outcome:
    ds = ctx.dataset()
    n_rf = ctx.pick(smoke=60, quick=1000, full=4000)
    n_mlp = ctx.pick(smoke=60, quick=500, full=4000)
    n_test = ctx.pick(smoke=60, quick=2000, full=10000)
    steps = ctx.pick(smoke=30, quick=1500, full=6000)
    ratios = ctx.pick(smoke=[0.25, 0.9, 1.0, 1.1, 4.0],
                      quick=[0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2, 3, 5, 10],
                      full=[0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20])
    k = ds.num_classes
    rows: list[dict] = []

    # Part 1: random ReLU features, closed form.
    sub = subset(ds, n_rf, n_test, seed=0)
    x_tr, y_tr = tensors(sub, "train")
    x_te, y_te = tensors(sub, "test")
    x_tr, x_te = x_tr.flatten(1).double(), x_te.flatten(1).double()
    n_rf = len(x_tr)
    features = sorted({max(1, round(r * n_rf)) for r in ratios})
    per_seed = []
    for seed in range(ctx.seeds):
        per_seed.append([ctx.step(f"rf-N={n}-seed={seed}",
                                  lambda n=n, seed=seed: random_features_point(x_tr, y_tr, x_te, y_te, n, seed))
                         for n in features])
    rf = _averaged(per_seed)
    for n, r in zip(features, rf):
        rows.append({"part": "random-relu-features", "n": n_rf, "features": n, "params": n * k, **r})
    rf_status, rf_nums = detect_double_descent(features, [r["test_risk"] for r in rf], n_rf)
    _plot(ctx.path("double-descent-rff.png"), features, rf, n_rf, "number of random ReLU features N",
          f"Random ReLU features, min-norm LS (n={n_rf})")

    # Part 2: a trained one-hidden-layer network; the threshold is n K parameters.
    sub = subset(ds, n_mlp, n_test, seed=1)
    n_mlp = len(sub.train_x)
    d = sub.train_x[0].numel()
    threshold = n_mlp * k
    h_star = (threshold - k) / (d + 1 + k)  # (d+1)H + (H+1)K = nK
    widths = sorted({max(1, round(r * h_star)) for r in ratios})
    per_seed = []
    for seed in range(ctx.seeds):
        per_seed.append([ctx.step(f"mlp-H={h}-seed={seed}",
                                  lambda h=h, seed=seed: trained_mlp_point(sub, h, steps, seed, lr=3e-3))
                         for h in widths])
    mlp = _averaged(per_seed)
    params = [int(r["params"]) for r in mlp]
    for h, r in zip(widths, mlp):
        rows.append({"part": "trained-mlp", "n": n_mlp, "hidden": h, **r})
    mlp_status, mlp_nums = detect_double_descent(params, [r["test_risk"] for r in mlp], threshold)
    _plot(ctx.path("double-descent-mlp.png"), params, mlp, threshold, "number of parameters",
          f"One hidden layer, {steps} Adam steps (n={n_mlp})")

    def say(nums, unit):
        if not nums:
            return "too few points on one side of the threshold to tell"
        return (f"test risk {nums['peak']:.3g} at {unit}={nums['peak_at']:g} vs best {nums['best_before']:.3g} "
                f"below the threshold and {nums['best_after']:.3g} beyond it (peak/side ratio {nums['ratio']:.2f}, "
                f"needs {RISE})")

    verdicts = [
        Verdict(f"random ReLU features: peak at N = n = {n_rf}", rf_status, say(rf_nums, "N")),
        Verdict(f"trained network: peak at n K = {threshold} parameters", mlp_status, say(mlp_nums, "params")),
    ]
    measured = (f"MNIST subsets, squared loss on one-hot targets, {ctx.seeds} seed(s) averaged. Random ReLU "
                f"features: n={n_rf} training and {len(x_te)} test images, N from {features[0]} to {features[-1]} "
                f"features, output layer by pinv (closed form). Trained network: n={n_mlp}, hidden width H from "
                f"{widths[0]} to {widths[-1]} ({params[0]} to {params[-1]} parameters), {steps} full-batch Adam "
                f"steps at lr 3e-3 from fresh initializations (no weight reuse, unlike Belkin et al.).")
    return Outcome(rows, verdicts, measured, ["double-descent-rff.png", "double-descent-mlp.png"])
