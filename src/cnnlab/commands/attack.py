"""``cnnlab attack RUN``: accuracy under FGSM or PGD for a list of ε, and a grid of adversarial examples."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.commands._runs import load_run, parse_float_list, run_model_name, table, write_csv
from cnnlab.errors import CnnlabError


def add_parsers(sub) -> None:
    p = sub.add_parser("attack", help="accuracy under FGSM/PGD adversarial attack for a list of ε",
                       description="Attack a trained run with FGSM (Goodfellow et al. 2015) or PGD (Madry et al. "
                                   "2018) at each ε (pixel units of the [0, 1] image) over the test set; writes "
                                   "robustness.csv, robustness.png and examples.png into --out. PGD costs "
                                   "--steps forward+backward passes per image and ε.")
    p.add_argument("run", metavar="RUN", help="a run directory (or checkpoint file) from `cnnlab train`")
    p.add_argument("--method", default="fgsm", help="fgsm or pgd (default fgsm)")
    p.add_argument("--eps", default="0,0.05,0.1,0.15,0.2,0.25,0.3", help="comma-separated ε values in [0, 1]")
    p.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    p.add_argument("--alpha", type=float, help="PGD step size (default 2.5 ε / steps)")
    p.add_argument("--limit", type=int, help="attack only the first N test images (default: all)")
    p.add_argument("--examples", type=int, default=8, help="adversarial examples in the grid (default 8)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
    p.add_argument("--out", default="attack", metavar="DIR", help="output directory (default attack/)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_attack)


def _cmd_attack(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from cnnlab.fileio import atomic_write_text
    from cnnlab.inspect import adversarial, plots

    if args.method not in ("fgsm", "pgd"):
        raise CnnlabError(f"unknown attack {args.method[:40]!r}; valid: fgsm, pgd")
    eps_values = parse_float_list(args.eps, "--eps")
    for eps in eps_values:
        adversarial.check_eps(eps, "--eps")
    if args.steps < 1:
        raise CnnlabError(f"--steps must be at least 1; received {args.steps}")
    if args.alpha is not None and args.alpha <= 0:
        raise CnnlabError(f"--alpha must be positive; received {args.alpha}")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.examples < 0:
        raise CnnlabError(f"--batch-size and --limit must be at least 1 and --examples non-negative; received "
                          f"{args.batch_size}, {args.limit}, {args.examples}")
    model, state, ds = load_run(args.run, device=args.device, data_root=args.data_root)
    n = len(ds.test_y) if args.limit is None else min(args.limit, len(ds.test_y))
    x = ds.test_x[:n].float() / 255.0
    y = ds.test_y[:n]
    steps = args.steps if args.method == "pgd" else 1
    torch.manual_seed(args.seed)
    with tqdm(total=n * len(eps_values), desc=f"{args.method} attack", unit="img", disable=args.no_progress,
              leave=False, file=sys.stderr) as bar:
        curve = adversarial.robustness_curve(model, x, y, eps_values, method=args.method, steps=steps,
                                             alpha=args.alpha, batch_size=args.batch_size, mean=ds.mean,
                                             std=ds.std, progress=bar.update)
    name = run_model_name(state)
    label = f"{args.method.upper()}" + (f"-{steps}" if args.method == "pgd" else "")
    fig_curve = plots.curve_figure({f"{name}, {label}": ([p.eps for p in curve], [p.accuracy for p in curve])},
                                   xlabel="ε (pixel units of the [0, 1] image)", ylabel="test accuracy (%)",
                                   title=f"{name} on {ds.name}: accuracy under {label} ({n:,} test images)",
                                   percent=True)
    # the examples: the largest ε attacked, on the first few test images
    eps_show = max(eps_values)
    k = min(args.examples, n)
    fig_examples = None
    if k:
        xb, yb = x[:k].to(args.device), y[:k].to(args.device)
        if args.method == "fgsm":
            adv = adversarial.fgsm(model, xb, yb, eps_show, mean=ds.mean, std=ds.std)
        else:
            adv = adversarial.pgd(model, xb, yb, eps_show, args.alpha, steps, mean=ds.mean, std=ds.std)
        norm = adversarial._normalizer(ds.mean, ds.std, None)
        with torch.no_grad():
            p0, p1 = model(norm(xb)).softmax(1).cpu(), model(norm(adv)).softmax(1).cpu()
        top = [f"{ds.classes[int(p.argmax())]} ({float(p.max()):.0%})" for p in p0]
        bottom = [f"{ds.classes[int(p.argmax())]} ({float(p.max()):.0%})" for p in p1]
        fig_examples = plots.adversarial_figure(xb.cpu(), adv.cpu(), top, bottom, eps=eps_show,
                                                title=f"{label} at ε={eps_show:g}: original / perturbation / "
                                                      f"adversarial (predicted class, confidence)")
    out = Path(args.out)
    headers = ["eps", "accuracy", "mean_confidence"]
    rows = [[p.eps, p.accuracy, p.mean_confidence] for p in curve]
    write_csv(out / "robustness.csv", headers, rows)
    plots.save_png(fig_curve, out / "robustness.png")
    if fig_examples is not None:
        plots.save_png(fig_examples, out / "examples.png")
    import json

    atomic_write_text(out / "attack.json", json.dumps({
        "run": str(args.run), "model": name, "data": ds.name, "method": args.method, "steps": steps,
        "alpha": args.alpha, "test_images": n, "curve": [dict(zip(headers, r)) for r in rows]}, indent=2) + "\n")
    print(table(["eps", "accuracy", "confidence"], [[f"{p.eps:g}", f"{p.accuracy:.2%}", f"{p.mean_confidence:.2f}"]
                                                   for p in curve]))
    print(f"{label} on {n:,} test images; saved robustness.csv, robustness.png"
          f"{', examples.png' if fig_examples is not None else ''} in {out}")
    return 0
