"""The speedrun's lean loop: no host sync per step, divergence named by step, per-seed results, CLI."""
from __future__ import annotations

import json
import traceback

import pytest
import torch
from torch import nn

from cnnlab.cli import main
from cnnlab.data.datasets import Dataset
from cnnlab.train import TrainingDiverged
from cnnlab.train import speedrun as sr


def _toy_dataset(n_train: int = 512, n_test: int = 200, seed: int = 0) -> Dataset:
    """Two classes of 28x28 images told apart by which half is bright."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randint(0, 60, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        x[y == 0, :, :14] += 150
        x[y == 1, :, 14:] += 150
        return x, y

    (tx, ty), (vx, vy) = make(n_train), make(n_test)
    return Dataset("toy", tx, ty, vx, vy, ("top", "bottom"), (0.3,), (0.3,))


TINY = sr.Recipe(epochs=2.0, batch_size=64, lr=1e-2, eval_batch_size=100, check_every=1000)


def test_the_speedrun_learns_a_toy_task_and_reports_every_seed_with_separate_timings():
    result = sr.speedrun(_toy_dataset(), seeds=[0, 1], recipe=TINY, threads=1)
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    assert all(s["top1"] > 0.95 and s["steps"] == 16 and s["train_seconds"] > 0 for s in result["seeds"])
    assert result["data_prep_seconds"] >= 0 and all(s["eval_seconds"] > 0 for s in result["seeds"])
    assert result["threads"] == 1 and result["recipe"]["batch_size"] == 64


def test_training_reads_nothing_back_from_the_device_between_checks(monkeypatch):
    ds = _toy_dataset()
    prepared = sr.prepare(ds, torch.device("cpu"))
    model = sr.build(TINY, prepared, 0, torch.device("cpu"))
    calls = []
    real_item = torch.Tensor.item

    def item(self):
        caller = traceback.extract_stack(limit=2)[0]
        if caller.filename == sr.__file__:  # ours; torch's Adam reads its host-side step counter
            calls.append(caller.name)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    stats = sr.train(model, prepared, TINY, seed=0)
    # 16 steps, check_every=1000: only the final divergence check and the mean loss sync.
    assert stats["steps"] == 16 and calls == ["diverged_at", "train"]


def test_a_non_finite_loss_stops_training_and_names_the_step():
    class NanAtStep(nn.Module):
        def __init__(self, inner, bad_step):
            super().__init__()
            self.inner, self.bad_step, self.calls = inner, bad_step, 0

        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return out * float("nan") if self.calls == self.bad_step else out

    prepared = sr.prepare(_toy_dataset(), torch.device("cpu"))
    model = NanAtStep(sr.build(TINY, prepared, 0, torch.device("cpu")), bad_step=5)
    recipe = sr.Recipe(epochs=2.0, batch_size=64, check_every=4)
    with pytest.raises(TrainingDiverged, match="at step 5;"):
        sr.train(model, prepared, recipe, seed=0)


def test_divergence_watch_keeps_the_first_bad_step():
    watch = sr.DivergenceWatch("cpu")
    for value in [1.0, 2.0, float("inf"), float("nan"), 3.0]:
        watch.update(torch.tensor(value))
    assert watch.diverged_at() == 3
    with pytest.raises(TrainingDiverged, match="the loss became inf at step 3"):
        watch.check()
    clean = sr.DivergenceWatch("cpu")
    clean.update(torch.tensor(0.5))
    clean.check()  # no error
    assert clean.diverged_at() is None


def test_recipe_and_arguments_are_checked_before_any_work():
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="epochs must be positive"):
        sr.speedrun(_toy_dataset(), recipe=sr.Recipe(epochs=0))
    with pytest.raises(CnnlabError, match="at least one seed"):
        sr.speedrun(_toy_dataset(), seeds=[])
    with pytest.raises(CnnlabError, match="larger than the training set"):
        sr.speedrun(_toy_dataset(n_train=10), recipe=sr.Recipe(batch_size=64), threads=1)


def test_cli_prints_one_json_object_with_every_seed(monkeypatch, capsys):
    seen = {}

    def fake_speedrun(*, seeds, device, threads, progress):
        seen.update(seeds=list(seeds), device=device, threads=threads)
        rows = [{"seed": s, "top1": 0.991, "train_seconds": 1.5, "eval_seconds": 0.1} for s in seeds]
        for r in rows:
            progress(r)
        return {"seeds": rows, "median_train_seconds": 1.5, "reached_99": len(rows), "device": device,
                "threads": threads, "data_load_seconds": 0.1, "data_prep_seconds": 0.2}

    monkeypatch.setattr(sr, "speedrun", fake_speedrun)
    assert main(["speedrun", "mnist", "--seeds", "2", "--json", "--device", "cpu", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["seed"] for s in out["seeds"]] == [0, 1] and out["seeds"][0]["top1"] == 0.991
    assert seen == {"seeds": [0, 1], "device": "cpu", "threads": 1}
    assert main(["speedrun", "mnist", "--seeds", "1", "--device", "cpu"]) == 0
    assert "1/1 seeds reached 99.0%" in capsys.readouterr().out


def test_cli_refuses_bad_arguments_in_one_line(capsys):
    assert main(["speedrun", "mnist", "--seeds", "0"]) == 2
    assert main(["speedrun", "mnist", "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cnnlab: --seeds must be at least 1; received --seeds 0",
                   "cnnlab: unknown device 'tpu'; use cpu, cuda, cuda:N or auto"]


def test_cli_help_states_the_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["speedrun", "--help"])
    text = capsys.readouterr().out
    assert "one-cycle" in text and "speedrun-net" in text and "no host sync per step" in text
