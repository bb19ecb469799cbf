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

from cnnlab.errors import CnnlabError, clip

EXIT_USER_ERROR = 2


def _err(message: str) -> None:
    print(f"cnnlab: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        self.exit(EXIT_USER_ERROR, f"cnnlab: error: {message} (see `{self.prog} --help`)\n")


# --- train ----------------------------------------------------------------------------------------

def _add_config_flags(p: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One flag per TrainConfig field (``batch_size`` -> ``--batch-size``); values are type-checked
    by ``TrainConfig.updated``, so the CLI, YAML recipes and Python share one set of rules.
    ``only``: offer just these fields (``lr-find`` has no use for epochs or early stopping)."""
    import typing

    from cnnlab.train.config import TrainConfig, fields_help

    p.add_argument("--config", metavar="FILE", help="a YAML file with any of the keys below")
    p.add_argument("--model-arg", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                   help="extra model argument (repeatable), e.g. --model-arg hidden=[256,128]")
    defaults = TrainConfig()
    for name, hint, help_text in fields_help():
        if name == "model_args" or (only is not None and name not in only):
            continue  # --model-arg KEY=VALUE, above
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
                   help="train data-parallel in N processes on this machine (launches torchrun; Ctrl-C or "
                        "SIGTERM stops every process, and --resume continues from the last checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _parse_model_args(items: list[str]) -> dict[str, Any]:
    from cnnlab.yamlio import load_yaml_text

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CnnlabError(f"--model-arg needs KEY=VALUE; received {clip(repr(item))}")
        out[key] = load_yaml_text(value, f"--model-arg {clip(key, 40)}")
    return out


def _run_name(cfg) -> str:
    """``MODEL-DATA`` for a default run directory: a layer list by its file's stem, an image folder
    (``folder:PATH``) by the folder's name, never a path."""
    model = Path(cfg.spec).stem if cfg.spec else cfg.model.replace(":", "-").replace("/", "-")
    data = cfg.data
    if data.startswith("folder:"):
        data = Path(data[len("folder:"):].rstrip("/\\")).name or "folder"
    return f"{model}-{data}".replace("/", "-")


def _free_run_dir(name: str) -> Path:
    base = Path("runs") / name
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _train_config(args: argparse.Namespace):
    """The resolved config: defaults (or the resumed run's config) < --config < flags."""
    from cnnlab.train import TrainConfig, resume_config
    from cnnlab.train.config import load_config_file

    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if "model_arg" in vars(args):
        overrides["model_args"] = _parse_model_args(args.model_arg)
    if getattr(args, "resume", None):
        if getattr(args, "config", None):
            raise CnnlabError("--config cannot be used with --resume: a resumed run keeps its own config "
                              "(pass changed runtime flags such as --threads or a larger --epochs instead)")
        if args.out and Path(args.out) != Path(args.resume):
            raise CnnlabError("--resume DIR continues the run in DIR; do not pass a different --out")
        return resume_config(args.resume, overrides)
    base = TrainConfig()
    if args.config:
        base = base.updated(load_config_file(args.config))
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
        out = _free_run_dir(_run_name(cfg))
    if args.nproc is not None and not launched:
        rest = distributed.without_flag(list(argv)[1:], "--nproc")
        if not args.resume and not args.out:
            rest += ["--out", str(out)]
        if not 1 <= args.nproc <= 1024:
            raise CnnlabError(f"--nproc must be in [1, 1024]; received --nproc {args.nproc}")
        print(f"launching {args.nproc} processes with torchrun -> {out}", file=sys.stderr, flush=True)
        return distributed.launch(args.nproc, rest)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        what = f"the layer list {cfg.spec}" if cfg.spec else cfg.model
        epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
        print(f"training {what} on {cfg.data} for {epochs} -> {out}", file=sys.stderr, flush=True)
    # a progress bar only on a terminal: redirected to a log, it would be a flood of '\r' updates;
    # the per-epoch lines are printed either way
    bar = not args.no_progress and sys.stderr.isatty()
    summary = fit(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=bar,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    if main_rank:
        if summary.get("stopped_early"):
            print(f"stopped early after epoch {summary['epochs_run']}; kept the weights of epoch "
                  f"{summary['final_epoch']}", file=sys.stderr)
        if summary.get("compile_seconds") is not None:
            print(f"torch.compile took {summary['compile_seconds']:.1f} s (not counted in the training time)",
                  file=sys.stderr)
        print(f"test accuracy: {summary['test_top1']:.2%} (top-5 {summary['test_top5']:.2%}, "
              f"loss {summary['test_loss']:.4f}) after {summary['epochs_run']} epoch{'s' if summary['epochs_run'] != 1 else ''}, "
              f"{summary['train_seconds']:.1f} s of training; run saved in {out}; {summary.get('selection', '')}")
    return 0


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
    p.add_argument("--top-losses", type=int, metavar="K",
                   help="list the K test images with the highest loss (true and predicted class) and save "
                        "them in a grid, as fastai's interpretation shows them")
    p.add_argument("--top-losses-out", metavar="PNG",
                   help="where the --top-losses grid goes (default: top-losses.png in the first run)")
    p.add_argument("--data", help="dataset to test on; default the one the runs were trained on")
    p.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    p.add_argument("--batch-size", type=int, default=1000, help="images per forward pass (default 1000)")
    p.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from cnnlab.train.evaluation import evaluate_runs, format_evaluation

    if not 1 <= args.batch_size <= 2**31 - 1:
        raise CnnlabError(f"batch size must be in [1, 2**31); received --batch-size {args.batch_size}")
    _check_data_root(args.data_root)
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise CnnlabError(f"--weights takes numbers separated by commas; received {clip(repr(args.weights))}") \
                from None
    top_png = None
    if args.top_losses is not None:
        if args.top_losses < 1:
            raise CnnlabError(f"--top-losses K needs K >= 1 (at most the test set's size); "
                              f"received --top-losses {args.top_losses}")
        first = Path(args.paths[0])
        top_png = args.top_losses_out or (first if first.is_dir() else first.parent) / "top-losses.png"
    elif args.top_losses_out:
        raise CnnlabError("--top-losses-out names the picture of --top-losses K; pass --top-losses too")
    r = evaluate_runs(args.paths, data=args.data, data_root=args.data_root, tta=args.tta, tta_pad=args.tta_pad,
                      weights=weights, batch_size=args.batch_size, device=args.device, confusion_png=args.confusion,
                      top_losses=args.top_losses, top_losses_png=top_png,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}, indent=2))
    else:
        print(format_evaluation(r))
        for m in r["members"]:
            print(f"evaluated {m['checkpoint']} (epoch {m['epoch']}, {m.get('chosen_on') or 'best chosen on ?'})")
        if "top_losses" in r:
            from cnnlab.train.evaluation import format_top_losses

            print()
            print(format_top_losses(r))
            print(f"saved the top-losses grid in {top_png}")
    return 0


# --- lr-find and augment --------------------------------------------------------------------------

def _add_lr_find(sub) -> None:
    from cnnlab.train.lr_find import LR_FIND_FIELDS

    p = sub.add_parser("lr-find", help="the learning-rate range test: loss vs lr, with a suggestion",
                       description="Increase the learning rate exponentially over a few hundred steps and plot "
                                   "the loss (Smith 2017). Takes the model, data and optimizer flags of train.")
    _add_config_flags(p, only=LR_FIND_FIELDS)
    p.add_argument("--start-lr", type=float, default=1e-7, help="the learning rate of the first step (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="the learning rate of the last step (default 10)")
    p.add_argument("--steps", type=int, default=100,
                   help="optimizer steps between them, at most (it stops when the loss diverges; default 100)")
    p.add_argument("--out", default="lr_find.png", metavar="PNG", help="the plot (default lr_find.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_lr_find, resume=None)


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from cnnlab.train import lr_find

    args.out_png, args.out = args.out, None
    cfg = _train_config(args)
    result = lr_find.run(cfg, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps,
                         out_png=args.out_png, progress=not args.no_progress,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"suggested learning rate: {result.suggestion:.3g} ({len(result.lrs)} steps"
          f"{', stopped when the loss diverged' if result.stopped_early else ''}); plot saved in {args.out_png}")
    return 0


def _add_augment(sub) -> None:
    from cnnlab.data.augment import describe

    p = sub.add_parser("augment", help="save a contact sheet of original and augmented training images",
                       description="Show what an augmentation pipeline does to real training images.\n\n" + describe(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist", help="mnist, fashion-mnist, cifar10 or cifar100 (default mnist)")
    p.add_argument("--augment", required=True, metavar="SPEC", help="e.g. flip,crop:4,cutout:8")
    p.add_argument("--out", metavar="PNG", help="the contact sheet; default runs/augment-DATA.png")
    p.add_argument("--rows", type=int, default=4, help="rows of augmented draws under the originals")
    p.add_argument("--n", type=int, default=12, help="images per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root")
    p.set_defaults(func=_cmd_augment)


def _cmd_augment(args: argparse.Namespace) -> int:
    from cnnlab import data
    from cnnlab.data.augment import contact_sheet, parse_augment

    pipeline = parse_augment(args.augment)
    if not (1 <= args.rows <= 100 and 1 <= args.n <= 100):
        raise CnnlabError(f"--rows and --n must be in [1, 100]; received --rows {args.rows} --n {args.n}")
    _check_data_root(args.data_root)
    out = Path(args.out) if args.out else Path("runs") / f"augment-{clip(args.data, 40)}.png"
    ds = data.load_dataset(args.data, args.data_root, log=lambda line: print(line, file=sys.stderr, flush=True))
    if "flip" in [part.split(":")[0].strip() for part in args.augment.split(",")] and ds.name == "mnist":
        print("cnnlab: warning: flip mirrors mnist digits, which are not mirror-symmetric", file=sys.stderr)
    contact_sheet(ds.train_x, pipeline, out, rows=args.rows, n=args.n, seed=args.seed,
                  num_classes=ds.num_classes, title=f"{ds.name}: {pipeline}")
    print(f"saved {out}: {args.n} originals and {args.rows} rows of {pipeline}")
    return 0


# --- zoo and data ---------------------------------------------------------------------------------

def _add_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="every registered model: year, paper, parameters and MACs")
    p.add_argument("names", nargs="*", help="only these models (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--recount", action="store_true",
                   help="count again instead of reading the counts cached by an earlier run (under CNNLAB_DATA)")
    p.set_defaults(func=_cmd_zoo)


def _zoo_cache() -> Path:
    """Where the zoo's counts are cached: named by a hash of torch's version and of the sources
    that decide the counts (the model definitions and the counting code), so any change recounts."""
    import hashlib

    import torch

    import cnnlab
    from cnnlab.data.fetch import data_root

    src = Path(cnnlab.__file__).parent
    h = hashlib.sha256(torch.__version__.encode())
    for f in sorted((src / "models").glob("*.py")) + [src / "inspect" / "summary.py"]:
        h.update(f.name.encode() + f.read_bytes())
    return data_root() / "zoo" / f"counts-{h.hexdigest()[:16]}.json"


def _read_zoo_cache(path: Path) -> dict[str, Any]:
    """The cached rows by name, keeping only rows of exactly the expected fields and types."""
    import dataclasses

    from cnnlab.inspect.summary import ZooRow

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    fields = {f.name for f in dataclasses.fields(ZooRow)}
    rows = {}
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or set(item) != fields or not isinstance(item["name"], str):
            continue
        ints = (item["year"], item["params"], item["aux_params"], *item["input_size"])
        optional = (item["published"], item["macs"])
        if all(type(v) is int for v in ints) and all(v is None or type(v) is int for v in optional) and \
                all(isinstance(item[k], str) for k in ("family", "paper")) and \
                all(isinstance(a, str) for a in item["aliases"]):
            rows[item["name"]] = ZooRow(**{**item, "input_size": tuple(item["input_size"]),
                                           "aliases": tuple(item["aliases"])})
    return rows


def _cmd_zoo(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm.auto import tqdm

    from cnnlab import inspect, models
    from cnnlab.fileio import atomic_write_text

    names = [models.info(name).name for name in (args.names or models.names())]  # unknown names fail first
    cache = _zoo_cache()
    cached = {} if args.recount else _read_zoo_cache(cache)
    rows = [cached[n] for n in names if n in cached]
    todo = [n for n in names if n not in cached]
    for name in tqdm(todo, desc="counting", unit="model", disable=args.no_progress or not todo, leave=False,
                     file=sys.stderr):
        rows += inspect.zoo_table([name])
    if todo:
        merged = {**cached, **{r.name: r for r in rows}}
        try:  # a cache that cannot be written only means counting again next time
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps([dataclasses.asdict(r) for r in merged.values()]))
        except OSError:
            pass
    rows.sort(key=lambda r: (r.year, r.family, r.name))
    print(inspect.format_zoo(rows))
    print("MACs: multiply-accumulates for one image at the model's native input (torch.utils.flop_counter).")
    return 0


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="per-layer output shape, parameters, MACs and receptive field")
    p.add_argument("name", help="a registered model (see `cnnlab zoo`)")
    p.add_argument("--input", metavar="CxHxW", help="input size, e.g. 3x224x224; default the model's native size")
    p.add_argument("--num-classes", type=int, help="default: the class count of the published model")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model builder argument (repeatable), e.g. --model-arg shortcut=false")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from cnnlab import inspect, models

    info = models.info(args.name)
    if args.num_classes is not None and not 1 <= args.num_classes <= 1_000_000:
        raise CnnlabError(f"--num-classes must be in [1, 1000000]; received --num-classes {args.num_classes}")
    size = inspect.parse_input_size(args.input) if args.input else info.input_size
    extra = _parse_model_args(args.model_arg)
    num_classes = args.num_classes if args.num_classes is not None else info.num_classes
    try:
        with torch.device("meta"):
            model = models.create(args.name, num_classes=num_classes, in_channels=size[0], **extra)
    except (TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, CnnlabError):
            raise
        raise CnnlabError(f"model {args.name!r} cannot be built with {clip(extra, 100)} "
                          f"({type(e).__name__}: {clip(str(e).splitlines()[0] if str(e) else '', 120)})") from None
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

    _check_data_root(args.data_root)
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


def _check_data_root(path: str | None) -> None:
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise CnnlabError(f"--data-root must be a directory; {clip(path)} is a file")


def _crash_log(exc: BaseException, argv: Sequence[str]) -> Path | None:
    """Write the traceback of an unexpected error to a log file; its path, or None if unwritable."""
    import os
    import tempfile
    import time
    import traceback

    from cnnlab import __version__

    folder = Path(os.environ.get("CNNLAB_LOG_DIR") or tempfile.gettempdir())
    path = folder / f"cnnlab-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"cnnlab {__version__}, python {sys.version.split()[0]}\n")
            f.write(f"command: cnnlab {' '.join(map(str, argv))[:2000]}\n\n")
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path


def _silence_stdout() -> None:
    """After a closed pipe (``cnnlab eval --json | head``): send the rest of stdout nowhere, so
    that Python's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; every failure is one line on stderr and an exit status:
    2 a mistake in the input, 1 an environment or internal problem (the traceback in a log
    file), 3 a training run that diverged, 130 interrupted, 141 stdout closed early."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except CnnlabError as e:
        _err(str(e))
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        _err("interrupted; files already written are complete (every write is atomic)")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except RecursionError:
        _err("the input is nested too deeply to process; simplify it")
        return EXIT_USER_ERROR
    except MemoryError:
        _err("out of memory; try a smaller batch size or model")
        return 1
    except OSError as e:
        from cnnlab.fileio import _space_error, disk_full_error

        if _space_error(e) is not None and e.filename:
            _err(str(disk_full_error(e.filename)))
            return 1
        log = _crash_log(e, argv)
        where = f"; details in {log}" if log else ""
        _err(f"{e.strerror or type(e).__name__}{f': {clip(e.filename)}' if e.filename else ''}{where}")
        return 1
    except Exception as e:  # an internal error: one sentence here, the traceback in a log file
        log = _crash_log(e, argv)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        where = f"the traceback is in {log}" if log else "no log file could be written"
        _err(f"internal error ({type(e).__name__}: {clip(first, 160)}); {where}; please report it")
        return 1


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv or ["--help"])
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    if args.func is _cmd_train:
        return _cmd_train(args, argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
