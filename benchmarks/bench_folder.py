"""Streaming image-folder throughput: images per second out of ``cnnlab.data.folder.FolderLoader``.

    python benchmarks/bench_folder.py [--images 1024] [--classes 8] [--width 500 --height 375]
                                      [--image-size 224] [--workers 0,1,2] [--batch-size 64] [--repeats 2]

Generates a folder of JPEGs in the ImageNet layout (``train/<wnid>/*.JPEG``, ``val/<wnid>/...``),
by default 500 x 375 like a typical ImageNet photo, in a temporary directory (or ``--root``,
reused when it exists), opens it with ``stream=True`` and times full passes over the training
split for each worker count: decoding with Pillow, the training crop (``--train-crop``: ``rrc``,
a random resized crop of the full image, or ``resize``, resize + centre crop with JPEG draft
decoding), collation into uint8 batches, normalization, and ``--augment`` on whole batches (the
trainer's path). Also times the evaluation transform (resize 256 + centre crop 224, crop_pct
0.875) on the val split. Printed: images/s per configuration (median over repeats, min-max), and
images per CPU-second over all processes (main and workers), which a busy machine disturbs less.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.augment import parse_augment
from cnnlab.data.folder import load_folder


def make_jpegs(root: Path, *, images: int, classes: int, width: int, height: int, seed: int = 0) -> None:
    """Smooth random colour fields with noise: JPEG-compressible like photos, not constant."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", images), ("val", max(images // 4, classes))):
        for i in range(n):
            wnid = f"n{1440764 + i % classes:08d}"
            coarse = rng.integers(0, 255, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
            noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (height, width, 3))
            path = root / split / wnid / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the DataLoader workers, once joined)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_pass(loader, epoch: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (all processes) and images of one pass."""
    loader.set_epoch(epoch)
    t0, c0 = time.perf_counter(), cpu_seconds()
    n = 0
    for x, _ in loader:
        n += len(x)
    return time.perf_counter() - t0, cpu_seconds() - c0, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="folder to generate into (or reuse); default: a temporary one")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--train-crop", default="rrc", choices=("rrc", "resize"))
    p.add_argument("--augment", default="flip")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch threads of the main process")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "imagenet-like"
        if not root.exists():
            t0 = time.perf_counter()
            make_jpegs(root, images=args.images, classes=args.classes, width=args.width, height=args.height)
            print(f"generated {root}: {args.images} + {max(args.images // 4, args.classes)} JPEGs of "
                  f"{args.width}x{args.height} in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        ds = load_folder(root, image_size=args.image_size, crop_pct=0.875, train_crop=args.train_crop,
                         stream=True, workers=0)
        print(f"opened {ds.name}: {len(ds.index.train)} train / {len(ds.index.test)} val images, "
              f"{ds.input_size}, mean/std of a sample in {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
        augment = parse_augment(args.augment)
        for split, crop in (("train", args.train_crop), ("test", "resize 256, centre crop 224")):
            for workers in (int(w) for w in args.workers.split(",")):
                loader = ds.loader(split, batch_size=args.batch_size, seed=0, workers=workers,
                                   augment=augment if split == "train" else None, num_classes=ds.num_classes)
                rates, per_cpu = [], []
                for r in range(args.repeats):
                    seconds, cpu, n = timed_pass(loader, r + 1)
                    rates.append(n / seconds)
                    per_cpu.append(n / cpu)
                print(f"{split:5s} ({crop}{', ' + args.augment if split == 'train' else ''}) workers={workers}: "
                      f"{statistics.median(rates):7.1f} images/s (min {min(rates):.1f}, max {max(rates):.1f}, "
                      f"{args.repeats} passes of {n} images, batch {args.batch_size}); "
                      f"{statistics.median(per_cpu):.0f} images per CPU-second")


if __name__ == "__main__":
    main()
