"""Wide vs sharp minima (Ryu, ch. 3: "There is some empirical evidence that wide minima have better
test error than sharp minima"; Keskar et al. 2017; the filter-normalized directions of Li et al.
2018, shown in Saremi's lecture).

The same LeNet-5 trained with a small and a large batch (Adam, same lr) until it fits the training
subset (or a step limit), then: the test error, and the sharpness of the minimum it reached, the
mean over random filter-normalized directions d of the training-loss increase
L(theta + alpha d) - L(theta) at alpha = ``ALPHA``, with 1-D loss curves along those directions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Context, Outcome, Verdict, experiment
from cnnlab.experiments.common import accuracy, mean, seeded, subset, tensors, train_steps
from cnnlab.experiments.plots import figure, save

ALPHA = 0.5
ALPHAS = [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction with each filter (row of a weight) rescaled to the norm of the model's
    filter (Li et al. 2018, sec. 4); biases and 1-D parameters get 0, as in their code's default."""
    out = []
    for p in model.parameters():
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        dims = tuple(range(1, p.dim()))
        norm = torch.linalg.vector_norm
        d = d * (norm(p.detach(), dim=dims, keepdim=True) / norm(d, dim=dims, keepdim=True).clamp_min(1e-12))
        out.append(d)
    return out


@torch.no_grad()
def loss_along(model: nn.Module, direction: list[torch.Tensor], alphas, x, y) -> list[float]:
    """Training loss at theta + alpha d for each alpha (theta restored afterwards)."""
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    was = model.training
    model.eval()
    out = []
    try:
        for a in alphas:
            for p, p0, d in zip(params, start, direction):
                p.copy_(p0 + a * d)
            out.append(F.cross_entropy(model(x), y).item())
    finally:
        for p, p0 in zip(params, start):
            p.copy_(p0)
        model.train(was)
    return out


def sharpness_run(ds, batch_size: int, max_steps: int, directions: int, seed: int) -> dict:
    from cnnlab import models
    from cnnlab.train.optim import make_optimizer

    seeded(seed)
    c, h, _ = ds.input_size
    model = models.create("lenet5", num_classes=ds.num_classes, in_channels=c, input_size=h)
    opt = make_optimizer(model, "adam", lr=1e-3)
    xtr, ytr = tensors(ds, "train")
    steps, chunk = 0, max(1, max_steps // 20)
    while steps < max_steps:
        train_steps(model, opt, ds, chunk, batch_size=batch_size, seed=seed * 7919 + steps)
        steps += chunk
        if accuracy(model, xtr, ytr) >= 0.995:
            break
    g = torch.Generator().manual_seed(seed + 12345)
    xs, ys = xtr[:1000], ytr[:1000]
    curves = [loss_along(model, filter_normalized_direction(model, g), ALPHAS, xs, ys) for _ in range(directions)]
    xte, yte = tensors(ds, "test")
    centre = ALPHAS.index(0.0)
    rise = [mean((c[ALPHAS.index(ALPHA)] + c[ALPHAS.index(-ALPHA)]) / 2 - c[centre] for c in curves)]
    return {"steps": steps, "train_acc": accuracy(model, xtr, ytr), "test_err": 1 - accuracy(model, xte, yte),
            "sharpness": rise[0], "curves": curves}


def sharp_verdict(small: dict, large: dict) -> str:
    sharper = large["sharpness"] > small["sharpness"]
    worse = large["test_err"] > small["test_err"]
    if sharper and worse:
        return HOLDS
    if not sharper and not worse:
        return FAILS
    return INCONCLUSIVE


@experiment("wide-vs-sharp",
            claim="Large-batch training ends in sharper minima than small-batch training, and the wider minima have "
                  "the better test error.",
            source="Ryu, Mathematical Foundations of Deep Neural Networks, ch. 3 ('wide minima have better test "
                   "error'); Keskar et al. 2017; Li, Xu, Taylor, Studer & Goldstein 2018 (filter normalization)",
            quick_time="about 3 min (186 s measured)", full_time="about 30 min (estimate)")
def run_sharpness(ctx: Context) -> Outcome:
    ds = subset(ctx.dataset(), ctx.pick(smoke=256, quick=3000, full=20000), ctx.pick(smoke=128, quick=2000, full=10000))
    small_b, large_b = ctx.pick(smoke=(16, 128), quick=(32, 1000), full=(64, 4096))
    max_steps = ctx.pick(smoke=(10, 6), quick=(1500, 300), full=(20000, 4000))
    directions = ctx.pick(smoke=2, quick=5, full=10)
    res, rows = {}, []
    for label, b, steps in (("small", small_b, max_steps[0]), ("large", large_b, max_steps[1])):
        runs = [ctx.step(f"{label}-batch={b}-seed={s}", lambda b=b, steps=steps, s=s:
                         sharpness_run(ds, b, steps, directions, s)) for s in range(ctx.seeds)]
        res[label] = {"sharpness": mean(r["sharpness"] for r in runs), "test_err": mean(r["test_err"] for r in runs),
                      "train_acc": mean(r["train_acc"] for r in runs), "steps": runs[0]["steps"],
                      "curves": runs[0]["curves"], "batch": b}
        rows.append({"batch": b, "steps": res[label]["steps"], "train_acc": res[label]["train_acc"],
                     "test_err": res[label]["test_err"], "sharpness": res[label]["sharpness"]})
        for i, c in enumerate(runs[0]["curves"]):
            rows += [{"batch": b, "direction": i, "alpha": a, "train_loss": v} for a, v in zip(ALPHAS, c)]
    fig, (ax,) = figure(size=(6, 3.6))
    for label, color in (("small", "tab:blue"), ("large", "tab:red")):
        for i, c in enumerate(res[label]["curves"]):
            ax.plot(ALPHAS, c, color=color, alpha=0.6,
                    label=f"batch {res[label]['batch']} (test err {res[label]['test_err']:.3f})" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("alpha along a filter-normalized random direction")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    save(fig, ctx.path("wide-vs-sharp.png"))
    s, l_ = res["small"], res["large"]
    verdicts = [Verdict("the large batch finds a sharper minimum and tests worse", sharp_verdict(s, l_),
                        f"sharpness (loss rise at alpha = +-{ALPHA}): batch {s['batch']} {s['sharpness']:.3g}, batch "
                        f"{l_['batch']} {l_['sharpness']:.3g}; test error {s['test_err']:.4f} vs {l_['test_err']:.4f}; "
                        f"training accuracy {s['train_acc']:.3f} vs {l_['train_acc']:.3f} after {s['steps']} and "
                        f"{l_['steps']} steps")]
    measured = (f"LeNet-5 (registry), Adam lr 1e-3, batch {small_b} vs {large_b} on {len(ds.train_x)} MNIST images, "
                f"trained until 99.5% training accuracy or {max_steps[0]} / {max_steps[1]} steps; sharpness over "
                f"{directions} filter-normalized directions on 1000 training images; {ctx.seeds} seed(s).")
    return Outcome(rows, verdicts, measured, ["wide-vs-sharp.png"])
