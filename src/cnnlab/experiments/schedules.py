"""Learning-rate schedules (Ryu, ch. 3, "Learning rate scheduling": a diminishing learning rate,
"C/epoch or C/sqrt(iteration)", step decay, cosine, and others).

LeNet-5 on an MNIST subset with SGD (momentum 0.9) at one base lr under each schedule of
``cnnlab.train.schedules``: constant, step, exponential, inverse (C/epoch), inverse-sqrt
(C/sqrt(iteration)), cosine and one-cycle. The claim tested: with a constant lr SGD keeps
bouncing at the noise floor, and a diminishing lr ends at a lower training loss.
"""
from __future__ import annotations

from cnnlab.experiments.base import FAILS, HOLDS, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import evaluate_split, mean, seeded, subset, train_steps
from cnnlab.experiments.plots import figure, save

NAMES = ("constant", "step", "exponential", "inverse", "inverse-sqrt", "cosine", "onecycle")
LR = 0.05


def schedule_run(ds, name: str, epochs: int, seed: int, batch_size: int = 64) -> dict:
    from cnnlab import models
    from cnnlab.train.optim import make_optimizer
    from cnnlab.train.schedules import make_schedule

    seeded(seed)
    c, h, _ = ds.input_size
    model = models.create("lenet5", num_classes=ds.num_classes, in_channels=c, input_size=h)
    opt = make_optimizer(model, "sgd", lr=LR, momentum=0.9)
    per_epoch = -(-len(ds.train_x) // batch_size)
    sched = make_schedule(opt, name, epochs=epochs, steps_per_epoch=per_epoch, step_size=max(1, (epochs + 1) // 2),
                          gamma=0.1 if name == "step" else 0.6)
    log = train_steps(model, opt, ds, epochs * per_epoch, batch_size=batch_size, seed=seed, schedule=sched)
    train, test = evaluate_split(model, ds, "train"), evaluate_split(model, ds, "test")
    return {"loss": log["loss"], "lr": log["lr"], "train_loss": train["loss"], "test_top1": test["top1"],
            "per_epoch": per_epoch}


@experiment("schedules",
            claim="A diminishing learning rate (step, exponential, C/epoch, C/sqrt(iteration), cosine, one-cycle) "
                  "ends SGD at a lower training loss than a constant one.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Learning rate scheduling'); "
                   "Loshchilov & Hutter 2017 (cosine); Smith & Topin 2017 (one-cycle)",
            quick_time="about 1 min (52 s measured)", full_time="about 15 min (estimate)")
def run_schedules(ctx: Context) -> Outcome:
    ds = subset(ctx.dataset(), ctx.pick(smoke=256, quick=3000, full=20000), ctx.pick(smoke=128, quick=2000, full=10000))
    epochs = ctx.pick(smoke=2, quick=5, full=15)
    results = {n: [ctx.step(f"{n}-seed={s}", lambda n=n, s=s: schedule_run(ds, n, epochs, s))
                   for s in range(ctx.seeds)] for n in NAMES}
    rows = []
    for n, runs in results.items():
        per_epoch = runs[0]["per_epoch"]
        for e in range(epochs):
            rows.append({"schedule": n, "epoch": e + 1, "lr_at_epoch_start": runs[0]["lr"][e * per_epoch],
                         "mean_batch_loss": mean(mean(r["loss"][e * per_epoch:(e + 1) * per_epoch]) for r in runs)})
        rows.append({"schedule": n, "epoch": "final", "train_loss": mean(r["train_loss"] for r in runs),
                     "test_top1": mean(r["test_top1"] for r in runs)})
    fig, (left, mid, right) = figure(1, 3, size=(13, 3.6))
    for n, runs in results.items():
        left.plot([i / runs[0]["per_epoch"] for i in range(len(runs[0]["lr"]))], runs[0]["lr"], label=n)
        ema, smooth = None, []
        for v in runs[0]["loss"]:
            ema = v if ema is None else 0.95 * ema + 0.05 * v
            smooth.append(ema)
        mid.plot([i / runs[0]["per_epoch"] for i in range(len(smooth))], smooth, lw=1, label=n)
    left.set_xlabel("epoch")
    left.set_ylabel("learning rate")
    left.legend(fontsize=7)
    mid.set_xlabel("epoch")
    mid.set_ylabel("training loss (smoothed)")
    mid.set_yscale("log")
    final = {n: mean(r["train_loss"] for r in runs) for n, runs in results.items()}
    acc = {n: mean(r["test_top1"] for r in runs) for n, runs in results.items()}
    right.bar(range(len(NAMES)), [acc[n] for n in NAMES])
    right.set_xticks(range(len(NAMES)), NAMES, rotation=45, fontsize=7)
    right.set_ylim(min(acc.values()) - 0.02, 1.0)
    right.set_ylabel("final test top-1")
    save(fig, ctx.path("schedules.png"))
    better = [n for n in NAMES[1:] if final[n] < final["constant"]]
    ok = len(better) >= 4
    verdicts = [Verdict("diminishing schedules end at a lower training loss than constant (at least 4 of 6)",
                        HOLDS if ok else FAILS,
                        f"final training loss: " + ", ".join(f"{n} {final[n]:.4f}" for n in NAMES)
                        + f"; {len(better)} of 6 below constant; test top-1: "
                        + ", ".join(f"{n} {acc[n]:.3f}" for n in NAMES))]
    measured = (f"LeNet-5 (registry) on {len(ds.train_x)} MNIST images for {epochs} epochs of batch 64, SGD lr {LR} "
                f"momentum 0.9, lr updated every iteration by cnnlab.train.schedules (step: x0.1 every "
                f"{max(1, (epochs + 1) // 2)} epochs; exponential: x0.6 per epoch; one-cycle peak {LR}), {ctx.seeds} seed(s); "
                f"training loss over the whole subset at the end, test top-1 on {len(ds.test_x)} images.")
    return Outcome(rows, verdicts, measured, ["schedules.png"])
