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

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: LeNet-5 on MNIST)",
                       description="Train a model; flags override --config, which overrides the defaults.")
    S = argparse.SUPPRESS  # only flags the user gave reach the config
    p.add_argument("--config", metavar="FILE", help="a YAML file with any of the keys below")
    p.add_argument("--model", default=S, help="a registered model (see `cnnlab zoo`); default lenet5")
    p.add_argument("--data", default=S, help="mnist, fashion-mnist, cifar10 or cifar100; default mnist")
    p.add_argument("--epochs", type=int, default=S, help="default 3")
    p.add_argument("--batch-size", type=int, default=S, help="default 128")
    p.add_argument("--optimizer", default=S, help="sgd or adam; default adam")
    p.add_argument("--lr", type=float, default=S, help="peak learning rate; default 0.004")
    p.add_argument("--momentum", type=float, default=S, help="SGD momentum; default 0.9")
    p.add_argument("--weight-decay", type=float, default=S, help="default 0")
    p.add_argument("--schedule", default=S, help="onecycle or constant; default onecycle")
    p.add_argument("--seed", type=int, default=S, help="default 0")
    p.add_argument("--val-split", type=float, default=S, help="fraction held out for validation; default 0")
    p.add_argument("--backend", default=S, help="torch or manual (hand-written layers); default torch")
    p.add_argument("--init", default=S, help="initialization scheme; default: the paper's")
    p.add_argument("--model-arg", action="append", default=S, metavar="KEY=VALUE",
                   help="extra model argument (repeatable), e.g. --model-arg hidden=[256,128]")
    p.add_argument("--eval-batch-size", type=int, default=S, help="default 1000")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S,
                   help="NHWC memory format; default: on for models without BatchNorm")
    p.add_argument("--device", default=S, help="cpu, cuda or cuda:N; default cpu")
    p.add_argument("--data-root", default=S, help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    p.add_argument("--out", metavar="DIR", help="run directory; default runs/MODEL-DATA (numbered if taken)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out already holds")
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


def _cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.train import TrainConfig, fit
    from cnnlab.train.checkpoint import LAST, load_checkpoint

    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if "model_arg" in vars(args):
        overrides["model_args"] = _parse_model_args(args.model_arg)
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise CnnlabError("--resume DIR continues the run in DIR; do not pass a different --out")
        out = Path(args.resume)
        if not (out / LAST).is_file():
            raise CnnlabError(f"cannot resume: {out} holds no {LAST} checkpoint")
        base = TrainConfig.from_dict(load_checkpoint(out / LAST)["config"])
    else:
        base = TrainConfig()
        if args.config:
            base = base.updated(_read_config_file(args.config))
    cfg = base.updated(overrides).validate()
    if not args.resume:
        out = Path(args.out) if args.out else _free_run_dir(cfg.model, cfg.data)
    progress = not args.no_progress
    print(f"training {cfg.model} on {cfg.data} for {cfg.epochs} epochs -> {out}", file=sys.stderr, flush=True)
    summary = fit(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=progress,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"test accuracy: {summary['test_top1']:.2%} (top-5 {summary['test_top5']:.2%}, "
          f"loss {summary['test_loss']:.4f}) after {summary['epochs']} epochs, "
          f"{summary['train_seconds']:.1f} s of training; run saved in {out}")
    return 0


# --- eval -----------------------------------------------------------------------------------------

def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="top-1, top-5 and loss of a run or checkpoint on a test set")
    p.add_argument("path", help="a run directory (uses best.pt) or a checkpoint file")
    p.add_argument("--data", help="dataset to test on; default the one the run was trained on")
    p.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from cnnlab.train import evaluate_checkpoint

    if args.batch_size < 1:
        raise CnnlabError(f"batch size must be at least 1; received --batch-size {args.batch_size}")
    r = evaluate_checkpoint(args.path, data=args.data, data_root=args.data_root, batch_size=args.batch_size,
                            device=args.device, log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['model']} (epoch {r['epoch']}) on the {r['data']} test set ({r['samples']:,} images): "
              f"top-1 {r['test_top1']:.2%}  top-5 {r['test_top5']:.2%}  loss {r['test_loss']:.4f}")
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
    for add in (_add_train, _add_eval, _add_zoo, _add_summary, _add_data, _add_autodiff):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv or ["--help"])
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except CnnlabError as e:
        _err(str(e))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _err("interrupted; files already written are complete (every write is atomic)")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
