"""``cnnlab export RUN --format onnx|safetensors|torchscript``: a trained model for use without cnnlab."""
from __future__ import annotations

import argparse

FORMATS = ("onnx", "safetensors", "torchscript")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "export", help="export a trained run to ONNX, safetensors or TorchScript",
        description="Export a trained run's model. ONNX is checked against onnxruntime (the largest absolute "
                    "difference of the logits is printed and must be below 1e-4); TorchScript is scripted, or "
                    "traced where scripting fails; safetensors holds the weights with the config and class names "
                    "as metadata. ONNX and safetensors need `python -m pip install 'cnnlab[export]'`.")
    p.add_argument("run", metavar="RUN", help="a run directory (its best.pt, else last.pt) or a checkpoint file")
    p.add_argument("--format", choices=FORMATS, required=True, help="the file format")
    p.add_argument("--out", metavar="FILE", help="output file or folder; default: beside the checkpoint, "
                                                 "e.g. RUN/best.onnx")
    p.add_argument("--weights", choices=("model", "ema"), default="model",
                   help="the trained weights, or their moving average when the run kept one (default: model)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from cnnlab.train.export import export

    result = export(args.run, args.format, args.out, weights=args.weights)
    size = result["bytes"]
    line = f"wrote {result['path']} ({size / 1024:,.0f} KiB, {args.format}"
    if args.format == "torchscript":
        line += f" by {'scripting' if result['method'] == 'script' else 'tracing'}"
    line += ")"
    if args.format == "onnx":
        line += f"; onnxruntime matches PyTorch to {result['max_abs_diff']:.2g} (max abs difference of the logits"
        line += f", limit {result['tolerance']:.2g})"
    elif args.format == "torchscript":
        line += f"; the reloaded module matches PyTorch to {result['max_abs_diff']:.2g}"
    print(line)
    return 0
