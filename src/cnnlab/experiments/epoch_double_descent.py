"""Epoch-wise double descent (Ryu, ch. 3, "Epochwise double descent ... So perhaps one should stop
SGD early or very late"; Nakkiran et al. 2019, Fig. 10/11).

LeNet-5 on an MNIST subset of which a fraction of the training labels (20%) is replaced by random
wrong labels, trained for many epochs with Adam; the test error (clean labels) after every epoch.
The verdict (``detect_epoch_double_descent``): after its first minimum the test error rises by
at least ``RISE`` and then falls again by at least ``RISE`` before the end.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import accuracy, mean, seeded, subset, tensors, train_steps
from cnnlab.experiments.plots import figure, save

RISE = 1.1


def smooth(values: list[float], window: int) -> list[float]:
    """Centered moving average (shorter at the ends): epoch-to-epoch noise of the test error is
    a few tenths of a percent, enough to fake a "second descent" of one epoch."""
    half = window // 2
    return [mean(values[max(0, i - half):i + half + 1]) for i in range(len(values))]


def detect_epoch_double_descent(err: Sequence[float], rise: float = RISE) -> tuple[str, dict]:
    """(status, numbers) on the curve smoothed over a tenth of its epochs: holds for descent ->
    ascent -> descent, does not hold for a curve that
    only falls or that rises and stays up (classical overfitting), inconclusive when the second
    fall is smaller than ``rise`` but more than 3%."""
    err = smooth(list(err), max(1, len(err) // 10))
    if len(err) < 3 or min(err) <= 0:
        return INCONCLUSIVE, {}
    # The peak: the epoch whose error is highest relative to the best error before it.
    i_peak = max(range(1, len(err)), key=lambda j: err[j] / min(err[:j]))
    i_min1 = min(range(i_peak), key=lambda i: err[i])
    after = err[i_peak + 1:]
    nums = {"first_min": err[i_min1], "first_min_epoch": i_min1 + 1, "peak": err[i_peak], "peak_epoch": i_peak + 1,
            "final": err[-1], "min_after_peak": min(after) if after else err[-1]}
    if err[i_peak] < err[i_min1] * rise:
        return FAILS, nums  # no rise after the first descent
    if not after:
        return FAILS, nums  # the run ends at its highest error: rose and stayed up
    if min(after) * rise <= err[i_peak]:
        return HOLDS, nums
    return (INCONCLUSIVE if min(after) * 1.03 < err[i_peak] else FAILS), nums  # a fall under 3% is noise


def noisy(ds, fraction: float, seed: int):
    """``ds`` with ``fraction`` of the training labels replaced by a different random class."""
    g = torch.Generator().manual_seed(seed)
    y = ds.train_y.clone()
    flip = torch.rand(len(y), generator=g) < fraction
    shift = torch.randint(1, ds.num_classes, (len(y),), generator=g)
    y[flip] = (y[flip] + shift[flip]) % ds.num_classes
    return replace(ds, train_y=y), flip.float().mean().item()


def noisy_run(ds, epochs: int, seed: int) -> dict:
    from cnnlab import models
    from cnnlab.train.optim import make_optimizer

    seeded(seed)
    c, h, _ = ds.input_size
    model = models.create("lenet5", num_classes=ds.num_classes, in_channels=c, input_size=h)
    opt = make_optimizer(model, "adam", lr=1e-3)
    per_epoch = -(-len(ds.train_x) // 64)
    xtr, ytr = tensors(ds, "train")
    xte, yte = tensors(ds, "test")
    test_err, train_err = [], []
    for epoch in range(epochs):
        train_steps(model, opt, ds, per_epoch, seed=seed * 10007 + epoch)
        test_err.append(1 - accuracy(model, xte, yte))
        train_err.append(1 - accuracy(model, xtr, ytr))
    return {"test_err": test_err, "train_err": train_err}


@experiment("epoch-double-descent",
            claim="With label noise, the test error over training epochs falls, rises while the noise is memorized, "
                  "and falls again.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Epochwise double descent'); "
                   "Nakkiran, Kaplun, Bansal, Yang, Barak & Sutskever 2019",
            quick_time="about 1 min (60 s measured)", full_time="about 1 h (estimate)")
def run_epoch_dd(ctx: Context) -> Outcome:
    base = subset(ctx.dataset(), ctx.pick(smoke=128, quick=1000, full=10000), ctx.pick(smoke=64, quick=2000, full=10000))
    fraction = 0.2
    ds, actual = noisy(base, fraction, seed=0)
    epochs = ctx.pick(smoke=3, quick=60, full=300)
    runs = [ctx.step(f"seed={s}", lambda s=s: noisy_run(ds, epochs, s)) for s in range(ctx.seeds)]
    test = [mean(r["test_err"][e] for r in runs) for e in range(epochs)]
    train = [mean(r["train_err"][e] for r in runs) for e in range(epochs)]
    rows = [{"epoch": e + 1, "test_err": test[e], "train_err_noisy_labels": train[e]} for e in range(epochs)]
    status, nums = detect_epoch_double_descent(test)
    fig, (ax,) = figure(size=(6, 3.6))
    ax.plot(range(1, epochs + 1), test, label="test error (clean labels)")
    ax.plot(range(1, epochs + 1), smooth(test, max(1, epochs // 10)), "--", lw=0.8, label="test error, smoothed")
    ax.plot(range(1, epochs + 1), train, label=f"train error ({actual:.0%} noisy labels)")
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error")
    ax.legend(fontsize=8)
    ax.set_title(f"LeNet-5, {len(ds.train_x)} MNIST images, {actual:.0%} label noise", fontsize=9)
    save(fig, ctx.path("epoch-double-descent.png"))
    say = (f"smoothed test error {nums['first_min']:.3f} at epoch {nums['first_min_epoch']}, peak {nums['peak']:.3f} at epoch "
           f"{nums['peak_epoch']}, lowest after the peak {nums['min_after_peak']:.3f}, final {nums['final']:.3f}; "
           f"training error on the noisy labels at the end {train[-1]:.3f} (needs a rise and a fall of {RISE}x)"
           if nums else "too few epochs")
    verdicts = [Verdict("test error falls, rises, and falls again over epochs", status, say)]
    measured = (f"LeNet-5 (registry), Adam lr 1e-3, batch 64, {epochs} epochs on {len(ds.train_x)} MNIST images with "
                f"{actual:.1%} of the labels replaced by wrong ones, test error on {len(ds.test_x)} clean test "
                f"images after every epoch, {ctx.seeds} seed(s).")
    return Outcome(rows, verdicts, measured, ["epoch-double-descent.png"])
