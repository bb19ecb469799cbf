"""What batch norm buys (Ryu, ch. 3, "Batch normalization": "training of VGGNet becomes much easier
with BN", and the BN-only training figure, Frankle, Schwab & Morcos 2021; Saremi, "small batch
training is bad"; the optimization lecture notes, "it's not viable for very small batches").

Three parts, all on the registry's CIFAR-style network (``resnet20`` builder, 3x3 convs, no max
pool) on an MNIST subset:

(a) a deep *plain* CNN (``shortcut=False``, 6n+2 layers) with BatchNorm and with
    ``norm_layer=nn.Identity`` (no normalization), trained at several learning rates;
(b) the BN network at a tiny and a normal batch size, the same number of epochs, lr scaled with
    the batch (Goyal et al. 2017), evaluated with the running statistics;
(c) a randomly initialized residual network of which only the BN gamma and beta are trained
    (``cnnlab.train.train_only_bn``) against a linear probe (only the final layer trained).

Not covered: the claim that BN and dropout together hurt (Li et al. 2019).
"""
from __future__ import annotations

from torch import nn

from cnnlab.experiments.base import FAILS, HOLDS, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import evaluate_split, mean, seeded, subset, train_steps
from cnnlab.experiments.plots import figure, save

TRAINS = 0.5  # test accuracy that counts as "trains" after the short run


def bn_run(ds, *, bn: bool, shortcut: bool, lr: float, steps: int, batch_size: int, seed: int, n: int,
           widths: list[int], only: str | None = None, optimizer: str = "sgd") -> dict:
    from cnnlab import models
    from cnnlab.train import train_only_bn
    from cnnlab.train.optim import make_optimizer

    seeded(seed)
    model = models.create("resnet20", layers=[n, n, n], widths=widths, shortcut=shortcut,
                          norm_layer=nn.BatchNorm2d if bn else nn.Identity,
                          num_classes=ds.num_classes, in_channels=ds.input_size[0])
    if only == "bn":
        train_only_bn(model)
    elif only == "fc":
        fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in fc.parameters():
            p.requires_grad_(True)
        model.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)  # a frozen net keeps its stats
    kw = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt = make_optimizer(model, optimizer, lr=lr, **kw)
    log = train_steps(model, opt, ds, steps, batch_size=batch_size, seed=seed)
    if only == "fc":
        model.eval()
    diverged = len(log["loss"]) < steps or log["loss"][-1] != log["loss"][-1]
    test = evaluate_split(model, ds, "test")
    return {"test_acc": float("nan") if diverged else test["top1"], "loss": log["loss"], "diverged": diverged}


@experiment("batchnorm",
            claim="BN makes a deep plain CNN train across learning rates; BN suffers at tiny batches; training only "
                  "BN's gamma and beta of a random network beats a linear probe on it.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Batch normalization', 'BN has "
                   "trainable parameters'); Saremi, 'ConvNets, ResNets, batch normalization'; the optimization lecture "
                   "notes ('Layer Normalization'); Ioffe & Szegedy 2015; Frankle, Schwab & Morcos 2021",
            quick_time="about 1.5 min (98 s measured)", full_time="about 40 min (estimate)")
def run_batchnorm(ctx: Context) -> Outcome:
    ds = subset(ctx.dataset(), ctx.pick(smoke=128, quick=3000, full=20000), ctx.pick(smoke=64, quick=1000, full=10000))
    n = ctx.pick(smoke=1, quick=2, full=3)
    widths = ctx.pick(smoke=[4, 8, 8], quick=[8, 16, 32], full=[16, 32, 64])
    steps = ctx.pick(smoke=3, quick=100, full=1500)
    lrs = ctx.pick(smoke=[0.01, 0.5], quick=[0.003, 0.03, 0.3], full=[0.001, 0.01, 0.1, 0.5])
    rows, verdicts = [], []
    depth = 6 * n + 2

    def runs(key, **kw):
        return [ctx.step(f"{key}-seed={s}", lambda s=s: bn_run(ds, seed=s, n=n, widths=widths, **kw))
                for s in range(ctx.seeds)]

    # (a) BN vs no normalization across learning rates
    acc = {}
    for bn in (True, False):
        for lr in lrs:
            r = runs(f"plain{depth}-{'bn' if bn else 'nobn'}-lr={lr}", bn=bn, shortcut=False, lr=lr, steps=steps,
                     batch_size=32)
            acc[(bn, lr)] = mean(x["test_acc"] for x in r)
            rows.append({"part": "bn-vs-lr", "bn": bn, "lr": lr, "batch": 32, "steps": steps, "test_acc": acc[(bn, lr)]})
    trained = {bn: sum(1 for lr in lrs if acc[(bn, lr)] >= TRAINS) for bn in (True, False)}
    best = {bn: max((acc[(bn, lr)] for lr in lrs if acc[(bn, lr)] == acc[(bn, lr)]), default=0.0) for bn in (True, False)}
    verdicts.append(Verdict(f"plain-{depth} with BN trains at more learning rates than without",
                            HOLDS if trained[True] > trained[False] and best[True] >= best[False] else FAILS,
                            "test accuracy " + ", ".join(f"{'BN' if bn else 'no BN'} lr {lr:g}: {acc[(bn, lr)]:.3f}"
                                                         for bn in (True, False) for lr in lrs)
                            + f" (trains: at least {TRAINS}; nan: diverged)"))

    # (b) batch size: the same number of epochs, lr proportional to the batch
    small, normal = ctx.pick(smoke=(2, 16), quick=(2, 32), full=(2, 64))
    base_lr = 0.03
    bacc = {}
    for b in (small, normal):
        s_b = max(1, steps * normal // b)
        r = runs(f"batch={b}", bn=True, shortcut=False, lr=base_lr * b / normal, steps=s_b, batch_size=b)
        bacc[b] = mean(x["test_acc"] for x in r)
        rows.append({"part": "batch-size", "bn": True, "lr": base_lr * b / normal, "batch": b, "steps": s_b,
                     "test_acc": bacc[b]})
    verdicts.append(Verdict(f"BN at batch {small} is worse than at batch {normal} (same epochs)",
                            HOLDS if bacc[small] < bacc[normal] - 0.02 else FAILS,
                            f"test accuracy {bacc[small]:.3f} at batch {small} vs {bacc[normal]:.3f} at batch {normal}"))

    # (c) BN-only vs linear probe on a random residual network
    only_steps = ctx.pick(smoke=3, quick=150, full=2000)
    oacc = {}
    for only in ("bn", "fc"):
        r = runs(f"only-{only}", bn=True, shortcut=True, lr=1e-2, steps=only_steps, batch_size=64, only=only,
                 optimizer="adam")
        oacc[only] = mean(x["test_acc"] for x in r)
        rows.append({"part": "train-only", "trained": "BN gamma, beta" if only == "bn" else "final layer",
                     "lr": 1e-2, "batch": 64, "steps": only_steps, "test_acc": oacc[only]})
    verdicts.append(Verdict("training only BN beats a linear probe on the same random network",
                            HOLDS if oacc["bn"] > oacc["fc"] + 0.02 else FAILS,
                            f"test accuracy BN-only {oacc['bn']:.3f}, linear probe {oacc['fc']:.3f}"))

    fig, (a, b, c) = figure(1, 3, size=(12, 3.4))
    for bn in (True, False):
        a.plot(lrs, [acc[(bn, lr)] for lr in lrs], "o-", label="BN" if bn else "no BN")
    a.set_xscale("log")
    a.set_xlabel("learning rate")
    a.set_ylabel("test accuracy")
    a.set_title(f"plain-{depth} CNN, {steps} SGD steps", fontsize=9)
    a.legend(fontsize=8)
    b.bar([str(k) for k in bacc], list(bacc.values()))
    b.set_xlabel("batch size (BN)")
    b.set_title("same epochs, lr scaled with the batch", fontsize=9)
    c.bar(["BN only", "linear probe"], [oacc["bn"], oacc["fc"]])
    c.set_title("random residual net, Adam", fontsize=9)
    for ax in (b, c):
        ax.set_ylim(0, 1)
        ax.set_ylabel("test accuracy")
    save(fig, ctx.path("batchnorm.png"))
    measured = (f"resnet20's builder on {len(ds.train_x)} MNIST images (test {len(ds.test_x)}), widths {widths}, "
                f"{ctx.seeds} seed(s). (a) plain-{depth} (no shortcuts), BatchNorm2d vs Identity, SGD momentum 0.9 "
                f"batch 32, {steps} steps, lrs {lrs}; (b) BN plain-{depth} at batch {small} and {normal}, "
                f"{steps} steps' worth of epochs at batch {normal}, lr {base_lr:g} x batch/{normal}; (c) residual "
                f"{depth}-layer net, Adam lr 1e-2, {only_steps} steps, only BN gamma/beta vs only the final layer.")
    return Outcome(rows, verdicts, measured, ["batchnorm.png"])
