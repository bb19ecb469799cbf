"""Train every recipe in recipes/ whose dataset is in the cache and print its measured result.

    python benchmarks/run_recipes.py [recipes/lenet5-mnist.yaml ...]

Prints one line per recipe: test top-1, epochs, seconds of training; the figures go into each
recipe's header by hand (they are measurements of one machine, not something to regenerate
silently).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

from cnnlab import data
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, fit


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path("recipes").glob("*.yaml"))
    for path in paths:
        cfg = TrainConfig().updated(yaml.safe_load(path.read_text())).validate()
        try:
            ds = data.load_dataset(cfg.data, cfg.data_root)
        except CnnlabError as e:
            print(f"{path}: skipped ({e})", flush=True)
            continue
        with tempfile.TemporaryDirectory() as out:
            s = fit(cfg, out, dataset=ds)
        print(f"{path}: test top-1 {s['test_top1']:.2%} after {s['epochs_run']} epochs, "
              f"{s['train_seconds']:.0f} s of training", flush=True)


if __name__ == "__main__":
    main()
