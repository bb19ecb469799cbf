"""Weight decay vs the l2 term (Ryu, ch. 3, "Weight decay ≅ l2-regularization": "For plain SGD,
weight decay and l2-regularization are equivalent. For other optimizers, the two are similar but
not the same"; Loshchilov & Hutter 2019, AdamW).

From one initialization and one batch order, in float64, pairs of runs of the registry's MLP:

- SGD (momentum 0.9) with ``weight_decay=lambda``  vs  SGD with (lambda/2)||theta||^2 in the loss;
- Adam with ``weight_decay=lambda`` (torch's coupled decay)  vs  Adam with the l2 term;
- Adam with the l2 term  vs  AdamW with decoupled decay, the same lambda times a factor so both
  pull with comparable strength (``ADAMW_FACTOR``).

It records the distance between the two parameter vectors after every step, the weight norms,
and how strongly each scheme shrinks weights that have seen large vs small gradients.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from cnnlab.experiments.base import FAILS, HOLDS, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import accuracy, loader, seeded, subset, tensors
from cnnlab.experiments.plots import figure, save

LAMBDA = 5e-3
TOLERANCE = 1e-10  # float64: "the same trajectory" up to rounding
DIFFERENT = 1e-2  # relative distance that counts as a different trajectory

# (label, optimizer, factory kwargs, explicit l2 lambda)
CONFIGS = {
    "sgd+wd": ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": LAMBDA}, 0.0),
    "sgd+l2": ("sgd", {"lr": 0.05, "momentum": 0.9}, LAMBDA),
    "adam+wd": ("adam", {"lr": 1e-3, "weight_decay": LAMBDA}, 0.0),
    "adam+l2": ("adam", {"lr": 1e-3}, LAMBDA),
    "adamw": ("adamw", {"lr": 1e-3, "weight_decay": LAMBDA * 20}, 0.0),
}
PAIRS = (("sgd+wd", "sgd+l2"), ("adam+wd", "adam+l2"), ("adam+l2", "adamw"))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def trajectories(ds, steps: int, seed: int, hidden: int = 64) -> dict[str, dict]:
    """Each configuration trained from the same initial weights on the same batches."""
    from cnnlab import models
    from cnnlab.train.optim import l2_penalty, make_optimizer

    seeded(seed)
    c, h, _ = ds.input_size
    base = models.create("mlp", hidden=[hidden], num_classes=ds.num_classes, in_channels=c, input_size=h).double()
    batches = []
    load = loader(ds, batch_size=64, seed=seed)
    while len(batches) < steps:
        batches += [(x.double(), y) for x, y in load]
        load.set_epoch(load.epoch + 1)
    batches = batches[:steps]
    out = {}
    for label, (name, kw, lam) in CONFIGS.items():
        model = copy.deepcopy(base)
        opt = make_optimizer(model, name, **kw)
        points, grad_sq = [flat(model)], torch.zeros_like(flat(model))
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            grad_sq += torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()),
                                                                             retain_graph=True)]) ** 2
            loss = loss + l2_penalty(model, lam, no_decay_bias_bn=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            points.append(flat(model))
        xt, yt = tensors(ds, "test")
        out[label] = {"points": torch.stack(points), "grad_sq": grad_sq, "init": flat(base),
                      "test_acc": accuracy(model, xt.double(), yt)}
    return out


def decay_by_gradient(run: dict) -> tuple[float, float]:
    """The mean |theta_T| / |theta_0| of the weights in the top and bottom quartile of accumulated
    squared gradient: how much each group shrank."""
    g, start, end = run["grad_sq"], run["init"].abs(), run["points"][-1].abs()
    keep = start > 1e-3
    g, ratio = g[keep], (end[keep] / start[keep])
    lo, hi = torch.quantile(g, 0.25), torch.quantile(g, 0.75)
    return ratio[g >= hi].median().item(), ratio[g <= lo].median().item()


@experiment("weight-decay-vs-l2",
            claim="For SGD, weight decay and an l2 term give the same trajectory; for Adam they do not, and AdamW's "
                  "decoupled decay is a different method.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('Weight decay ≅ "
                   "l2-regularization'); the optimization lecture notes; Loshchilov & Hutter 2019",
            quick_time="about 30 s (21 s measured)", full_time="about 2 min (estimate)")
def run_weight_decay(ctx: Context) -> Outcome:
    ds = subset(ctx.dataset(), ctx.pick(smoke=256, quick=4000, full=20000), ctx.pick(smoke=128, quick=2000, full=10000))
    steps = ctx.pick(smoke=15, quick=300, full=2000)
    rows, dist = [], {}
    runs = None
    for seed in range(ctx.seeds):
        def compute(seed=seed):
            r = trajectories(ds, steps, seed)
            gaps = {f"{a} vs {b}": ((r[a]["points"] - r[b]["points"]).norm(dim=1)
                                     / r[a]["points"].norm(dim=1)).tolist() for a, b in PAIRS}
            norms = {k: v["points"].norm(dim=1).tolist() for k, v in r.items()}
            shrink = {k: decay_by_gradient(v) for k, v in r.items()}
            return {"gaps": gaps, "norms": norms, "shrink": shrink, "acc": {k: v["test_acc"] for k, v in r.items()}}
        result = ctx.step(f"seed={seed}", compute)
        runs = runs or result
        for pair, gap in result["gaps"].items():
            dist.setdefault(pair, []).append(max(gap))
            for t in range(0, steps + 1, max(1, steps // 50)):
                rows.append({"seed": seed, "pair": pair, "step": t, "relative_distance": gap[t]})
        for k in CONFIGS:
            hi, lo = result["shrink"][k]
            rows.append({"seed": seed, "config": k, "step": steps, "weight_norm": result["norms"][k][-1],
                         "shrink_high_grad": hi, "shrink_low_grad": lo, "test_acc": result["acc"][k]})
    fig, (left, right) = figure(1, 2, size=(10, 3.6))
    for pair, gap in runs["gaps"].items():
        left.plot(range(len(gap)), [max(g, 1e-18) for g in gap], label=pair)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("||theta_A - theta_B|| / ||theta_A||")
    left.set_title("distance between the two trajectories (float64)", fontsize=9)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for k in ("sgd+wd", "adam+l2", "adamw"):
        right.plot(runs["norms"][k], label=k)
    right.set_xlabel("step")
    right.set_ylabel("||theta||")
    right.set_title("weight norm", fontsize=9)
    right.legend(fontsize=8)
    save(fig, ctx.path("weight-decay-vs-l2.png"))
    sgd, adam_same, adam_w = (max(dist[f"{a} vs {b}"]) for a, b in PAIRS)
    adam_w_min = min(dist["adam+l2 vs adamw"])
    s = runs["shrink"]
    verdicts = [
        Verdict("SGD: weight decay == l2 term", HOLDS if sgd < TOLERANCE else FAILS,
                f"largest relative distance over {steps} steps {sgd:.2g} (tolerance {TOLERANCE:g})"),
        Verdict("Adam with torch's weight_decay is Adam with the l2 term (coupled)",
                HOLDS if adam_same < TOLERANCE else FAILS, f"largest relative distance {adam_same:.2g}"),
        Verdict("Adam + l2 and AdamW follow different trajectories", HOLDS if adam_w_min > DIFFERENT else FAILS,
                f"relative distance {adam_w:.3g} (needs > {DIFFERENT:g}); Adam+l2 kept {s['adam+l2'][0]:.3f} of the "
                f"high-gradient weights' size and {s['adam+l2'][1]:.3f} of the low-gradient ones', AdamW "
                f"{s['adamw'][0]:.3f} and {s['adamw'][1]:.3f}"),
    ]
    measured = (f"The registry's MLP (one hidden layer of 64) in float64 on {len(ds.train_x)} MNIST images, "
                f"{steps} steps of batch 64 from one initialization and batch order, {ctx.seeds} seed(s); "
                f"lambda = {LAMBDA:g} (AdamW: {LAMBDA * 20:g}, its decay per step is lr*lambda), SGD lr 0.05 "
                f"momentum 0.9, Adam lr 1e-3.")
    return Outcome(rows, verdicts, measured, ["weight-decay-vs-l2.png"])
