"""``cnnlab predict RUN IMAGE_OR_FOLDER...``: top-k classes of image files with a trained run."""
from __future__ import annotations

import argparse
import json
import sys


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify image files with a trained run (top-k classes and probabilities)",
        description="Classify image files with a trained run, applying the run's own preprocessing (resize, "
                    "centre crop, normalization from the checkpoint). Folders are searched for images recursively.")
    p.add_argument("run", metavar="RUN", help="a run directory (its best.pt, else last.pt) or a checkpoint file")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of images")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes shown per image (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    p.add_argument("--weights", choices=("model", "ema"), default="model",
                   help="the trained weights, or their moving average when the run kept one (default: model)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default: 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from cnnlab.errors import CnnlabError
    from cnnlab.train.predict import image_files, load_predictor

    if args.top_k < 1:
        raise CnnlabError(f"--top-k must be at least 1; received --top-k {args.top_k}")
    files = image_files(args.images)  # every path is checked before the model is loaded
    predictor = load_predictor(args.run, device=args.device, weights=args.weights)
    bar = tqdm(total=len(files), desc="predict", unit="image", file=sys.stderr,
               disable=args.no_progress or len(files) < 256 or not sys.stderr.isatty())
    try:
        results = predictor.predict(files, top_k=args.top_k, batch_size=args.batch_size,
                                    progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    if args.json:
        print(json.dumps({"checkpoint": predictor.source, "weights": args.weights,
                          "predictions": [r.to_dict() for r in results]}, indent=2))
    else:
        for r in results:
            print(f"{r.path}: " + ", ".join(f"{name} {p:.1%}" for _, name, p in r.top))
    return 0
