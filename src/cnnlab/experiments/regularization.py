"""Over- and underfitting, and what each regularizer does to the gap (Ryu, ch. 3, "How to avoid
overfitting": weight decay, dropout, data augmentation, early stopping; Hu, lecture 5, dropout and
data augmentation).

The registry's MLP (two hidden layers of 512) on a small MNIST subset, trained long enough to
overfit, once plainly and once with each regularizer; plus a tiny network (hidden 4) that
underfits. Early stopping keeps the weights of the epoch with the best validation accuracy (a
split of the training subset). Measured: train and test error and their gap. The claim holds
when every regularizer shrinks the gap of the unregularized network.
"""
from __future__ import annotations

import copy

from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import accuracy, mean, seeded, subset, tensors, train_steps
from cnnlab.experiments.plots import figure, save

# label: (hidden, dropout, weight decay, augmentation, early stopping)
CONFIGS = {
    "none": ([512, 512], 0.0, 0.0, "none", False),
    "dropout 0.5": ([512, 512], 0.5, 0.0, "none", False),
    "weight decay 5e-3": ([512, 512], 0.0, 5e-3, "none", False),
    "augmentation": ([512, 512], 0.0, 0.0, "affine:10/2/0.1", False),
    "early stopping": ([512, 512], 0.0, 0.0, "none", True),
    "underfit (hidden 4)": ([4], 0.0, 0.0, "none", False),
}
REGULARIZERS = ("dropout 0.5", "weight decay 5e-3", "augmentation", "early stopping")


def regularized_run(ds, val, label: str, epochs: int, seed: int) -> dict:
    from cnnlab import models
    from cnnlab.data.augment import parse_augment
    from cnnlab.train.optim import make_optimizer

    hidden, dropout, wd, augment, early = CONFIGS[label]
    seeded(seed)
    c, h, _ = ds.input_size
    model = models.create("mlp", hidden=hidden, dropout=dropout, num_classes=ds.num_classes, in_channels=c,
                          input_size=h)
    opt = make_optimizer(model, "sgd", lr=0.05, momentum=0.9, weight_decay=wd)
    xv, yv = tensors(val, "train")
    per_epoch = -(-len(ds.train_x) // 64)
    best, best_state, curve = -1.0, None, []
    pipeline = parse_augment(augment)
    for epoch in range(epochs):
        train_steps(model, opt, ds, per_epoch, seed=seed * 1000 + epoch, augment=pipeline)
        v = accuracy(model, xv, yv)
        curve.append(v)
        if early and v > best:
            best, best_state = v, copy.deepcopy(model.state_dict())
    if early:
        model.load_state_dict(best_state)
    xtr, ytr = tensors(ds, "train")
    xte, yte = tensors(ds, "test")
    return {"train_err": 1 - accuracy(model, xtr, ytr), "test_err": 1 - accuracy(model, xte, yte),
            "val_curve": curve, "stopped_at": (curve.index(max(curve)) + 1) if early else epochs}


def gap_verdict(gaps: dict[str, float], regularizers=REGULARIZERS) -> tuple[str, list[str]]:
    """Holds when every regularizer's gap is below the unregularized one's; fails when none is."""
    smaller = [r for r in regularizers if gaps[r] < gaps["none"]]
    if len(smaller) == len(regularizers):
        return HOLDS, smaller
    return (FAILS if not smaller else INCONCLUSIVE), smaller


@experiment("regularization",
            claim="A network large enough to overfit a small training set has a train/test gap, and dropout, weight "
                  "decay, data augmentation and early stopping each shrink it; a too-small network underfits.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('How to avoid overfitting', 'How to "
                   "avoid underfitting'); Hu, Deep Learning, lecture 5; Srivastava et al. 2014 (dropout)",
            quick_time="about 30 s (27 s measured)", full_time="about 10 min (estimate)")
def run_regularization(ctx: Context) -> Outcome:
    full = subset(ctx.dataset(), ctx.pick(smoke=192, quick=1250, full=5000), ctx.pick(smoke=64, quick=2000, full=10000))
    n_val = len(full.train_x) // 5
    from dataclasses import replace

    val = replace(full, train_x=full.train_x[:n_val], train_y=full.train_y[:n_val])
    ds = replace(full, train_x=full.train_x[n_val:], train_y=full.train_y[n_val:])
    epochs = ctx.pick(smoke=2, quick=40, full=100)
    rows, res = [], {}
    for label in CONFIGS:
        runs = [ctx.step(f"{label}-seed={s}", lambda label=label, s=s: regularized_run(ds, val, label, epochs, s))
                for s in range(ctx.seeds)]
        res[label] = {"train_err": mean(r["train_err"] for r in runs), "test_err": mean(r["test_err"] for r in runs),
                      "curve": runs[0]["val_curve"], "stopped_at": runs[0]["stopped_at"]}
        res[label]["gap"] = res[label]["test_err"] - res[label]["train_err"]
        rows.append({"config": label, "train_err": res[label]["train_err"], "test_err": res[label]["test_err"],
                     "gap": res[label]["gap"], "epochs": epochs, "stopped_at": res[label]["stopped_at"]})
    fig, (left, right) = figure(1, 2, size=(10, 3.8))
    labels = list(CONFIGS)
    xs = range(len(labels))
    left.bar([x - 0.2 for x in xs], [res[k]["train_err"] for k in labels], width=0.4, label="train error")
    left.bar([x + 0.2 for x in xs], [res[k]["test_err"] for k in labels], width=0.4, label="test error")
    left.set_xticks(list(xs), labels, rotation=30, fontsize=7, ha="right")
    left.set_ylabel("error")
    left.legend(fontsize=8)
    left.set_title("the gap between the bars is the overfitting", fontsize=9)
    for k in labels:
        right.plot(range(1, epochs + 1), [1 - v for v in res[k]["curve"]], label=k)
    right.set_xlabel("epoch")
    right.set_ylabel("validation error")
    right.set_yscale("log")
    right.legend(fontsize=7)
    save(fig, ctx.path("regularization.png"))
    status, smaller = gap_verdict({k: v["gap"] for k, v in res.items()})
    under = res["underfit (hidden 4)"]
    verdicts = [
        Verdict("every regularizer shrinks the train/test gap", status,
                "gap (test - train error): " + ", ".join(f"{k} {res[k]['gap']:.3f}" for k in ("none",) + REGULARIZERS)
                + f"; test error: " + ", ".join(f"{k} {res[k]['test_err']:.3f}" for k in ("none",) + REGULARIZERS)
                + f"; early stopping chose epoch {res['early stopping']['stopped_at']} of {epochs}"),
        Verdict("the tiny network underfits (high training error)",
                HOLDS if under["train_err"] > res["none"]["train_err"] + 0.05 else FAILS,
                f"training error {under['train_err']:.3f} vs {res['none']['train_err']:.3f} for the large one"),
    ]
    measured = (f"The registry's MLP (hidden 512-512, or 4) on {len(ds.train_x)} MNIST training images "
                f"({len(val.train_x)} more held out for validation), {epochs} epochs of SGD (lr 0.05, momentum 0.9, "
                f"batch 64), test on {len(ds.test_x)}, {ctx.seeds} seed(s). Augmentation: cnnlab's batch "
                f"'affine:10/2/0.1' (rotation up to 10 degrees, shear up to 2 degrees, stretch up to 10%).")
    return Outcome(rows, verdicts, measured, ["regularization.png"])
