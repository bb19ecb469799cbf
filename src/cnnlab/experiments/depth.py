"""Deeper plain networks train worse; residual ones do not (Ryu, ch. 3, "more layers is not always
better ... Plots show it is not due to overfitting"; He et al. 2016, Fig. 1 and Fig. 6; Saremi,
"ResNets"; the optimization lecture notes, "Residual connections").

The registry's CIFAR-style ResNet (``resnet_cifar``: 6n+2 layers, BN) with ``shortcut=False`` (the
plain "noshort" network of the same depth) and with its shortcuts, at a shallow and a deep depth,
trained for the same number of SGD steps. Measured: the training error (on a fixed part of the
training set, in eval mode) and the test error. The claim holds when the deeper plain net has
the higher *training* error (so it is optimization, not overfitting) and the deeper residual net
does not.
"""
from __future__ import annotations

from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import evaluate_split, mean, seeded, subset, train_steps
from cnnlab.experiments.plots import figure, save

MARGIN = 0.01  # training error difference (absolute) that counts


def depth_run(ds, n: int, widths: list[int], shortcut: bool, steps: int, seed: int) -> dict:
    from cnnlab import models
    from cnnlab.train.optim import make_optimizer
    from cnnlab.train.schedules import make_schedule

    seeded(seed)
    c = ds.input_size[0]
    model = models.create("resnet20", layers=[n, n, n], widths=widths, shortcut=shortcut,
                          num_classes=ds.num_classes, in_channels=c)
    opt = make_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = make_schedule(opt, "cosine", epochs=1, steps_per_epoch=steps)
    log = train_steps(model, opt, ds, steps, batch_size=64, seed=seed, schedule=sched)
    train, test = evaluate_split(model, ds, "train"), evaluate_split(model, ds, "test")
    return {"loss": log["loss"], "train_err": 1 - train["top1"], "test_err": 1 - test["top1"]}


def degradation(err: dict[tuple[str, int], float], shallow: int, deep: int, margin: float = MARGIN
                ) -> tuple[str, str]:
    """(status, numbers) from training errors keyed by ("plain"|"residual", depth)."""
    plain_gap = err[("plain", deep)] - err[("plain", shallow)]
    res_gap = err[("residual", deep)] - err[("residual", shallow)]
    nums = (f"training error plain-{shallow} {err[('plain', shallow)]:.3f}, plain-{deep} {err[('plain', deep)]:.3f}, "
            f"residual-{shallow} {err[('residual', shallow)]:.3f}, residual-{deep} {err[('residual', deep)]:.3f}")
    if plain_gap > margin and res_gap <= margin / 2:
        return HOLDS, nums
    if plain_gap <= 0 and res_gap <= 0:
        return FAILS, nums
    return INCONCLUSIVE, nums


@experiment("depth",
            claim="A deeper plain network has a higher training error than a shallower one (not overfitting), "
                  "while the residual network of the same depth does not.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('ResNet': 'more layers is not always "
                   "better'); Saremi, 'ConvNets, ResNets, batch normalization'; He, Zhang, Ren & Sun 2016, Fig. 1 and 6",
            quick_time="about 2.5 min (138 s measured)", full_time="about 3 h for 20 vs 56 layers at widths 16-32-64 (estimate)",
            datasets=("mnist", "cifar10"))
def run_depth(ctx: Context) -> Outcome:
    ds = subset(ctx.dataset(), ctx.pick(smoke=128, quick=3000, full=50000), ctx.pick(smoke=64, quick=1000, full=10000))
    shallow_n, deep_n = ctx.pick(smoke=(1, 2), quick=(1, 3), full=(3, 9))
    widths = ctx.pick(smoke=[4, 8, 8], quick=[8, 16, 32], full=[16, 32, 64])
    steps = ctx.pick(smoke=4, quick=150, full=20000)
    depths = {n: 6 * n + 2 for n in (shallow_n, deep_n)}
    rows, curves, err = [], {}, {}
    for kind in ("plain", "residual"):
        for n, d in depths.items():
            runs = [ctx.step(f"{kind}-{d}-seed={s}", lambda n=n, s=s, kind=kind:
                             depth_run(ds, n, widths, kind == "residual", steps, s)) for s in range(ctx.seeds)]
            err[(kind, d)] = mean(r["train_err"] for r in runs)
            curves[(kind, d)] = runs[0]["loss"]
            rows.append({"network": kind, "depth": d, "train_err": err[(kind, d)],
                         "test_err": mean(r["test_err"] for r in runs), "steps": steps})
    fig, axes = figure(1, 2, size=(10, 3.6))
    for ax, kind in zip(axes, ("plain", "residual")):
        for d in depths.values():
            ema, smooth = None, []
            for v in curves[(kind, d)]:
                ema = v if ema is None else 0.95 * ema + 0.05 * v
                smooth.append(ema)
            ax.plot(smooth, label=f"{kind}-{d} (train err {err[(kind, d)]:.3f})")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss (smoothed)")
        ax.set_title(kind, fontsize=9)
        ax.legend(fontsize=8)
    save(fig, ctx.path("depth.png"))
    status, nums = degradation(err, *depths.values())
    test = ", ".join(f"{r['network']}-{r['depth']} {r['test_err']:.3f}" for r in rows)
    verdicts = [Verdict(f"plain-{depths[deep_n]} trains worse than plain-{depths[shallow_n]}, residual does not",
                        status, f"{nums}; test error {test} (a difference counts above {MARGIN})")]
    measured = (f"resnet_cifar (BN, widths {widths}) with and without shortcuts at depths {list(depths.values())}, "
                f"on {len(ds.train_x)} {ds.name} images, {steps} SGD steps of batch 64 (lr 0.1 cosine, momentum 0.9, "
                f"wd 1e-4), {ctx.seeds} seed(s); training error over the whole training subset in eval mode.")
    return Outcome(rows, verdicts, measured, ["depth.png"])
