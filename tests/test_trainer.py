"""The trainer: run files, metrics, bit-exact resume, divergence, checkpoints and their errors."""
import json

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, TrainingDiverged, evaluate_checkpoint, fit, load_model
from cnnlab.train import trainer as trainer_mod
from cnnlab.train.engine import build_model
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.metrics import METRIC_COLUMNS, read_metrics_csv, topk_correct

FAST = dict(epochs=2, batch_size=64, eval_batch_size=128)


def test_a_run_writes_config_metrics_plot_checkpoints_and_summary(tmp_path, tiny):
    summary = fit(TrainConfig(**FAST), tmp_path / "run", dataset=tiny)
    run = tmp_path / "run"
    for f in ("config.json", "metrics.csv", "curves.png", "last.pt", "best.pt", "summary.json"):
        assert (run / f).is_file(), f
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(METRIC_COLUMNS) <= set(rows[0])
    assert rows[-1]["test_top1"] == summary["test_top1"] > 0.5  # the synthetic task is learnable
    assert json.loads((run / "summary.json").read_text())["params"] == 61_706
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_training_reduces_the_loss(tmp_path, tiny):
    fit(TrainConfig(epochs=3, batch_size=32), tmp_path / "run", dataset=tiny)
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]


@pytest.mark.parametrize("model_args", [{}, {"hidden": [64], "dropout": 0.5}])
def test_killed_and_resumed_run_ends_bit_identical(tmp_path, tiny, model_args):
    model = "mlp" if model_args else "lenet5"  # dropout exercises the saved RNG state
    cfg = TrainConfig(model=model, model_args=model_args, epochs=3, batch_size=64)
    fit(cfg, tmp_path / "a", dataset=tiny)
    assert fit(cfg, tmp_path / "b", dataset=tiny, stop_after_epoch=1) == {"interrupted_after_epoch": 1}
    fit(cfg, tmp_path / "b", dataset=tiny, resume=True)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics_csv(tmp_path / "a" / "metrics.csv")[2]["test_loss"] == \
        read_metrics_csv(tmp_path / "b" / "metrics.csv")[2]["test_loss"]


def test_resume_with_a_different_config_is_refused(tmp_path, tiny):
    fit(TrainConfig(**FAST), tmp_path / "r", dataset=tiny, stop_after_epoch=1)
    with pytest.raises(CnnlabError, match="lr changed"):
        fit(TrainConfig(**{**FAST, "lr": 0.1}), tmp_path / "r", dataset=tiny, resume=True)


def test_an_output_directory_holding_a_run_is_refused_unless_overwrite(tmp_path, tiny):
    fit(TrainConfig(epochs=1), tmp_path / "r", dataset=tiny)
    with pytest.raises(CnnlabError, match="already holds a run"):
        fit(TrainConfig(epochs=1), tmp_path / "r", dataset=tiny)
    fit(TrainConfig(epochs=1, seed=1), tmp_path / "r", dataset=tiny, overwrite=True)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["seed"] == 1


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny, monkeypatch):
    fit(TrainConfig(epochs=2), tmp_path / "r", dataset=tiny, stop_after_epoch=1)
    good = (tmp_path / "r" / "last.pt").read_bytes()
    real = trainer_mod.classification_loss

    def poisoned(output, target, *args):
        loss, logits = real(output, target, *args)
        return loss * float("nan"), logits

    monkeypatch.setattr(trainer_mod, "classification_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"became nan at step 5 \(epoch 2 of 2\)"):
        fit(TrainConfig(epochs=2), tmp_path / "r", dataset=tiny, resume=True)
    assert (tmp_path / "r" / "last.pt").read_bytes() == good


@pytest.mark.parametrize("bad, message", [
    ({"lr": 0}, "learning rate must be positive"), ({"batch_size": 0}, "batch size"),
    ({"epochs": 0}, "epochs must be at least 1"), ({"optimizer": "lion"}, "unknown optimizer"),
    ({"model": "lenet"}, "did you mean 'lenet5'"), ({"data": "imagenet"}, "unknown dataset"),
])
def test_impossible_hyperparameters_are_refused_before_training(tmp_path, tiny, bad, message):
    with pytest.raises(CnnlabError, match=message):
        fit(TrainConfig(**bad), tmp_path / "r", dataset=tiny)
    assert not (tmp_path / "r").exists()


def test_config_updates_are_type_checked_and_unknown_keys_refused():
    assert TrainConfig().updated({"lr": "0.5", "epochs": "4", "channels-last": "false"}).channels_last is False
    with pytest.raises(CnnlabError, match="unknown config key 'learning_rate'"):
        TrainConfig().updated({"learning_rate": 1})
    with pytest.raises(CnnlabError, match="'epochs' needs an integer"):
        TrainConfig().updated({"epochs": 2.5})


def test_evaluate_checkpoint_matches_the_runs_last_metrics(tmp_path, tiny):
    summary = fit(TrainConfig(**FAST), tmp_path / "r", dataset=tiny)
    result = evaluate_checkpoint(tmp_path / "r" / "last.pt", dataset=tiny)
    assert result["test_top1"] == summary["test_top1"] and result["epoch"] == 2


def test_corrupt_checkpoint_is_one_clear_error(tmp_path, tiny):
    fit(TrainConfig(epochs=1), tmp_path / "r", dataset=tiny)
    blob = (tmp_path / "r" / "last.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CnnlabError, match="not a readable cnnlab checkpoint"):
        load_model(tmp_path / "bad.pt")
    (tmp_path / "foreign.pt").write_bytes(b"hello")
    with pytest.raises(CnnlabError, match="checkpoint"):
        load_model(tmp_path / "foreign.pt")


def test_checkpoint_of_another_model_is_refused(tmp_path, tiny):
    fit(TrainConfig(epochs=1), tmp_path / "r", dataset=tiny)
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    model = build_model(TrainConfig(model="mlp"), 10, (1, 28, 28))
    from cnnlab.train.checkpoint import load_model_state
    with pytest.raises(CnnlabError, match="holds weights of model 'lenet5'"):
        load_model_state(model, state, "last.pt")


def test_checkpoint_loads_without_pickled_code(tmp_path, tiny):
    fit(TrainConfig(epochs=1), tmp_path / "r", dataset=tiny)
    state = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert state["format"] == "cnnlab-checkpoint/1" and state["config"]["model"] == "lenet5"


def test_validation_split_is_logged_and_picks_best(tmp_path, tiny):
    fit(TrainConfig(epochs=2, val_split=0.25), tmp_path / "r", dataset=tiny)
    rows = read_metrics_csv(tmp_path / "r" / "metrics.csv")
    assert all(r["val_top1"] is not None for r in rows)


def test_topk_counts_hits_and_caps_k_at_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2]])
    top1, top5 = topk_correct(logits, torch.tensor([1, 2]), (1, 5))
    assert top1.item() == 1 and top5.item() == 2
