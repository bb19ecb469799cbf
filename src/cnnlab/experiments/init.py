"""Why initialization matters (Ryu, ch. 3, "Weight initialization": the LeCun, Xavier and He
derivations; the optimization lecture notes, "Initialization"; CSE 471, "Xavier Initialization").

A deep MLP of constant width n (``mlp`` from the registry, its ReLUs swapped for tanh where asked),
initialized with each scheme of ``cnnlab.models.init`` and with three bad ones (all zeros,
N(0, 0.01^2), N(0, 1)). For one MNIST batch it records, per layer l, the variance of the
pre-activations z_l (forward) and of the loss gradient dL/dz_l (backward), beside the derivation's
prediction Var[z_l] = Var[z_1] g^(l-1) with the per-layer gain g = n sigma^2 c, where c = 1 for
tanh (linear near 0) and 1/2 for ReLU (half of the inputs are zeroed). Then each configuration is
trained briefly to see which train at all.

Verdict (``preserved``): a scheme preserves the variance when the last layer's forward variance and
the first layer's gradient variance stay within a factor ``BAND`` of the first (last) layer's.
The claim holds when the scalings derived for the activation (LeCun and Xavier for tanh, He for
ReLU) preserve it and zeros, too small and too large do not.

The same measurement is made on a VGG-style CNN without BN (``build_cnn``: a stack of 3x3
same-padded convolutions of constant width C with tanh or ReLU, then global average pooling and a
linear classifier). Every conv after the first has fan-in = fan-out = 9C, so the derivation is the
MLP's with n = 9C. VGG's max pools are left out of the stack on purpose: a max over a window of
ReLU outputs raises the second moment by a factor the derivation does not model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.experiments.base import FAILS, HOLDS, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import accuracy, loader, mean, seeded, subset, tensors
from cnnlab.experiments.plots import figure, save

# "Near 1": within two orders of magnitude over the hidden layers. tanh contracts a little at
# every layer (tanh(z)^2 < z^2), so even LeCun's scaling loses variance slowly (about 0.02 after
# 19 tanh layers, measured), where the bad scalings lose or gain 30 orders of magnitude.
BAND = 100.0
TRAINS = 0.3  # "trains": test accuracy at least three times chance after the short run
BAD = {"zeros": 0.0, "small": 0.01, "large": 1.0}  # fixed standard deviations
MATCHED = {"tanh": ("lecun", "xavier-normal", "xavier-uniform"), "relu": ("he-fan-in", "he-fan-out")}
SCHEMES = ("zeros", "small", "large", "lecun", "xavier-normal", "xavier-uniform", "he-fan-in", "he-fan-out")


def build(activation: str, scheme: str, depth: int, width: int, in_features: int) -> nn.Module:
    """The registry's MLP with ``depth - 1`` hidden layers of ``width``, re-initialized by ``scheme``."""
    from cnnlab import models
    from cnnlab.models.init import apply_init

    model = models.create("mlp", hidden=[width] * (depth - 1), num_classes=10, in_channels=1,
                          input_size=int(math.isqrt(in_features)))
    if activation == "tanh":
        model = nn.Sequential(*[nn.Tanh() if isinstance(m, nn.ReLU) else m for m in model])
    if scheme in BAD:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=BAD[scheme]) if BAD[scheme] else nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
    else:
        apply_init(model, scheme)
    return model


def build_cnn(activation: str, scheme: str, depth: int, channels: int, in_channels: int = 1,
              num_classes: int = 10) -> nn.Sequential:
    """A VGG-style CNN without BN: ``depth`` 3x3 same-padded convs of ``channels`` (tanh or ReLU
    after each), global average pooling, a linear classifier; re-initialized by ``scheme``."""
    from cnnlab.models.init import apply_init

    act = nn.Tanh if activation == "tanh" else nn.ReLU
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), act()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    if scheme in BAD:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, std=BAD[scheme]) if BAD[scheme] else nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
    else:
        apply_init(model, scheme)
    return model


def gain(activation: str, scheme: str, width: int) -> float:
    """The derivation's per-layer variance factor g = n sigma^2 c (square layers of width n)."""
    from cnnlab.models.init import expected_std

    std = BAD[scheme] if scheme in BAD else expected_std(scheme, width, width)
    return width * std ** 2 * (1.0 if activation == "tanh" else 0.5)


def variances(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per linear or conv layer: Var[z_l] of its output and Var[dL/dz_l] for the cross-entropy on (x, y)."""
    outs: list[torch.Tensor] = []

    def keep(module, args, out):
        out.retain_grad()
        outs.append(out)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad(set_to_none=True)
    return [z.var().item() for z in outs], [(z.grad.var().item() if z.grad is not None else 0.0) for z in outs]


def preserved(forward: list[float], backward: list[float], band: float = BAND) -> bool:
    """Over the hidden layers (1 .. L-1, the classifier left out since its fan-out is the class
    count): the last hidden layer's forward variance and the first layer's gradient variance, each
    within a factor ``band`` of where they start."""
    forward, backward = forward[:-1], backward[:-1]
    def within(start: float, end: float) -> bool:
        return start > 0 and math.isfinite(end) and 1 / band <= end / start <= band

    return within(forward[0], forward[-1]) and within(backward[-1], backward[0])


def train_briefly(model: nn.Module, ds, steps: int, seed: int, lr: float = 0.01) -> float:
    from cnnlab.train.optim import make_optimizer

    opt = make_optimizer(model, "sgd", lr=lr, momentum=0.9)
    batches = loader(ds, batch_size=128, seed=seed)
    done = 0
    while done < steps:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                return float("nan")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
        batches.set_epoch(batches.epoch + 1)
    x, y = tensors(ds, "test")
    return accuracy(model, x, y)


LENET_SCHEMES = ("xavier-uniform", "torch-default", "small", "large")


def lenet_run(ds, scheme: str, steps: int, seed: int) -> dict:
    """CSE 471's sigmoid LeNet (``lenet5-d2l``: its own init is Xavier-uniform) re-initialized with
    ``scheme``: per-layer variances on one batch, then a short SGD run."""
    from cnnlab import models
    from cnnlab.models.init import apply_init

    seeded(seed)
    c, h, _ = ds.input_size
    model = models.create("lenet5-d2l", num_classes=ds.num_classes, in_channels=c, input_size=h)
    if scheme == "torch-default":
        apply_init(model, "torch-default")
    elif scheme in BAD:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, std=BAD[scheme])
                nn.init.zeros_(m.bias)
    x, y = tensors(ds, "train")
    outs: list[torch.Tensor] = []

    def keep(module, args, out):
        out.retain_grad()
        outs.append(out)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    F.cross_entropy(model(x[:512]), y[:512]).backward()
    for hk in hooks:
        hk.remove()
    model.zero_grad(set_to_none=True)
    grads = [z.grad.var().item() for z in outs]
    return {"var_grad_first": grads[0], "var_grad_last": grads[-1],
            "test_acc": train_briefly(model, ds, steps, seed, lr=0.5)}


def _plot(path, curves, depth, title, xlabel="layer", ylim=(1e-12, 1e12)):
    fig, axes = figure(2, 2, size=(9, 6.4))
    for col, activation in enumerate(("tanh", "relu")):
        for row, key in enumerate(("forward", "backward")):
            ax = axes[2 * row + col]
            for scheme in SCHEMES:
                c = curves[(activation, scheme)]
                vals = [max(v, 1e-30) for v in c[key]]
                style = "-" if scheme in MATCHED[activation] else ":"
                line, = ax.plot(range(1, depth + 1), vals, style, marker=".", label=scheme)
                if key == "forward" and scheme != "zeros":
                    ax.plot(range(1, depth + 1), [max(v, 1e-30) for v in c["predicted"]], "--",
                            color=line.get_color(), linewidth=0.7, alpha=0.6)
            ax.set_yscale("log")
            ax.set_ylim(*ylim)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("Var[z_l]" if key == "forward" else "Var[dL/dz_l]")
            ax.set_title(f"{activation}: {'activations (dashed: derivation)' if key == 'forward' else 'gradients'}",
                         fontsize=9)
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


@experiment("init",
            claim="The variance-preserving scalings (LeCun/Xavier for tanh, He for ReLU) keep activation and gradient "
                  "variance near constant through depth, and the network trains; zeros, too small and too large "
                  "initializations make them vanish or explode.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Weight initialization'); the "
                   "optimization lecture notes ('Initialization'); CSE 471 ('Xavier Initialization'); LeCun et al. "
                   "1998, Glorot & Bengio 2010, He et al. 2015",
            quick_time="about 2 min (99 to 135 s measured; 52 s with the CNN part, machine less loaded)", full_time="about 7 min (estimate)")
def run_init(ctx: Context) -> Outcome:
    ds = ctx.dataset()
    depth = ctx.pick(smoke=6, quick=20, full=30)
    width = ctx.pick(smoke=32, quick=256, full=512)
    steps = ctx.pick(smoke=5, quick=150, full=600)
    sub = subset(ds, ctx.pick(smoke=256, quick=5000, full=20000), ctx.pick(smoke=128, quick=2000, full=10000))
    x, y = tensors(sub, "train")
    x, y = x[:512], y[:512]
    in_features = x[0].numel()
    rows, curves = [], {}
    for activation in ("tanh", "relu"):
        for scheme in SCHEMES:
            def measure(activation=activation, scheme=scheme):
                out = []
                for seed in range(ctx.seeds):
                    seeded(seed)
                    model = build(activation, scheme, depth, width, in_features)
                    fwd, bwd = variances(model, x, y)
                    acc = train_briefly(model, sub, steps, seed)
                    out.append({"forward": fwd, "backward": bwd, "test_acc": acc})
                return out
            runs = ctx.step(f"{activation}-{scheme}", measure)
            fwd = [mean(r["forward"][i] for r in runs) for i in range(depth)]
            bwd = [mean(r["backward"][i] for r in runs) for i in range(depth)]
            g = gain(activation, scheme, width)
            predicted = [fwd[0] * g ** i for i in range(depth)]
            acc = mean(r["test_acc"] for r in runs)
            curves[(activation, scheme)] = {"forward": fwd, "backward": bwd, "predicted": predicted}
            for layer in range(depth):
                rows.append({"model": "mlp", "activation": activation, "init": scheme, "layer": layer + 1, "var_z": fwd[layer],
                             "var_z_predicted": predicted[layer], "var_grad": bwd[layer],
                             "gain_per_layer": g, "preserved": preserved(fwd, bwd), "test_acc_after": acc})
    _plot(ctx.path("init-variance.png"), curves, depth,
          f"{depth}-layer MLP, width {width}, one MNIST batch at initialization")

    def summary(activation, scheme):
        r = [row for row in rows if row["model"] == "mlp" and row["activation"] == activation and row["init"] == scheme]
        return (f"{activation}/{scheme}: Var[z_{depth - 1}]/Var[z_1] = {r[-2]['var_z'] / max(r[0]['var_z'], 1e-300):.2g}, "
                f"Var[g_1]/Var[g_{depth - 1}] = {r[0]['var_grad'] / max(r[-2]['var_grad'], 1e-300):.2g}, "
                f"acc {r[0]['test_acc_after']:.2f}")

    def ok(activation, scheme):
        return next(r for r in rows if r["model"] == "mlp" and r["activation"] == activation
                    and r["init"] == scheme)["preserved"]

    def acc(activation, scheme):
        return next(r for r in rows if r["model"] == "mlp" and r["activation"] == activation
                    and r["init"] == scheme)["test_acc_after"]

    good = [(a, s) for a in MATCHED for s in MATCHED[a]]
    bad = [(a, s) for a in MATCHED for s in BAD]
    variance_ok = all(ok(*c) for c in good) and not any(ok(*c) for c in bad)
    best_bad = max((acc(*c) for c in bad), key=lambda v: -1 if math.isnan(v) else v)
    worst_good = min(acc(*c) for c in good)
    trains_ok = worst_good >= TRAINS and not best_bad >= TRAINS if not math.isnan(worst_good) else False
    verdicts = [
        Verdict(f"variance kept within a factor {BAND:g} over the hidden layers by the matched scalings, "
                "lost by zeros/small/large",
                HOLDS if variance_ok else FAILS,
                "; ".join(summary(*c) for c in good + bad)),
        Verdict(f"matched scalings train in {steps} SGD steps, the bad ones do not",
                HOLDS if trains_ok else FAILS,
                f"worst matched test accuracy {worst_good:.2f}, best of zeros/small/large {best_bad:.2f} "
                f"(trains: at least {TRAINS}, three times chance)"),
    ]
    lenet = {sc: ctx.step(f"lenet5-d2l-{sc}", lambda sc=sc: lenet_run(sub, sc, steps, 0)) for sc in LENET_SCHEMES}
    for sc, r in lenet.items():
        rows.append({"model": "lenet5-d2l", "activation": "sigmoid", "init": sc, "var_grad": r["var_grad_first"],
                     "var_grad_last": r["var_grad_last"], "test_acc_after": r["test_acc"]})
    lenet_ok = lenet["xavier-uniform"]["test_acc"] >= TRAINS and all(
        not lenet[sc]["test_acc"] >= TRAINS for sc in ("small", "large"))
    verdicts.append(Verdict("CSE 471's sigmoid LeNet trains with Xavier-uniform, not with too small or too large weights",
                            HOLDS if lenet_ok else FAILS,
                            "; ".join(f"{sc}: acc {r['test_acc']:.2f}, Var[g] first/last layer "
                                      f"{r['var_grad_first'] / max(r['var_grad_last'], 1e-300):.2g}"
                                      for sc, r in lenet.items())))
    # the VGG-style CNN without BN: the same measurement, n = 9C
    cdepth, cwidth = ctx.pick(smoke=4, quick=10, full=16), ctx.pick(smoke=4, quick=32, full=64)
    cx, cy = x[:ctx.pick(smoke=16, quick=64, full=128)], y[:ctx.pick(smoke=16, quick=64, full=128)]
    ccurves, cnn = {}, {}
    for activation in ("tanh", "relu"):
        for scheme in SCHEMES:
            def measure_cnn(activation=activation, scheme=scheme):
                out = []
                for seed in range(ctx.seeds):
                    seeded(seed)
                    fwd, bwd = variances(build_cnn(activation, scheme, cdepth, cwidth, cx.shape[1]), cx, cy)
                    out.append({"forward": fwd, "backward": bwd})
                return out
            runs = ctx.step(f"cnn-{activation}-{scheme}", measure_cnn)
            fwd = [mean(r["forward"][i] for r in runs) for i in range(cdepth + 1)]
            bwd = [mean(r["backward"][i] for r in runs) for i in range(cdepth + 1)]
            g = gain(activation, scheme, 9 * cwidth)
            predicted = [fwd[0] * g ** i for i in range(cdepth)] + [float("nan")]  # the classifier follows a pool
            ccurves[(activation, scheme)] = {"forward": fwd, "backward": bwd, "predicted": predicted}
            cnn[(activation, scheme)] = (preserved(fwd, bwd), fwd[cdepth - 1] / max(fwd[0], 1e-300),
                                         bwd[0] / max(bwd[cdepth - 1], 1e-300))
            for layer in range(cdepth + 1):
                rows.append({"model": "vgg-style-cnn", "activation": activation, "init": scheme, "layer": layer + 1,
                             "var_z": fwd[layer], "var_z_predicted": predicted[layer], "var_grad": bwd[layer],
                             "gain_per_layer": g, "preserved": cnn[(activation, scheme)][0]})
    _plot(ctx.path("init-variance-cnn.png"), ccurves, cdepth + 1,
          f"VGG-style CNN without BN: {cdepth} 3x3 convs of {cwidth} channels + linear, one MNIST batch at init",
          xlabel=f"layer (1-{cdepth}: conv, {cdepth + 1}: linear after the pool)", ylim=(1e-20, 1e20))
    verdicts.append(cnn_verdict(cnn, cdepth))
    mismatched = [f"{a}/{s}: {'kept' if ok(a, s) else 'lost'}, acc {acc(a, s):.2f}"
                  for a in MATCHED for s in SCHEMES if s not in BAD and s not in MATCHED[a]]
    measured = (f"A {depth}-layer MLP (the registry's mlp, {depth - 1} hidden layers of width {width}, tanh or ReLU, "
                f"biases 0) on one batch of 512 MNIST images: per-layer Var[z_l] and Var[dL/dz_l] of the "
                f"cross-entropy, beside the derivation's Var[z_1] g^(l-1), g = n sigma^2 c (c = 1 tanh, 1/2 ReLU); "
                f"then {steps} SGD steps (lr 0.01, momentum 0.9, batch 128) on {len(sub.train_x)} images, test "
                f"accuracy on {len(sub.test_x)}. The sigmoid LeNet (lenet5-d2l, CSE 471) gets the same {steps} SGD steps at lr 0.5 "
                f"(momentum 0.9; sigmoid nets need a large lr), re-initialized by each scheme. Mismatched pairs, for reference: {'; '.join(mismatched)}.")
    measured += (f" The VGG-style CNN without BN: {cdepth} 3x3 same-padded convs of {cwidth} channels (tanh or ReLU), "
                 f"global average pool, linear; the same per-layer variances on {len(cx)} MNIST images at "
                 f"initialization, beside the derivation with n = 9 x {cwidth} (not trained).")
    return Outcome(rows, verdicts, measured, ["init-variance.png", "init-variance-cnn.png"])


def cnn_verdict(cnn: dict, depth: int) -> Verdict:
    """``cnn`` maps (activation, scheme) to (preserved, Var[z_L]/Var[z_1], Var[g_1]/Var[g_L]) over the
    convs: holds when every matched scaling preserves the variance and no zeros/small/large one does."""
    good = [(a, s) for a in MATCHED for s in MATCHED[a]]
    bad = [(a, s) for a in MATCHED for s in BAD]
    holds = all(cnn[c][0] for c in good) and not any(cnn[c][0] for c in bad)
    return Verdict(f"in a {depth}-conv VGG-style CNN without BN the matched scalings keep the variance within a "
                   f"factor {BAND:g}, zeros/small/large do not",
                   HOLDS if holds else FAILS,
                   "; ".join(f"{a}/{s}: Var[z_{depth}]/Var[z_1] = {cnn[(a, s)][1]:.2g}, "
                             f"Var[g_1]/Var[g_{depth}] = {cnn[(a, s)][2]:.2g}" for a, s in good + bad))
