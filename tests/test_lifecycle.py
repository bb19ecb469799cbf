"""Own data and models in a run, validation-chosen best.pt, EMA, accumulation, mid-epoch resume."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, fit, load_model, load_predictor
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.metrics import read_metrics_csv
from test_folder import make_folder

FAST = dict(model="mlp", model_args={"hidden": [16]}, batch_size=32, eval_batch_size=128, epochs=2)


class TinyNet(nn.Module):  # a model of one's own, importable as test_lifecycle:TinyNet
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, 12), nn.ReLU())
        self.head = nn.Linear(12, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def test_best_is_chosen_on_a_held_out_validation_split_by_default(tmp_path, tiny):
    s = fit(TrainConfig(**FAST), tmp_path / "r", dataset=tiny)
    assert s["best_chosen_on"] == "val_top1" and "10% of the training set held out, seed 0" in s["selection"]
    s0 = fit(TrainConfig(val_split=0, **FAST), tmp_path / "t", dataset=tiny)
    assert s0["selection"] == "best chosen on test set (optimistic)"
    assert load_checkpoint(tmp_path / "r" / "best.pt")["selection"].startswith("validation split of 51 images")


def test_a_folder_run_records_classes_and_preprocessing_for_predict(tmp_path):
    root = make_folder(tmp_path / "pics", n=8)
    s = fit(TrainConfig(data=f"folder:{root}", workers=0, **{**FAST, "batch_size": 8}), tmp_path / "r")
    meta = load_checkpoint(tmp_path / "r" / "best.pt")["dataset"]
    assert meta["classes"] == ["cat", "dog", "emu"] and meta["preprocess"]["size"] == [8, 8]
    assert s["data"] == f"folder:{root}"
    predictions = load_predictor(tmp_path / "r").predict([root / "test" / "dog" / "0.png"], top_k=2)
    assert predictions[0].top[0][1] in ("cat", "dog", "emu") and len(predictions[0].top) == 2


def test_a_model_of_ones_own_trains_and_reloads_by_import_path_or_module(tmp_path, tiny):
    # model_args (none here) are what the import path is called with, besides num_classes and in_channels
    s = fit(TrainConfig(**{**FAST, "model_args": {}}), tmp_path / "r", dataset=tiny, model=TinyNet())
    assert s["model"] == "test_lifecycle:TinyNet"
    rebuilt, state = load_model(tmp_path / "r")  # by the recorded import path
    given, _ = load_model(tmp_path / "r", model=TinyNet())  # from Python: the module itself
    assert isinstance(rebuilt, TinyNet) and torch.equal(rebuilt.head.weight, state["model"]["head.weight"])
    assert torch.equal(given.head.weight, rebuilt.head.weight)


def test_accumulating_k_pieces_equals_a_k_times_larger_batch(tmp_path, tiny):
    common = dict(model="mlp", model_args={"hidden": [16]}, epochs=1, optimizer="sgd", schedule="constant",
                  val_split=0)
    fit(TrainConfig(batch_size=64, **common), tmp_path / "big", dataset=tiny)
    fit(TrainConfig(batch_size=16, accumulate=4, **common), tmp_path / "acc", dataset=tiny)
    a, b = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("big", "acc"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("augment", ["none", "flip,crop:2"])
def test_a_run_killed_mid_epoch_resumes_bit_exactly_from_its_step_checkpoint(tmp_path, tiny, augment):
    cfg = TrainConfig(checkpoint_every="5", augment=augment, **FAST)
    fit(cfg, tmp_path / "a", dataset=tiny)
    assert fit(cfg, tmp_path / "b", dataset=tiny, stop_after_step=12) == {"interrupted_after_step": 12}
    assert load_checkpoint(tmp_path / "b" / "last.pt", training=True)["batch_in_epoch"] == 10
    lines = []
    # a runtime setting may change on resume (threads would too, but would change float summation order)
    fit(cfg.updated({"eval_batch_size": 64}), tmp_path / "b", dataset=tiny, resume=True, log=lines.append)
    assert any("batch 10 of epoch 1" in line for line in lines)
    a, b = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (read_metrics_csv(tmp_path / r / "metrics.csv") for r in ("a", "b"))
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]


def test_ema_is_evaluated_and_saved_beside_the_raw_weights(tmp_path, tiny):
    fit(TrainConfig(ema=0.9, **FAST), tmp_path / "r", dataset=tiny)
    row = read_metrics_csv(tmp_path / "r" / "metrics.csv")[-1]
    assert 0 <= row["ema_test_top1"] <= 1 and row["ema_test_loss"] > 0
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert set(best["ema"]["weights"]) == set(best["model"])
    assert not torch.equal(best["ema"]["weights"]["layers.1.weight"] if "layers.1.weight" in best["model"]
                           else next(iter(best["ema"]["weights"].values())), next(iter(best["model"].values())))


def test_max_steps_limit_batches_and_the_step_log(tmp_path, tiny):
    s = fit(TrainConfig(max_steps=5, limit_batches=3, log_every=2, **FAST), tmp_path / "r", dataset=tiny)
    assert s["steps"] == 5 and s["epochs_run"] == 2
    lines = (tmp_path / "r" / "steps.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,loss,lr" and [int(x.split(",")[0]) for x in lines[1:]] == [2, 4]


def test_a_run_killed_before_its_first_checkpoint_restarts_with_the_same_command(tmp_path, tiny):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(TrainConfig(**FAST).to_json())
    lines = []
    fit(TrainConfig(**FAST), tmp_path / "r", dataset=tiny, log=lines.append)
    assert any("killed before its first checkpoint" in line for line in lines)


def test_epochs_grow_on_extendable_schedules_only(tmp_path, tiny):
    cfg = TrainConfig(schedule="constant", **FAST)
    fit(cfg, tmp_path / "c", dataset=tiny)
    s = fit(cfg.updated({"epochs": 3}), tmp_path / "c", dataset=tiny, resume=True)
    assert s["epochs_run"] == 3 and json.loads((tmp_path / "c" / "config.json").read_text())["epochs"] == 3
    fit(TrainConfig(**FAST), tmp_path / "o", dataset=tiny)
    with pytest.raises(CnnlabError, match="onecycle schedule is shaped by the run's length"):
        fit(TrainConfig(**FAST).updated({"epochs": 3}), tmp_path / "o", dataset=tiny, resume=True)


def test_init_from_keeps_the_body_and_replaces_a_head_of_another_class_count(tmp_path, tiny):
    fit(TrainConfig(**FAST), tmp_path / "src", dataset=tiny)
    five = type(tiny)("five", tiny.train_x, tiny.train_y % 5, tiny.test_x, tiny.test_y % 5, tuple("abcde"),
                      tiny.mean, tiny.std)
    lines = []
    fit(TrainConfig(init_from=str(tmp_path / "src"), **{**FAST, "epochs": 1}), tmp_path / "ft", dataset=five,
        log=lines.append)
    assert any("new head" in line for line in lines)
    with pytest.raises(CnnlabError, match="first mismatched key"):
        fit(TrainConfig(init_from=str(tmp_path / "src"), **{**FAST, "model_args": {"hidden": [8, 8]}}),
            tmp_path / "bad", dataset=tiny)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("bad, message", [
    ({"ema": 1.5}, "EMA decay must be in"), ({"accumulate": 0}, "--accumulate"),
    ({"amp": "fp16", "device": "cpu"}, "needs a CUDA GPU"), ({"checkpoint_every": "10x"}, "checkpoint_every"),
    ({"data": "folder:/no/such/folder"}, "folder"),
])
def test_bad_lifecycle_input_is_one_sentence_and_writes_nothing(tmp_path, tiny, bad, message):
    with pytest.raises(CnnlabError, match=message):
        fit(TrainConfig(**{**FAST, **bad}), tmp_path / "r",
            dataset=None if "data" in bad else tiny)
    assert not (tmp_path / "r").exists()


def test_a_streamed_folder_run_evaluates_like_the_same_folder_in_memory_and_names_the_files(tmp_path):
    from cnnlab.data.folder import load_folder
    from cnnlab.train.evaluation import evaluate_runs, format_top_losses

    root = make_folder(tmp_path / "pics", size=(16, 16), n=8)
    cfg = TrainConfig(model="mlp", data=f"folder:{root}", train_crop="rrc", image_size=12, epochs=1, batch_size=8,
                      workers=0, val_split=0)
    fit(cfg, tmp_path / "run")  # a random resized crop of the files: the folder streams from disk
    streamed = load_folder(root, image_size=12, workers=0, stream=True)
    in_memory = load_folder(root, image_size=12, workers=0, stream=False)
    png = tmp_path / "top.png"
    a = evaluate_runs([tmp_path / "run"], dataset=streamed, top_losses=3, top_losses_png=png, batch_size=5)
    b = evaluate_runs([tmp_path / "run"], dataset=in_memory, top_losses=3)
    assert a["members"][0]["top1"] == b["members"][0]["top1"] and a["samples"] == b["samples"] == 24
    assert torch.equal(a["confusion"], b["confusion"])
    assert [t["index"] for t in a["top_losses"]] == [t["index"] for t in b["top_losses"]]
    for row in a["top_losses"]:  # the file of each row, of the class it is labelled with
        assert row["path"].startswith(str(root / "test" / streamed.classes[row["true"]]))
    assert png.stat().st_size > 0 and a["top_losses"][0]["path"] in format_top_losses(a)


def test_fp16_gradient_scaler_path_trains_saves_its_scale_and_resumes_bit_exactly(tmp_path, tiny, monkeypatch):
    """The CUDA-only fp16 path, exercised on the CPU (torch's CPU autocast and GradScaler run the
    same code): a huge initial scale overflows, those steps are skipped and the scale halves; the
    scale is saved in last.pt and a mid-epoch resume ends on the uninterrupted weights."""
    import cnnlab.train.trainer as trainer

    monkeypatch.setattr(trainer, "check_amp", lambda amp, device: None)
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: real(device, init_scale=2.0 ** 24))
    cfg = TrainConfig(amp="fp16", device="cpu", checkpoint_every="5", **FAST)
    s = fit(cfg, tmp_path / "a", dataset=tiny)
    scaler = load_checkpoint(tmp_path / "a" / "last.pt", training=True)["scaler"]
    assert scaler["scale"] < 2.0 ** 24  # overflowing steps were skipped and the scale came down
    init = load_checkpoint(tmp_path / "a" / "init.pt")["model"]
    final = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    assert any(not torch.equal(init[k], final[k]) for k in init) and s["test_top1"] > 0.2
    assert fit(cfg, tmp_path / "b", dataset=tiny, stop_after_step=12) == {"interrupted_after_step": 12}
    fit(cfg, tmp_path / "b", dataset=tiny, resume=True)
    b = load_checkpoint(tmp_path / "b" / "last.pt", training=True)
    assert b["scaler"]["scale"] == scaler["scale"]
    assert all(torch.equal(final[k], b["model"][k]) for k in final)
