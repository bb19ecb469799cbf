"""The ``cnnlab`` command: argument parsing and dispatch only; the work is done by the library.

A user's mistake (a ``CnnlabError``) is printed as one line on stderr with exit status 2, never
as a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

EXIT_USER_ERROR = 2


def _err(message: str) -> None:
    print(f"cnnlab: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        self.exit(EXIT_USER_ERROR, f"cnnlab: error: {message} (see `{self.prog} --help`)\n")


# --- train ----------------------------------------------------------------------------------------

def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``batch_size`` -> ``--batch-size``); values are type-checked
    by ``TrainConfig.updated``, so the CLI, YAML recipes and Python share one set of rules."""
    import typing

    from cnnlab.train.config import TrainConfig, fields_help

    p.add_argument("--config", metavar="FILE", help="a YAML file with any of the keys below")
    p.add_argument("--model-arg", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="extra model argument (repeatable), e.g. --model-arg hidden=[256,128]")
    defaults = TrainConfig()
    for name, hint, help_text in fields_help():
        if name == "model_args":
            continue  # --model-arg KEY=VALUE, below
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = f"{help_text} (default: {shown})"
        if hint is bool or set(typing.get_args(hint)) == {bool, type(None)}:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=text)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: LeNet-5 on MNIST)",
                       description="Train a model. Later sources win: defaults < --config FILE.yaml < flags. "
                                   "Every flag is also a YAML key (--batch-size is batch_size).")
    _add_config_flags(p)
    p.add_argument("--out", metavar="DIR", help="run directory; default runs/MODEL-DATA (numbered if taken)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out already holds")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel in N processes on this machine (launches torchrun)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _parse_model_args(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CnnlabError(f"--model-arg needs KEY=VALUE; received {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise CnnlabError(f"--model-arg {key}: cannot read the value {value!r}") from None
    return out


def _read_config_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CnnlabError(f"cannot read the config file {path}: {e.strerror}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise CnnlabError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise CnnlabError(f"{path} must hold a mapping of config keys; it holds a {type(values).__name__}")
    return values


def _free_run_dir(model: str, data: str) -> Path:
    base = Path("runs") / f"{model}-{data}"
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _train_config(args: argparse.Namespace):
    """The resolved config: defaults (or the resumed run's config) < --config < flags."""
    from cnnlab.train import TrainConfig
    from cnnlab.train.checkpoint import LAST, load_checkpoint

    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if "model_arg" in vars(args):
        overrides["model_args"] = _parse_model_args(args.model_arg)
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise CnnlabError("--resume DIR continues the run in DIR; do not pass a different --out")
        if not (Path(args.resume) / LAST).is_file():
            raise CnnlabError(f"cannot resume: {args.resume} holds no {LAST} checkpoint")
        base = TrainConfig.from_dict(load_checkpoint(Path(args.resume) / LAST)["config"])
    else:
        base = TrainConfig()
        if args.config:
            base = base.updated(_read_config_file(args.config))
    return base.updated(overrides).validate()


def _cmd_train(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    import os

    from cnnlab.train import fit
    from cnnlab.train import distributed

    cfg = _train_config(args)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.resume:
        out = Path(args.resume)
    elif args.out:
        out = Path(args.out)
    elif launched:
        raise CnnlabError("pass --out DIR when launching with torchrun, so that every process writes to the same run")
    else:
        out = _free_run_dir(cfg.model, cfg.data)
    if args.nproc is not None and not launched:
        if args.nproc < 1:
            raise CnnlabError(f"--nproc must be at least 1; received --nproc {args.nproc}")
        rest = _without_flag(argv, "--nproc")
        if not args.resume and not args.out:
            rest += ["--out", str(out)]
        print(f"launching {args.nproc} processes with torchrun -> {out}", file=sys.stderr, flush=True)
        return distributed.launch(args.nproc, rest)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        print(f"training {cfg.model} on {cfg.data} for {cfg.epochs} epochs -> {out}", file=sys.stderr, flush=True)
    summary = fit(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.no_progress,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    if main_rank:
        if summary.get("stopped_early"):
            print(f"stopped early after epoch {summary['epochs_run']}; kept the weights of epoch "
                  f"{summary['final_epoch']}", file=sys.stderr)
        if summary.get("compile_seconds") is not None:
            print(f"torch.compile took {summary['compile_seconds']:.1f} s (not counted in the training time)",
                  file=sys.stderr)
        print(f"test accuracy: {summary['test_top1']:.2%} (top-5 {summary['test_top5']:.2%}, "
              f"loss {summary['test_loss']:.4f}) after {summary['epochs_run']} epochs, "
              f"{summary['train_seconds']:.1f} s of training; run saved in {out}")
    return 0


def _without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` after the subcommand, without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for item in list(argv)[1:]:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


# --- eval -----------------------------------------------------------------------------------------

def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="top-1, top-5 and loss of runs on a test set, with TTA and ensembles",
                       description="Evaluate one run, or an ensemble of several (their softmax outputs averaged, "
                                   "optionally weighted), with optional test-time augmentation.")
    p.add_argument("paths", nargs="+", metavar="RUN", help="run directories (their best.pt) or checkpoint files")
    p.add_argument("--tta", default="none", help="none, flip, crops or 10crop (five crops and their mirrors)")
    p.add_argument("--tta-pad", type=int, default=4, help="zero padding the crops are taken from (default 4)")
    p.add_argument("--weights", help="ensemble weights, one per run, e.g. 0.5,0.3,0.2")
    p.add_argument("--confusion", metavar="PNG", help="save the confusion matrix as a picture")
    p.add_argument("--data", help="dataset to test on; default the one the runs were trained on")
    p.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from cnnlab.train.evaluation import evaluate_runs, format_evaluation

    if args.batch_size < 1:
        raise CnnlabError(f"batch size must be at least 1; received --batch-size {args.batch_size}")
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise CnnlabError(f"--weights takes numbers separated by commas; received {args.weights!r}") from None
    r = evaluate_runs(args.paths, data=args.data, data_root=args.data_root, tta=args.tta, tta_pad=args.tta_pad,
                      weights=weights, batch_size=args.batch_size, device=args.device, confusion_png=args.confusion,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}, indent=2))
    else:
        print(format_evaluation(r))
    return 0


# --- lr-find and augment --------------------------------------------------------------------------

def _add_lr_find(sub) -> None:
    p = sub.add_parser("lr-find", help="the learning-rate range test: loss vs lr, with a suggestion",
                       description="Increase the learning rate exponentially over a few hundred steps and plot "
                                   "the loss (Smith 2017). Takes the same model/data/optimizer flags as train.")
    _add_config_flags(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="lr_find.png", metavar="PNG", help="the plot (default lr_find.png)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_lr_find, resume=None)


def _cmd_lr_find(args: argparse.Namespace) -> int:
    import torch

    from cnnlab import data
    from cnnlab.train.engine import build_model, classification_loss, resolve_device, use_channels_last
    from cnnlab.train.lr_find import lr_range_test, plot_lr_find
    from cnnlab.train.optim import make_optimizer

    args.out_png, args.out = args.out, None
    cfg = _train_config(args)
    device = resolve_device(cfg.device)
    ds = data.load_dataset(cfg.data, cfg.data_root, log=lambda line: print(line, file=sys.stderr, flush=True))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds.num_classes, ds.input_size).to(device)
    channels_last = use_channels_last(cfg, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = data.BatchLoader(ds.train_x, ds.train_y, batch_size=cfg.batch_size, mean=ds.mean, std=ds.std,
                              seed=cfg.seed, device=device, channels_last=channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, lr=args.start_lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, no_decay_bias_bn=cfg.no_decay_bias_bn,
                               betas=(cfg.beta1, cfg.beta2))
    result = lr_range_test(model, loader, optimizer, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps,
                           progress=not args.no_progress,
                           loss_fn=lambda out, y: classification_loss(out, y)[0])
    plot_lr_find(result, args.out_png, title=f"{cfg.model} on {cfg.data}, {cfg.optimizer}")
    print(f"suggested learning rate: {result.suggestion:.3g} ({len(result.lrs)} steps"
          f"{', stopped when the loss diverged' if result.stopped_early else ''}); plot saved in {args.out_png}")
    return 0


def _add_augment(sub) -> None:
    from cnnlab.data.augment import describe

    p = sub.add_parser("augment", help="save a contact sheet of original and augmented training images",
                       description="Show what an augmentation pipeline does to real training images.\n\n" + describe(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist")
    p.add_argument("--augment", required=True, metavar="SPEC", help="e.g. flip,crop:4,cutout:8")
    p.add_argument("--out", default="augment.png", metavar="PNG")
    p.add_argument("--rows", type=int, default=4, help="rows of augmented draws under the originals")
    p.add_argument("--n", type=int, default=12, help="images per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root")
    p.set_defaults(func=_cmd_augment)


def _cmd_augment(args: argparse.Namespace) -> int:
    from cnnlab import data
    from cnnlab.data.augment import contact_sheet, parse_augment

    pipeline = parse_augment(args.augment)
    if args.rows < 1 or args.n < 1:
        raise CnnlabError(f"--rows and --n must be at least 1; received --rows {args.rows} --n {args.n}")
    ds = data.load_dataset(args.data, args.data_root, log=lambda line: print(line, file=sys.stderr, flush=True))
    contact_sheet(ds.train_x, pipeline, args.out, rows=args.rows, n=args.n, seed=args.seed,
                  num_classes=ds.num_classes, title=f"{ds.name}: {pipeline}")
    print(f"saved {args.out}: {args.n} originals and {args.rows} rows of {pipeline}")
    return 0


# --- zoo and data ---------------------------------------------------------------------------------

def _add_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="every registered model: year, paper, parameters and MACs")
    p.add_argument("names", nargs="*", help="only these models (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_zoo)


def _cmd_zoo(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from cnnlab import inspect, models

    names = args.names or models.names()
    for name in names:
        models.info(name)  # unknown names fail before any work
    rows = []
    for name in tqdm(names, desc="counting", unit="model", disable=args.no_progress, leave=False, file=sys.stderr):
        rows += inspect.zoo_table([name])
    rows.sort(key=lambda r: (r.year, r.family, r.name))
    print(inspect.format_zoo(rows))
    print("MACs: multiply-accumulates for one image at the model's native input (torch.utils.flop_counter).")
    return 0


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="per-layer output shape, parameters, MACs and receptive field")
    p.add_argument("name", help="a registered model (see `cnnlab zoo`)")
    p.add_argument("--input", metavar="CxHxW", help="input size, e.g. 3x224x224; default the model's native size")
    p.add_argument("--num-classes", type=int, help="default: the class count of the published model")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from cnnlab import inspect, models

    info = models.info(args.name)
    size = inspect.parse_input_size(args.input) if args.input else info.input_size
    with torch.device("meta"):
        model = models.create(args.name, num_classes=args.num_classes or info.num_classes, in_channels=size[0])
    inspect.check_input_size(model, size, name=args.name)
    print(inspect.summary(model, size))
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="fetch a dataset into the cache and describe it")
    p.add_argument("name", help="mnist, fashion-mnist, cifar10 or cifar100")
    p.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    p.set_defaults(func=_cmd_data)


def _cmd_data(args: argparse.Namespace) -> int:
    from cnnlab import data

    ds = data.load_dataset(args.name, args.data_root, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{ds.name}: {len(ds.train_y):,} training and {len(ds.test_y):,} test images of "
          f"{'x'.join(map(str, ds.input_size))}, {ds.num_classes} classes, cached in "
          f"{data.data_root(args.data_root) / ds.name}")
    return 0


# --- autodiff -------------------------------------------------------------------------------------

def _add_autodiff(sub) -> None:
    p = sub.add_parser("autodiff", help="the lecture's forward/backward tables for an expression",
                       description="Parse EXPR (never eval'd) and print its computation graph and the "
                                   "forward-mode or reverse-mode steps at a point.")
    p.add_argument("expression", help='e.g. "y*log(x) + sqrt(y*log(x))"')
    p.add_argument("--at", default="", metavar="X=V,...", help="the point, e.g. x=3,y=2")
    p.add_argument("--mode", default="reverse", help="forward or reverse; default reverse")
    p.set_defaults(func=_cmd_autodiff)


def _cmd_autodiff(args: argparse.Namespace) -> int:
    from cnnlab import autodiff as ad

    point = ad.parse_point(args.at) if args.at.strip() else {}
    print(ad.trace_table(args.expression, point, args.mode))
    return 0


# --- main -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from cnnlab import __version__

    parser = _Parser(prog="cnnlab", description="The CNN lectures, runnable: train, evaluate and inspect models.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_train, _add_eval, _add_lr_find, _add_augment, _add_zoo, _add_summary, _add_data,
                _add_autodiff):
        add(sub)
    from cnnlab import commands

    commands.add_all(sub)  # inspect, lab, experiment, ...: one module each in cnnlab/commands/
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv or ["--help"])
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        if args.func is _cmd_train:
            return _cmd_train(args, argv)
        return args.func(args)
    except CnnlabError as e:
        _err(str(e))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _err("interrupted; files already written are complete (every write is atomic)")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
