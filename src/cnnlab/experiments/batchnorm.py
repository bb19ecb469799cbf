"""What batch norm buys (Ryu, ch. 3, "Batch normalization": "training of VGGNet becomes much easier
with BN", and the BN-only training figure, Frankle, Schwab & Morcos 2021; Saremi, "small batch
training is bad"; the optimization lecture notes, "it's not viable for very small batches").

Parts (a) to (c) are on the registry's CIFAR-style network (``resnet20`` builder, 3x3 convs, no max
pool) on an MNIST subset:

(a) a deep *plain* CNN (``shortcut=False``, 6n+2 layers) with BatchNorm and with
    ``norm_layer=nn.Identity`` (no normalization), trained at several learning rates;
(b) the BN network at a tiny and a normal batch size, the same number of epochs, lr scaled with
    the batch (Goyal et al. 2017), evaluated with the running statistics;
(c) a randomly initialized residual network of which only the BN gamma and beta are trained
    (``cnnlab.train.train_only_bn``) against a linear probe (only the final layer trained).

(d) Ryu's remark that BN and dropout together hurt (Li, Chen, Hu & Yang 2019, "Understanding the
    disharmony between dropout and batch normalization by variance shift"): a small CNN with BN,
    with and without dropout directly before each BN layer, trained the same short way. Besides
    the test accuracy it measures Li et al.'s *variance shift*: for each BN layer, the running
    variance it learned in training divided by the actual variance of its input in eval mode
    (dropout off). Without dropout the ratio is near 1; dropout inflates the training variance
    (by about 1/(1-p) for zero-mean inputs), so BN normalizes test inputs with the wrong scale.
    As a check on the mechanism it also reports the dropout net's accuracy after its BN statistics
    are recomputed with dropout off (Li et al.'s first remedy).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import accuracy, evaluate_split, loader, mean, seeded, subset, tensors, train_steps
from cnnlab.experiments.plots import figure, save

TRAINS = 0.5  # test accuracy that counts as "trains" after the short run
SHIFT = 1.1  # a BN layer's running/actual variance ratio that counts as a visible variance shift
WORSE = 0.01  # the test accuracy drop that counts as "dropout + BN is worse"


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


def dropout_bn_net(channels: int, blocks: int, p: float, in_channels: int, num_classes: int) -> nn.Sequential:
    """conv-ReLU, then ``blocks`` x (conv, Dropout(p), BatchNorm2d, ReLU) with a 2x2 max pool after
    each, global average pool, linear: dropout sits directly before every BN layer (Li et al. 2019)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False)]
        layers += [nn.Dropout(p)] if p > 0 else []
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


@torch.no_grad()
def variance_shift(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Per BN layer, in eval mode: mean over channels of running_var / Var[input] (per channel, over
    batch and space), the ratio Li et al. 2019 measure. 1 means no shift; the model's mode is kept."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(args[0])) for m in bns]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return [(bn.running_var / z.transpose(0, 1).flatten(1).var(dim=1).clamp_min(1e-12)).mean().item()
            for bn, z in zip(bns, seen)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, ds, batch_size: int = 256) -> None:
    """Re-estimate every BN layer's running statistics over the training set with dropout off
    (cumulative average), the remedy Li et al. 2019 test first."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    for x, _ in loader(ds, batch_size=batch_size, shuffle=False):
        model(x)
    model.eval()


def dropout_bn_run(ds, *, p: float, channels: int, blocks: int, steps: int, lr: float, seed: int) -> dict:
    from cnnlab.train.optim import make_optimizer

    seeded(seed)
    model = dropout_bn_net(channels, blocks, p, ds.input_size[0], ds.num_classes)
    opt = make_optimizer(model, "sgd", lr=lr, momentum=0.9)
    log = train_steps(model, opt, ds, steps, batch_size=64, seed=seed)
    diverged = len(log["loss"]) < steps or log["loss"][-1] != log["loss"][-1]
    x, y = tensors(ds, "test")
    acc = float("nan") if diverged else accuracy(model, x, y)
    shift = variance_shift(model, x[:1000])
    recompute_bn_stats(model, ds)
    return {"test_acc": acc, "shift": shift, "test_acc_recomputed": float("nan") if diverged else accuracy(model, x, y),
            "shift_recomputed": variance_shift(model, x[:1000])}


def dropout_bn_verdict(acc_bn: float, acc_drop: float, shift_bn: float, shift_drop: float, p: float) -> Verdict:
    """Holds when the dropout + BN net tests worse (by at least ``WORSE``) and its BN layers show the
    variance shift (ratio at least ``SHIFT``, and the BN-only net's does not); the shift without the
    drop does not hold; no visible shift (or a diverged run) is inconclusive."""
    numbers = (f"test accuracy BN {acc_bn:.3f}, dropout({p:g}) + BN {acc_drop:.3f}; variance shift "
               f"(running / actual var, mean over BN layers) BN {shift_bn:.2f}, dropout + BN {shift_drop:.2f} "
               f"(visible: at least {SHIFT:g}; worse: by at least {WORSE:g})")
    if any(math.isnan(v) for v in (acc_bn, acc_drop, shift_bn, shift_drop)):
        status = INCONCLUSIVE
    elif not (shift_drop >= SHIFT and shift_bn < SHIFT):
        status = INCONCLUSIVE
    else:
        status = HOLDS if acc_drop < acc_bn - WORSE else FAILS
    return Verdict("dropout before BN shifts BN's variance and hurts test accuracy (Li et al. 2019)", status, numbers)


@experiment("batchnorm",
            claim="BN makes a deep plain CNN train across learning rates; BN suffers at tiny batches; training only "
                  "BN's gamma and beta of a random network beats a linear probe on it; dropout before BN shifts BN's "
                  "variance and hurts.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Batch normalization', 'BN has "
                   "trainable parameters'); Saremi, 'ConvNets, ResNets, batch normalization'; the optimization lecture "
                   "notes ('Layer Normalization'); Ioffe & Szegedy 2015; Frankle, Schwab & Morcos 2021; Li, Chen, Hu & Yang 2019",
            quick_time="about 2 min (116 s measured)", full_time="about 70 min (estimate)")
def run_batchnorm(ctx: Context) -> Outcome:
    ds = subset(ctx.dataset(), ctx.pick(smoke=128, quick=3000, full=20000), ctx.pick(smoke=64, quick=1000, full=10000))
    n = ctx.pick(smoke=1, quick=2, full=3)
    widths = ctx.pick(smoke=[4, 8, 8], quick=[8, 16, 32], full=[16, 32, 64])
    steps = ctx.pick(smoke=3, quick=100, full=1500)
    lrs = ctx.pick(smoke=[0.01, 0.5], quick=[0.003, 0.03, 0.3], full=[0.001, 0.01, 0.1, 0.5])
    rows, verdicts = [], []
    depth = 6 * n + 2

    def runs(key, fn=None, **kw):
        if fn is None:
            fn, kw = bn_run, {"n": n, "widths": widths, **kw}
        return [ctx.step(f"{key}-seed={s}", lambda s=s: fn(ds, seed=s, **kw)) for s in range(ctx.seeds)]

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

    # (d) dropout directly before BN: accuracy and the variance shift (Li et al. 2019)
    p_drop = 0.5
    d_channels, d_blocks = ctx.pick(smoke=4, quick=32, full=64), ctx.pick(smoke=2, quick=3, full=3)
    d_steps = ctx.pick(smoke=3, quick=300, full=2000)
    dres = {}
    for p in (0.0, p_drop):
        r = runs(f"dropout-bn-p={p:g}", fn=dropout_bn_run, p=p, channels=d_channels, blocks=d_blocks, steps=d_steps,
                 lr=0.05)
        layers = len(r[0]["shift"])
        dres[p] = {"test_acc": mean(x["test_acc"] for x in r),
                   "test_acc_recomputed": mean(x["test_acc_recomputed"] for x in r),
                   "shift": [mean(x["shift"][i] for x in r) for i in range(layers)],
                   "shift_recomputed": [mean(x["shift_recomputed"][i] for x in r) for i in range(layers)]}
        for i in range(layers):
            rows.append({"part": "dropout-bn", "dropout": p, "bn_layer": i + 1, "lr": 0.05, "batch": 64,
                         "steps": d_steps, "test_acc": dres[p]["test_acc"], "variance_shift": dres[p]["shift"][i],
                         "test_acc_bn_recomputed": dres[p]["test_acc_recomputed"],
                         "variance_shift_bn_recomputed": dres[p]["shift_recomputed"][i]})
    dv = dropout_bn_verdict(dres[0.0]["test_acc"], dres[p_drop]["test_acc"], mean(dres[0.0]["shift"]),
                            mean(dres[p_drop]["shift"]), p_drop)
    verdicts.append(Verdict(dv.claim, dv.status, dv.numbers + f"; with BN statistics recomputed (dropout off) the "
                            f"dropout + BN net tests {dres[p_drop]['test_acc_recomputed']:.3f}, variance shift "
                            f"{mean(dres[p_drop]['shift_recomputed']):.2f}"))

    fig, (a, b, c, d) = figure(1, 4, size=(15.5, 3.4))
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
    for p in (0.0, p_drop):
        shift = dres[p]["shift"]
        d.plot(range(1, len(shift) + 1), shift, "o-",
               label=f"{'BN' if p == 0 else f'dropout {p:g} + BN'} (acc {dres[p]['test_acc']:.2f})")
    d.axhline(1.0, color="grey", linewidth=0.7)
    d.set_xticks(range(1, len(dres[0.0]["shift"]) + 1))
    d.set_xlabel("BN layer")
    d.set_ylabel("running var / actual var (eval)")
    d.set_title("variance shift (Li et al. 2019)", fontsize=9)
    d.legend(fontsize=7)
    for ax in (b, c):
        ax.set_ylim(0, 1)
        ax.set_ylabel("test accuracy")
    save(fig, ctx.path("batchnorm.png"))
    measured = (f"resnet20's builder on {len(ds.train_x)} MNIST images (test {len(ds.test_x)}), widths {widths}, "
                f"{ctx.seeds} seed(s). (a) plain-{depth} (no shortcuts), BatchNorm2d vs Identity, SGD momentum 0.9 "
                f"batch 32, {steps} steps, lrs {lrs}; (b) BN plain-{depth} at batch {small} and {normal}, "
                f"{steps} steps' worth of epochs at batch {normal}, lr {base_lr:g} x batch/{normal}; (c) residual "
                f"{depth}-layer net, Adam lr 1e-2, {only_steps} steps, only BN gamma/beta vs only the final layer; "
                f"(d) a CNN of {d_blocks} blocks conv-Dropout-BN-ReLU-maxpool ({d_channels} channels) with dropout "
                f"{p_drop:g} and without, SGD momentum 0.9 lr 0.05 batch 64, {d_steps} steps; variance shift = "
                f"running_var / per-channel variance of the BN layer's input on {min(1000, len(ds.test_x))} test "
                f"images in eval mode.")
    return Outcome(rows, verdicts, measured, ["batchnorm.png"])
