"""Ensembles and test-time augmentation (Ryu, ch. 3, "Ensemble": with weights theta chosen well,
"the ensemble is no worse than its best member"; AlexNet's 10-crop TTA, Krizhevsky et al. 2012).

k LeNet-5s trained from different seeds on an MNIST subset (with cnnlab's ``crop:2`` augmentation,
so shifted views are in-distribution). Each member is evaluated alone, with TTA (``crops``: the
image and four 2-pixel diagonal shifts; and ``10crop``, which adds mirror images: wrong for digits,
shown for contrast), and the members are combined with uniform weights and with weights tuned on
a validation split (minimum validation cross-entropy over the simplex), all through
``cnnlab.train.evaluation`` (``predict_proba``, ``ensemble_proba``, ``metrics_from_proba``).
"""
from __future__ import annotations

import torch

from cnnlab.experiments.base import FAILS, HOLDS, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import loader, mean, seeded, subset, train_steps
from cnnlab.experiments.plots import figure, save


def tune_weights(probas: list[torch.Tensor], target: torch.Tensor, steps: int = 300) -> list[float]:
    """Ensemble weights on the simplex (a softmax of free logits) minimizing the cross-entropy of
    the weighted average of ``probas`` on ``target``."""
    p = torch.stack([q.double() for q in probas])  # (k, N, C)
    logits = torch.zeros(len(probas), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    idx = torch.arange(len(target))
    for _ in range(steps):
        theta = torch.softmax(logits, 0)
        mix = (theta[:, None, None] * p).sum(0)  # (N, C)
        loss = -mix[idx, target].clamp_min(1e-12).log().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(logits, 0).tolist()


def member_probas(ds, val, seed: int, epochs: int) -> dict:
    from cnnlab import models
    from cnnlab.data.augment import parse_augment
    from cnnlab.train.evaluation import predict_proba
    from cnnlab.train.optim import make_optimizer

    seeded(seed)
    c, h, _ = ds.input_size
    model = models.create("lenet5", num_classes=ds.num_classes, in_channels=c, input_size=h)
    opt = make_optimizer(model, "adam", lr=2e-3)
    steps = epochs * -(-len(ds.train_x) // 64)
    train_steps(model, opt, ds, steps, seed=seed, augment=parse_augment("crop:2"))
    test, vl = loader(ds, "test", batch_size=1000, shuffle=False), loader(val, "test", batch_size=1000, shuffle=False)
    return {"val": predict_proba(model, vl).tolist(),
            **{f"test_{m}": predict_proba(model, test, tta=m, pad=2).tolist() for m in ("none", "crops", "10crop")}}


@experiment("ensembles-tta",
            claim="An ensemble with well-chosen weights is no worse than its best member, and averaging over "
                  "test-time views (TTA) improves a single model.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Ensemble', AlexNet's 10-crop "
                   "test-time augmentation); Krizhevsky, Sutskever & Hinton 2012",
            quick_time="about 1 min (44 s measured)", full_time="about 10 min (estimate)")
def run_ensembles(ctx: Context) -> Outcome:
    from dataclasses import replace

    from cnnlab.train.evaluation import ensemble_proba, metrics_from_proba

    base = subset(ctx.dataset(), ctx.pick(smoke=256, quick=3000, full=20000), ctx.pick(smoke=128, quick=4000, full=10000))
    n_val = len(base.test_x) // 2
    # the second half of the test subset is the validation split for the weights; the first is the test
    val = replace(base, test_x=base.test_x[n_val:], test_y=base.test_y[n_val:])
    ds = replace(base, test_x=base.test_x[:n_val], test_y=base.test_y[:n_val])
    k = ctx.pick(smoke=2, quick=5, full=10)
    epochs = ctx.pick(smoke=1, quick=2, full=10)
    rows, summary = [], []
    for rep in range(ctx.seeds):
        members = [ctx.step(f"member-{i}-rep={rep}", lambda i=i, rep=rep: member_probas(ds, val, rep * 100 + i, epochs))
                   for i in range(k)]
        as_t = [{key: torch.tensor(v) for key, v in m.items()} for m in members]
        y, yv = ds.test_y, val.test_y
        single = [metrics_from_proba(m["test_none"], y) for m in as_t]
        for i, m in enumerate(as_t):
            for mode in ("none", "crops", "10crop"):
                r = metrics_from_proba(m[f"test_{mode}"], y)
                rows.append({"rep": rep, "model": f"member {i}", "tta": mode, "top1": r["top1"], "top5": r["top5"],
                             "loss": r["loss"]})
        theta = tune_weights([m["val"] for m in as_t], yv)
        for label, weights in (("uniform ensemble", None), ("tuned ensemble", theta)):
            for mode in ("none", "crops"):
                r = metrics_from_proba(ensemble_proba([m[f"test_{mode}"] for m in as_t], weights), y)
                rows.append({"rep": rep, "model": label, "tta": mode, "top1": r["top1"], "top5": r["top5"],
                             "loss": r["loss"], "weights": " ".join(f"{w:.3f}" for w in (weights or [1 / k] * k))})
        summary.append({
            "best": max(s["top1"] for s in single), "mean": mean(s["top1"] for s in single),
            "tuned": next(r["top1"] for r in rows[::-1] if r["model"] == "tuned ensemble" and r["tta"] == "none"),
            "uniform": next(r["top1"] for r in rows[::-1] if r["model"] == "uniform ensemble" and r["tta"] == "none"),
            "crops": mean(r["top1"] for r in rows if r["rep"] == rep and r["model"].startswith("member")
                          and r["tta"] == "crops"),
            "10crop": mean(r["top1"] for r in rows if r["rep"] == rep and r["model"].startswith("member")
                           and r["tta"] == "10crop"),
        })
    s = {key: mean(x[key] for x in summary) for key in summary[0]}
    fig, (ax,) = figure(size=(7, 3.6))
    labels = [f"member {i}" for i in range(k)] + ["uniform ensemble", "tuned ensemble"]
    first = [r for r in rows if r["rep"] == 0]
    for j, mode in enumerate(("none", "crops", "10crop")):
        vals = [next((r["top1"] for r in first if r["model"] == lab and r["tta"] == mode), float("nan")) for lab in labels]
        ax.bar([i + (j - 1) * 0.27 for i in range(len(labels))], [1 - v for v in vals], width=0.27, label=f"TTA {mode}")
    ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("test error (top-1)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"{k} LeNet-5s, their ensembles, and test-time views", fontsize=9)
    save(fig, ctx.path("ensembles-tta.png"))
    verdicts = [
        Verdict("the tuned-weight ensemble is no worse than its best member", HOLDS if s["tuned"] >= s["best"] else FAILS,
                f"test top-1: tuned ensemble {s['tuned']:.4f}, uniform {s['uniform']:.4f}, best member {s['best']:.4f}, "
                f"mean member {s['mean']:.4f}"),
        Verdict("TTA over shifted crops improves a single model", HOLDS if s["crops"] > s["mean"] else FAILS,
                f"mean member top-1 without TTA {s['mean']:.4f}, with 5 crops {s['crops']:.4f}, with 10 crops (mirrored "
                f"digits included) {s['10crop']:.4f}"),
    ]
    measured = (f"{k} LeNet-5s (registry; Adam lr 2e-3, {epochs} epochs of batch 64 with crop:2 augmentation) on "
                f"{len(ds.train_x)} MNIST images, {ctx.seeds} repetition(s); ensemble weights tuned on {n_val} held-out "
                f"test-split images by minimum cross-entropy; all numbers on the other {len(ds.test_x)}.")
    return Outcome(rows, verdicts, measured, ["ensembles-tta.png"])
