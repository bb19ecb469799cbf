"""``cnnlab report RUN``: one self-contained HTML page about a trained run."""
from __future__ import annotations

import argparse

from cnnlab.commands._runs import dataset_on_board, log
from cnnlab.errors import CnnlabError


def add_parsers(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page about a trained run",
                       description="Write one HTML file (images inline, no network) with the run's config and "
                                   "summary, learning curves, confusion matrix and most-confused pairs, top losses, "
                                   "first-layer filters with Gabor fits, feature maps, saliency, the FGSM "
                                   "robustness curve with adversarial examples, and the model summary.")
    p.add_argument("run", metavar="RUN", help="a run directory (or checkpoint file) from `cnnlab train`")
    p.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    p.add_argument("--images", type=int, default=4, help="test images with saliency maps (default 4)")
    p.add_argument("--attack-limit", type=int, default=500, help="test images for the robustness curve")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", help="dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from cnnlab.report import build_report
    from cnnlab.train import load_model

    if args.images < 1 or args.attack_limit < 1:
        raise CnnlabError(f"--images and --attack-limit must be at least 1; received {args.images}, "
                          f"{args.attack_limit}")
    _, state = load_model(args.run)  # a bad run fails here, before any work
    dataset_on_board(state["dataset"]["name"], args.data_root)
    out = build_report(args.run, args.out, device=args.device, data_root=args.data_root, images=args.images,
                       attack_limit=args.attack_limit, log=log)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KiB, self-contained)")
    return 0
