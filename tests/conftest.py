"""Shared fixtures: small generated datasets in memory and on disk (never the network)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.data import Dataset
from cnnlab.data.datasets import write_cache


def make_images(n: int, seed: int, classes: int = 10, size: int = 28, channels: int = 1):
    """Learnable synthetic digits: class k lights up a k-dependent bar, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, channels, size, size)).astype(np.uint8)
    for i, k in enumerate(y):
        row = 2 + (k * (size - 6)) // max(classes - 1, 1)
        x[i, :, row:row + 3, 4:size - 4] = 250
    return x, y.astype(np.int64)


def tiny_dataset(n_train: int = 512, n_test: int = 128, seed: int = 0, name: str = "mnist") -> Dataset:
    xt, yt = make_images(n_train, seed)
    xs, ys = make_images(n_test, seed + 1)
    return Dataset(name, torch.from_numpy(xt), torch.from_numpy(yt), torch.from_numpy(xs), torch.from_numpy(ys),
                   tuple(str(i) for i in range(10)), (0.1307,), (0.3081,))


@pytest.fixture
def tiny():
    return tiny_dataset()


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A CNNLAB_DATA directory holding a tiny MNIST in cnnlab's processed-cache format."""
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    xt, yt = make_images(512, 0)
    xs, ys = make_images(128, 1)
    write_cache(root / "mnist" / "cnnlab-uint8.npz",  # with its checksum, so that it is trusted
                {"train_x": xt[:, 0], "train_y": yt, "test_x": xs[:, 0], "test_y": ys})
    monkeypatch.setenv("CNNLAB_DATA", str(root))
    return root


@pytest.fixture(autouse=True)
def _an_idle_machine(monkeypatch):
    """The trainer's default thread count follows the cores busy right now; tests that compare two
    runs bit for bit need the same count in both, whatever else the machine is doing."""
    monkeypatch.setattr("cnnlab.threads.busy_cores", lambda interval=0.2: 0.0)
