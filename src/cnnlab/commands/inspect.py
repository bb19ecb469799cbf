"""``cnnlab inspect filters|activations|saliency|dream|landscape|equivariance RUN``: look inside a
trained run. Each writes PNG (+ CSV/JSON) atomically and prints a short table; every input is
checked before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.commands._runs import (
    check_index, load_run, log, normalizer, parse_int_list, run_model_name, table, unit_images, write_csv,
)
from cnnlab.errors import CnnlabError


def add_parsers(sub) -> None:
    p = sub.add_parser("inspect", help="look inside a trained run: filters, feature maps, saliency, class models, "
                                       "the loss landscape, shift equivariance",
                       description="Look inside a trained run (a directory written by `cnnlab train`).")
    what = p.add_subparsers(dest="inspect_what", metavar="WHAT", parser_class=type(p))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    def common(q, out_default: str):
        q.add_argument("run", metavar="RUN", help="a run directory (or checkpoint file) from `cnnlab train`")
        q.add_argument("--out", default=out_default, help=f"output file (default {out_default})")
        q.add_argument("--device", default="cpu")
        q.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")

    q = what.add_parser("filters", help="a conv layer's filters (first layer: with Gabor fits)",
                        description="A grid of a conv layer's filters, each scaled on its own. The first layer is "
                                    "shown as images with their Gabor fits (Saremi 2024); the fit parameters and R² "
                                    "go to a CSV beside the PNG.")
    common(q, "filters.png")
    q.add_argument("--layer", help="conv layer name (module path); default the first conv")
    q.add_argument("--threshold", type=float, default=0.8, help="R² above which a filter counts as Gabor-like")
    q.set_defaults(func=_cmd_filters)

    q = what.add_parser("activations", help="every conv layer's feature maps for one test image")
    common(q, "activations.png")
    q.add_argument("--index", type=int, default=0, help="test image index (default 0)")
    q.add_argument("--channels", type=int, default=16, help="feature maps shown per layer (default 16)")
    q.set_defaults(func=_cmd_activations)

    _add_more(what, common)


def _add_more(what, common) -> None:
    """Parsers of the other inspection commands (defined further down, one per capability)."""
    for add in _MORE:
        add(what, common)


_MORE: list = []


# --- filters and feature maps --------------------------------------------------------------------

def _init_weights(run: str, state: dict, layer: str):
    """The layer's weights at initialization: the run's init.pt if it has one, else a fresh
    initialization of the same model with the run's seed. Returns (weights, where they came from)."""
    import torch

    from cnnlab.train import TrainConfig, build_model
    from cnnlab.train.checkpoint import load_checkpoint

    init_file = Path(run) / "init.pt" if Path(run).is_dir() else Path(run).with_name("init.pt")
    key = f"{layer}.weight"
    if init_file.is_file():
        saved = load_checkpoint(init_file)
        weights = saved.get("model", saved)
        if key in weights:
            return weights[key].float(), "init.pt"
    cfg = TrainConfig.from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        fresh = build_model(cfg, state["dataset"]["num_classes"], tuple(state["dataset"]["input_size"]))
    return dict(fresh.named_parameters())[key].detach().float(), "a fresh initialization (seed of the run)"


def _cmd_filters(args: argparse.Namespace) -> int:
    from cnnlab import inspect
    from cnnlab.inspect import plots
    from cnnlab.train import load_model

    model, state = load_model(args.run, device=args.device)
    name, conv = inspect.find_conv(model, args.layer)
    if not 0 < args.threshold < 1:
        raise CnnlabError(f"--threshold must lie in (0, 1); received {args.threshold}")
    w = inspect.filters(model, name)
    first = name == inspect.conv_layer_names(model)[0]
    fit = None
    if first and w.shape[1] in (1, 3) and min(w.shape[2:]) >= 3:
        fit = inspect.gabor_fit(w)
        w0, source = _init_weights(args.run, state, name)
        fit0 = inspect.gabor_fit(w0)
    title = f"{state['config']['model']}: {name} ({w.shape[0]} filters of {w.shape[1]}x{w.shape[2]}x{w.shape[3]})"
    fig = plots.filter_figure(w, title=title, fitted=None if fit is None else fit.fitted,
                              r2=None if fit is None else fit.r2)
    out = Path(args.out)
    plots.save_png(fig, out)
    print(f"saved {out}: {w.shape[0]} filters of layer {name}")
    if fit is not None:
        rows = fit.rows()
        headers = list(rows[0])
        write_csv(out.with_suffix(".csv"), headers, [[r[h] for h in headers] for r in rows])
        print(table(["filter", "sigma", "omega", "theta", "R²"],
                    [[r["filter"], r["sigma"], r["omega"], r["theta"], r["r2"]] for r in rows[:16]]))
        print(f"Gabor-like (R² >= {args.threshold:g}): {fit.fraction_gabor_like(args.threshold):.0%} of the trained "
              f"filters vs {fit0.fraction_gabor_like(args.threshold):.0%} at initialization ({source}); "
              f"mean R² {float(fit.r2.mean()):.2f} vs {float(fit0.r2.mean()):.2f}; fits in {out.with_suffix('.csv')}")
    return 0


def _cmd_activations(args: argparse.Namespace) -> int:
    from cnnlab import inspect
    from cnnlab.inspect import plots

    model, state, ds = load_run(args.run, device=args.device, data_root=args.data_root)
    check_index(args.index, len(ds.test_y))
    if args.channels < 1:
        raise CnnlabError(f"--channels must be at least 1; received {args.channels}")
    if not inspect.conv_layer_names(model):
        raise CnnlabError(f"{state['config']['model']} has no convolution layer, so it has no feature maps")
    image = unit_images(ds, [args.index])
    x = normalizer(ds)(image).to(args.device)
    maps = inspect.activations(model, x, kinds=("conv",))
    import torch

    with torch.no_grad():
        pred = int(model(x).argmax(1))
    truth = int(ds.test_y[args.index])
    title = (f"{state['config']['model']}, test image {args.index}: true {ds.classes[truth]}, "
             f"predicted {ds.classes[pred]}")
    fig = plots.activation_figure(image[0], {k: v[0] for k, v in maps.items()}, title=title,
                                  max_channels=args.channels)
    plots.save_png(fig, args.out)
    print(table(["layer", "shape", "mean", "max", "zero (%)"],
                [[k, "x".join(map(str, v.shape[1:])), float(v.mean()), float(v.max()),
                  100 * float((v == 0).float().mean())] for k, v in maps.items()]))
    print(f"saved {args.out}: {len(maps)} conv layers for test image {args.index}")
    return 0


# --- saliency ------------------------------------------------------------------------------------

def _add_saliency(what, common) -> None:
    from cnnlab.inspect.saliency import METHODS

    q = what.add_parser("saliency", help="saliency maps of test images (input, map, overlay)",
                        description="Gradient of the predicted class's score with respect to the input "
                                    "(Simonyan et al. 2014) or one of its refinements, for test images. "
                                    "--sanity adds the cascading-randomization check of Adebayo et al. 2018.")
    common(q, "saliency.png")
    q.add_argument("--index", default="0", help="test image indices, e.g. 0 or 0-3 or 1,5,9 (default 0)")
    q.add_argument("--method", default="grad", help=f"one of {', '.join(METHODS)} (default grad)")
    q.add_argument("--samples", type=int, default=25, help="smoothgrad: noisy copies (default 25)")
    q.add_argument("--stdev", type=float, default=0.15, help="smoothgrad: noise std in normalized units")
    q.add_argument("--steps", type=int, default=50, help="integrated_gradients: quadrature nodes (default 50)")
    q.add_argument("--sanity", action="store_true",
                   help="also re-randomize the layers from the top and print the rank correlations")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_cmd_saliency)


_MORE.append(_add_saliency)


def _cmd_saliency(args: argparse.Namespace) -> int:
    import json

    import torch

    from cnnlab import inspect
    from cnnlab.fileio import atomic_write_text
    from cnnlab.inspect import plots
    from cnnlab.inspect.saliency import METHODS

    if args.method not in METHODS:
        raise CnnlabError(f"unknown saliency method {args.method[:40]!r}; valid: {', '.join(METHODS)}")
    if args.samples < 1 or args.steps < 1 or args.stdev < 0:
        raise CnnlabError(f"--samples and --steps must be at least 1 and --stdev non-negative; received "
                          f"{args.samples}, {args.steps}, {args.stdev}")
    model, state, ds = load_run(args.run, device=args.device, data_root=args.data_root)
    indices = parse_int_list(args.index, "--index", lo=0, hi=len(ds.test_y) - 1)[:16]
    images = unit_images(ds, indices)
    x = normalizer(ds)(images).to(args.device)
    torch.manual_seed(args.seed)
    kw = dict(samples=args.samples, stdev=args.stdev, steps=args.steps)
    maps = inspect.saliency(model, x, None, args.method, **kw)
    with torch.no_grad():
        proba = model(x).softmax(1).cpu()
    pred = proba.argmax(1)
    truth = ds.test_y[indices]
    captions = [f"#{i} true {ds.classes[int(t)]}, pred {ds.classes[int(p)]} ({float(proba[k, p]):.0%})"
                for k, (i, t, p) in enumerate(zip(indices, truth, pred))]
    fig = plots.saliency_figure(images, maps.cpu(), captions,
                                title=f"{state['config']['model']}: {args.method} saliency")
    rows = [{"index": i, "true": ds.classes[int(t)], "predicted": ds.classes[int(p)],
             "confidence": float(proba[k, p])} for k, (i, t, p) in enumerate(zip(indices, truth, pred))]
    result = {"method": args.method, "images": rows}
    if args.sanity:
        sanity = inspect.saliency_sanity(model, x, None, args.method, seed=args.seed, **kw)
        result["sanity"] = [{"layer": r.layer, "spearman": r.spearman} for r in sanity]
    out = Path(args.out)
    plots.save_png(fig, out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    print(table(["index", "true", "predicted", "confidence"],
                [[r["index"], r["true"], r["predicted"], r["confidence"]] for r in rows]))
    if args.sanity:
        print("\nsanity check (Adebayo et al. 2018): Spearman correlation with the trained map after "
              "re-initializing the layers from the top down to ...")
        print(table(["layer", "spearman"], [[r["layer"], r["spearman"]] for r in result["sanity"]]))
    print(f"saved {out} and {out.with_suffix('.json')}")
    return 0


# --- the loss landscape --------------------------------------------------------------------------

LANDSCAPE_LIMIT_S = 600.0  # refuse plans estimated longer than this unless --force


def _add_landscape(what, common) -> None:
    q = what.add_parser("landscape", help="the loss landscape around the trained weights (Li et al. 2018)",
                        description="The training loss on a plane through the trained weights spanned by two "
                                    "random filter-normalized directions (--dims 2: contour and surface PNG, "
                                    "CSV), or along one such direction and along the line from the initial to the "
                                    "trained weights (--dims 1). Evaluated on a fixed random subset of the "
                                    "training set with BatchNorm in eval mode. Cost: grid² × subset × one "
                                    "forward pass (--dims 1: 2 × steps × subset); the centre point is timed "
                                    "first and a plan estimated above 10 minutes is refused unless --force.")
    q.add_argument("run", metavar="RUN", help="a run directory (or checkpoint file) from `cnnlab train`")
    q.add_argument("--out", default="landscape", metavar="DIR", help="output directory (default landscape/)")
    q.add_argument("--dims", type=int, default=2, help="1 or 2 (default 2)")
    q.add_argument("--grid", type=int, default=21, help="--dims 2: points per side (default 21)")
    q.add_argument("--steps", type=int, default=41, help="--dims 1: points per line (default 41)")
    q.add_argument("--span", type=float, default=1.0, help="half-width in units of the filter norms (default 1)")
    q.add_argument("--subset", type=int, default=2000, help="training images the loss is measured on")
    q.add_argument("--batch-size", type=int, default=1000)
    q.add_argument("--seed", type=int, default=0, help="seed of the directions and the subset")
    q.add_argument("--force", action="store_true", help="run even if the estimate exceeds 10 minutes")
    q.add_argument("--device", default="cpu")
    q.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=_cmd_landscape)


_MORE.append(_add_landscape)


def _init_state(run: str, state: dict) -> tuple[dict, str]:
    """The run's initial weights: init.pt if the run kept them, else rebuilt exactly as the trainer
    builds them (``torch.manual_seed(cfg.seed)`` then ``build_model``)."""
    import torch

    from cnnlab.train import TrainConfig, build_model
    from cnnlab.train.checkpoint import load_checkpoint

    init_file = Path(run) / "init.pt" if Path(run).is_dir() else Path(run).with_name("init.pt")
    if init_file.is_file():
        saved = load_checkpoint(init_file)
        return saved.get("model", saved), "init.pt"
    cfg = TrainConfig.from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        fresh = build_model(cfg, state["dataset"]["num_classes"], tuple(state["dataset"]["input_size"]))
    return fresh.state_dict(), "rebuilt from the run's seed (no init.pt)"


def _cmd_landscape(args: argparse.Namespace) -> int:
    import json
    import time

    import torch
    from tqdm.auto import tqdm

    from cnnlab import data, inspect
    from cnnlab.fileio import atomic_write_text
    from cnnlab.inspect import plots
    from cnnlab.inspect.landscape import direction_line, evaluate_loss

    if args.dims not in (1, 2):
        raise CnnlabError(f"--dims is 1 or 2; received {args.dims}")
    if args.grid < 2 or args.steps < 2 or not args.span > 0 or args.subset < 1 or args.batch_size < 1:
        raise CnnlabError(f"--grid and --steps need at least 2 points, --span must be positive, --subset and "
                          f"--batch-size at least 1; received {args.grid}, {args.steps}, {args.span}, "
                          f"{args.subset}, {args.batch_size}")
    model, state, ds = load_run(args.run, device=args.device, data_root=args.data_root)
    g = torch.Generator().manual_seed(args.seed)
    n = min(args.subset, len(ds.train_y))
    idx = torch.randperm(len(ds.train_y), generator=g)[:n]
    loader = data.BatchLoader(ds.train_x[idx], ds.train_y[idx], batch_size=args.batch_size, mean=ds.mean,
                              std=ds.std, shuffle=False, device=args.device)
    model.eval()
    centre_loss, centre_acc = evaluate_loss(model, loader)  # the first pass warms up; time the second
    t0 = time.perf_counter()
    evaluate_loss(model, loader)
    per_point = time.perf_counter() - t0
    points = args.grid ** 2 if args.dims == 2 else 2 * args.steps
    estimate = per_point * points
    plan = (f"a {args.grid}x{args.grid} grid" if args.dims == 2 else f"two lines of {args.steps} points") + \
        f" on {n:,} images"
    if estimate > LANDSCAPE_LIMIT_S and not args.force:
        raise CnnlabError(f"{plan} would take about {estimate / 60:.0f} min here ({per_point:.2f} s per point); "
                          f"pass --force to run it anyway, or lower --grid/--steps or --subset")
    log(f"{plan}: about {estimate:.0f} s ({per_point:.3f} s per point)")
    name = run_model_name(state)
    out = Path(args.out)
    with tqdm(total=points, desc="landscape", unit="pt", disable=args.no_progress, leave=False,
              file=sys.stderr) as bar:
        if args.dims == 2:
            land = inspect.landscape_2d(model, loader, "filter", args.grid, args.span, generator=g,
                                        progress=bar.update)
            contour, surface = plots.landscape_figures(land.alphas, land.betas, land.loss,
                                                       title=f"{name}: training loss, filter-normalized plane")
            write_csv(out / "landscape.csv", ["alpha", "beta", "loss", "accuracy"], land.rows())
            plots.save_png(contour, out / "contour.png")
            plots.save_png(surface, out / "surface.png")
            info = {"dims": 2, "grid": args.grid, "span": args.span, "subset": n, "seconds": round(land.seconds, 2),
                    "centre_loss": float(land.loss[args.grid // 2, args.grid // 2]) if args.grid % 2 else None,
                    "min_loss": float(land.loss.min()), "max_loss": float(land.loss.max())}
            rows = [["centre loss", f"{centre_loss:.4f}"], ["min / max loss", f"{land.loss.min():.4f} / "
                                                            f"{land.loss.max():.4f}"],
                    ["points", str(points)], ["seconds", f"{land.seconds:.1f}"]]
        else:
            d = inspect.filter_normalized_direction(model, generator=g)
            random_line = direction_line(model, d, loader, args.steps, args.span, progress=bar.update)
            init, source = _init_state(args.run, state)
            trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
            init_line = inspect.landscape_1d(model, init, trained, loader, args.steps, lo=-0.25, hi=1.25,
                                             progress=bar.update)
            fig = plots.curve_figure({"random filter-normalized direction (α from -span to span)":
                                      (random_line.alphas.tolist(), random_line.loss.tolist()),
                                      f"initial (α=0) to trained (α=1) weights": (init_line.alphas.tolist(),
                                                                                   init_line.loss.tolist())},
                                     xlabel="α", ylabel="training loss", title=f"{name}: loss along two lines")
            write_csv(out / "lines.csv", ["line", "alpha", "loss", "accuracy"],
                      [["random", float(a), float(lv), float(ac)] for a, lv, ac in
                       zip(random_line.alphas, random_line.loss, random_line.accuracy)]
                      + [["init-to-trained", float(a), float(lv), float(ac)] for a, lv, ac in
                         zip(init_line.alphas, init_line.loss, init_line.accuracy)])
            plots.save_png(fig, out / "lines.png")
            seconds = random_line.seconds + init_line.seconds
            info = {"dims": 1, "steps": args.steps, "span": args.span, "subset": n, "init": source,
                    "seconds": round(seconds, 2)}
            rows = [["centre loss", f"{centre_loss:.4f}"],
                    ["loss at init (α=0)", f"{float(init_line.loss[init_line.alphas.sub(0).abs().argmin()]):.4f}"],
                    ["initial weights", source], ["points", str(points)], ["seconds", f"{seconds:.1f}"]]
    atomic_write_text(out / "landscape.json", json.dumps(info, indent=2) + "\n")
    print(table(["", "value"], rows))
    print(f"saved in {out}")
    return 0


# --- shift equivariance --------------------------------------------------------------------------

def _add_equivariance(what, common) -> None:
    q = what.add_parser("equivariance", help="how far each conv/pool layer is from commuting with shifts",
                        description="Shift test images by a few pixels (down and right) and measure, for each "
                                    "conv and pooling layer, ||f(shift x) - shift f(x)|| / ||f(x)|| (shifts "
                                    "scaled by the layer's stride), and how much the logits change (Ryu, ch. 3).")
    common(q, "equivariance.png")
    q.add_argument("--shifts", default="1,2,4", help="input shifts in pixels (default 1,2,4)")
    q.add_argument("--mode", default="circular", help="circular (wrap around) or zero (fill with zeros)")
    q.add_argument("--limit", type=int, default=256, help="test images used (default 256)")
    q.set_defaults(func=_cmd_equivariance)


_MORE.append(_add_equivariance)


def _cmd_equivariance(args: argparse.Namespace) -> int:
    import json

    from cnnlab import inspect
    from cnnlab.fileio import atomic_write_text
    from cnnlab.inspect import plots

    if args.mode not in ("circular", "zero"):
        raise CnnlabError(f"--mode is circular or zero; received {args.mode[:40]!r}")
    shifts = parse_int_list(args.shifts, "--shifts", lo=0, hi=64)
    if args.limit < 1:
        raise CnnlabError(f"--limit must be at least 1; received {args.limit}")
    model, state, ds = load_run(args.run, device=args.device, data_root=args.data_root)
    if not inspect.conv_layer_names(model):
        raise CnnlabError(f"{state['config']['model']} has no convolution layer to test")
    n = min(args.limit, len(ds.test_y))
    x = normalizer(ds)(unit_images(ds, slice(0, n))).to(args.device)
    r = inspect.shift_equivariance(model, x, shifts, args.mode)
    layers = list(dict.fromkeys(row.layer for row in r.rows))
    by = {(row.layer, row.shift): row for row in r.rows}
    fig = plots.curve_figure({f"shift {s}": (list(range(len(layers))), [by[(lay, s)].error for lay in layers])
                              for s in shifts}, xlabel="layer (in execution order)",
                             ylabel="relative equivariance error",
                             title=f"{state['config']['model']}: ||f(shift x) - shift f(x)|| / ||f(x)|| ({args.mode})")
    fig.axes[0].set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    plots.save_png(fig, out)
    write_csv(out.with_suffix(".csv"), ["layer", "stride", "shift", "exact", "error"],
              [[row.layer, row.stride[0], row.shift, row.exact, row.error] for row in r.rows])
    atomic_write_text(out.with_suffix(".json"), json.dumps({
        "mode": args.mode, "images": n, "logit_change": r.logit_change, "prediction_kept": r.prediction_kept},
        indent=2) + "\n")
    headers = ["layer", "stride"] + [f"shift {s}" for s in shifts]
    rows = [[lay, by[(lay, shifts[0])].stride[0]] + [f"{by[(lay, s)].error:.3f}" + ("" if by[(lay, s)].exact else "*")
                                                  for s in shifts] for lay in layers]
    rows.append(["logits", "-"] + [f"{r.logit_change[s]:.3f}" for s in shifts])
    rows.append(["prediction kept", "-"] + [f"{r.prediction_kept[s]:.0%}" for s in shifts])
    print(table(headers, rows))
    print(f"* the shift is not a multiple of the layer's stride, so exact equivariance is impossible there; "
          f"{n} test images, {args.mode} shifts; saved {out} and {out.with_suffix('.csv')}")
    return 0


# --- class models ("dream") ----------------------------------------------------------------------

def _add_dream(what, common) -> None:
    q = what.add_parser("dream", help="class model visualization: one image per class by gradient ascent",
                        description="Gradient ascent on the input from the mean image, maximizing a class score "
                                    "with L2 decay, random jitter and occasional blur (Simonyan et al. 2014). "
                                    "Prints the trained net's confidence in each class on its image.")
    common(q, "dream.png")
    q.add_argument("--classes", default=None, help="e.g. 0-9 or 1,3,5 (default: all classes, at most 20)")
    q.add_argument("--steps", type=int, default=200)
    q.add_argument("--lr", type=float, default=0.1)
    q.add_argument("--l2", type=float, default=1e-3)
    q.add_argument("--jitter", type=int, default=1)
    q.add_argument("--blur", type=float, default=0.5, help="Gaussian blur sigma (0: none)")
    q.add_argument("--blur-every", type=int, default=10)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=_cmd_dream)


_MORE.append(_add_dream)


def _cmd_dream(args: argparse.Namespace) -> int:
    import json

    import torch
    from tqdm.auto import tqdm

    from cnnlab import inspect
    from cnnlab.fileio import atomic_write_text
    from cnnlab.inspect import plots
    from cnnlab.train import load_model

    model, state = load_model(args.run, device=args.device)
    meta = state["dataset"]
    classes_n = meta["num_classes"]
    targets = (parse_int_list(args.classes, "--classes", lo=0, hi=classes_n - 1) if args.classes
               else list(range(min(classes_n, 20))))
    if args.steps < 1 or args.lr <= 0 or args.l2 < 0 or args.jitter < 0 or args.blur < 0 or args.blur_every < 1:
        raise CnnlabError(f"--steps and --blur-every must be at least 1, --lr positive, --l2, --jitter and --blur "
                          f"non-negative; received {args.steps}, {args.blur_every}, {args.lr}, {args.l2}, "
                          f"{args.jitter}, {args.blur}")
    from cnnlab import data

    spec = data.spec(meta["name"])
    g = torch.Generator().manual_seed(args.seed)
    images, confs = [], []
    with tqdm(total=args.steps * len(targets), desc="class models", unit="step", disable=args.no_progress,
              leave=False, file=sys.stderr) as bar:
        for t in targets:
            image, conf = inspect.class_model(model, t, args.steps, args.lr, args.l2, args.jitter, args.blur,
                                              blur_every=args.blur_every, input_size=tuple(meta["input_size"]),
                                              mean=spec.mean, std=spec.std, generator=g, progress=bar.update)
            images.append(image.cpu())
            confs.append(conf)
    names = spec.classes
    fig = plots.image_grid_figure(torch.stack(images), [f"{names[t]}: {c:.0%}" for t, c in zip(targets, confs)],
                                  cols=min(10, len(targets)),
                                  title=f"{state['config']['model']}: class models (confidence of the trained net)")
    out = Path(args.out)
    plots.save_png(fig, out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        [{"class": names[t], "index": t, "confidence": c} for t, c in zip(targets, confs)], indent=2) + "\n")
    print(table(["class", "confidence"], [[names[t], f"{c:.1%}"] for t, c in zip(targets, confs)]))
    print(f"saved {out} and {out.with_suffix('.json')}")
    return 0
