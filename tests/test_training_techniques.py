"""The training techniques inside the trainer: each does what the lecture says it does."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_dataset

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, fit, precise_bn
from cnnlab.train import trainer as trainer_mod
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.engine import build_model
from cnnlab.train.metrics import read_metrics_csv

SGD = dict(optimizer="sgd", lr=0.05, schedule="constant", batch_size=64)


def weights(path):
    return load_checkpoint(path)["model"]


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch(tmp_path, monkeypatch):
    tiny = tiny_dataset(n_train=512, n_test=100)  # the validation split (0.25 of 512) has 128 images
    val_top1 = iter([0.5, 0.7, 0.6, 0.55, 0.9, 0.9])  # best at epoch 2, then two epochs without a better one
    real = trainer_mod.evaluate

    def scripted(model, loader, **kw):
        result = real(model, loader, **kw)
        if loader.num_samples == 128:
            result["top1"] = next(val_top1)
        return result

    monkeypatch.setattr(trainer_mod, "evaluate", scripted)
    cfg = TrainConfig(epochs=6, val_split=0.25, early_stopping=2, **SGD)
    summary = fit(cfg, tmp_path / "es", dataset=tiny)
    assert summary["stopped_early"] and summary["epochs_run"] == 4 and summary["final_epoch"] == 2
    assert len(read_metrics_csv(tmp_path / "es" / "metrics.csv")) == 4

    val_top1 = iter([0.5, 0.7])
    fit(cfg, tmp_path / "two", dataset=tiny, stop_after_epoch=2)  # the same run, interrupted after epoch 2
    assert same(weights(tmp_path / "es" / "best.pt"), weights(tmp_path / "two" / "last.pt"))


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(CnnlabError, match="--val-split"):  # validation is held out by default; 0 turns it off
        TrainConfig(early_stopping=3, val_split=0).validate()


def test_precise_bn_leaves_population_statistics_of_the_final_weights(tmp_path, tiny):
    cfg = TrainConfig(model="resnet20", epochs=1, precise_bn=True, val_split=0, **SGD)  # all images are training
    fit(cfg, tmp_path / "r", dataset=tiny)
    saved = weights(tmp_path / "r" / "last.pt")
    model = build_model(cfg, 10, (1, 28, 28))
    model.load_state_dict(saved)
    x = ((tiny.train_x.float() / 255 - 0.1307) / 0.3081)
    precise_bn(model, [x[i:i + 256] for i in range(0, len(x), 256)])  # recomputing changes nothing
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert torch.allclose(value, saved[key], atol=1e-5), key


def test_train_only_bn_changes_only_batch_norm_parameters(tmp_path, tiny):
    cfg = TrainConfig(model="resnet20", epochs=1, train_only="bn", **SGD)
    fit(cfg, tmp_path / "r", dataset=tiny)
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg, 10, (1, 28, 28)).state_dict()
    trained = weights(tmp_path / "r" / "last.pt")
    bn_params = [k for k in trained if ".bn" in k and k.endswith(("weight", "bias"))]
    assert bn_params and any(not torch.equal(initial[k], trained[k]) for k in bn_params)
    frozen = [k for k in trained if "conv" in k or k.startswith("fc")]
    assert frozen and all(torch.equal(initial[k], trained[k]) for k in frozen)


def test_tiny_gradient_clip_keeps_the_weights_in_place(tmp_path, tiny):
    fit(TrainConfig(epochs=1, grad_clip=1e-9, **SGD), tmp_path / "clip", dataset=tiny)
    torch.manual_seed(0)
    initial = build_model(TrainConfig(), 10, (1, 28, 28)).state_dict()
    trained = weights(tmp_path / "clip" / "last.pt")
    assert all(torch.allclose(initial[k], trained[k], atol=1e-6) for k in initial)


def test_explicit_l2_term_shrinks_the_weights(tmp_path, tiny):
    fit(TrainConfig(epochs=2, **SGD), tmp_path / "plain", dataset=tiny)
    fit(TrainConfig(epochs=2, l2=0.05, **SGD), tmp_path / "l2", dataset=tiny)
    norm = lambda w: sum(v.pow(2).sum() for k, v in w.items() if k.endswith("weight"))
    assert norm(weights(tmp_path / "l2" / "last.pt")) < norm(weights(tmp_path / "plain" / "last.pt"))


@pytest.mark.parametrize("extra", [
    {"augment": "crop:2,cutout:6"}, {"augment": "mixup:0.4"}, {"label_smoothing": 0.1},
    {"amp": "bf16"}, {"optimizer": "rmsprop", "lr": 1e-3}, {"schedule": "cosine", "warmup": 1.0},
    {"optimizer": "sgd", "momentum_ramp": 0.95, "schedule": "constant", "lr": 0.05},
])
def test_each_technique_trains_and_logs_lr_and_momentum(tmp_path, tiny, extra):
    summary = fit(TrainConfig(epochs=2, **extra), tmp_path / "r", dataset=tiny)
    rows = read_metrics_csv(tmp_path / "r" / "metrics.csv")
    assert all(r["lr"] > 0 and r["momentum"] > 0 for r in rows)  # logged each epoch
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and summary["test_top1"] > 0.1


def test_resume_is_bit_exact_with_augmentation_and_a_schedule(tmp_path, tiny):
    cfg = TrainConfig(epochs=3, augment="crop:2,cutout:6,mixup:0.3", schedule="cosine", warmup=1.0, batch_size=64)
    fit(cfg, tmp_path / "a", dataset=tiny)
    fit(cfg, tmp_path / "b", dataset=tiny, stop_after_epoch=2)
    fit(cfg, tmp_path / "b", dataset=tiny, resume=True)
    assert same(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))


def test_dropout_flag_reaches_models_with_dropout_and_is_refused_elsewhere(tmp_path, tiny):
    model = build_model(TrainConfig(model="mlp", dropout=0.3), 10, (1, 28, 28))
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.3 for m in model.modules())
    with pytest.raises(CnnlabError, match="has no dropout"):
        build_model(TrainConfig(model="lenet5", dropout=0.3), 10, (1, 28, 28))


def test_yaml_config_with_a_flag_on_top(tmp_path, data_root, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nlr: 0.002\noptimizer: sgd\nschedule: constant\naugment: crop:2\n")
    assert main(["train", "--config", str(recipe), "--lr", "0.01", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr"] == 0.01 and saved["optimizer"] == "sgd" and saved["augment"] == "crop:2"


@pytest.mark.parametrize("text, message", [
    ("learning_rate: 0.1\n", "unknown config key 'learning_rate'"),
    ("epochs: many\n", "config key 'epochs' needs an integer"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("epochs: [1\n", "is not valid YAML"),
])
def test_bad_yaml_configs_name_the_key(tmp_path, data_root, capsys, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--augment", "crop:-1"], "crop pad"), (["--augment", "flipp"], "unknown augmentation"),
    (["--val-split", "1.5"], "val_split must be in"), (["--schedule", "step", "--gamma", "0"], "gamma"),
    (["--warmup", "5"], "warmup"), (["--train-only", "conv"], "unknown --train-only"),
])
def test_bad_technique_options_are_one_line(tmp_path, data_root, capsys, argv, message):
    assert main(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, data_root):
    # --val-split 0: the whole (even-sized) training set, so that no tail image is dropped for two processes
    flags = ["--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--schedule", "constant", "--batch-size", "64",
             "--no-channels-last", "--no-progress", "--val-split", "0"]
    one = subprocess.run([sys.executable, "-m", "cnnlab", "train", *flags, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "cnnlab", "train", *flags, "--nproc", "2", "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)  # up to summation order
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert sb["processes"] == 2 and sa["test_top1"] == sb["test_top1"]


def test_tensorboard_flag_writes_events_or_says_what_to_install(tmp_path, tiny):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(CnnlabError, match="pip install tensorboard"):
            fit(TrainConfig(epochs=1, tensorboard=True), tmp_path / "r", dataset=tiny)
    else:
        fit(TrainConfig(epochs=1, tensorboard=True), tmp_path / "r", dataset=tiny)
        assert list((tmp_path / "r" / "tensorboard").iterdir())


@pytest.mark.slow
def test_compile_trains_and_reports_compile_time_separately(tmp_path, tiny):
    summary = fit(TrainConfig(epochs=1, compile=True), tmp_path / "r", dataset=tiny)
    assert summary["compile_seconds"] is not None and summary["compile_seconds"] > 0


def test_ranks_that_disagree_on_the_config_are_refused_with_the_keys(monkeypatch):
    from cnnlab.train import distributed

    def gather(out, obj):  # what rank 1 would send back: another learning rate
        out[0], out[1] = obj, json.dumps({**json.loads(obj), "lr": 0.5})

    monkeypatch.setattr(distributed.dist, "all_gather_object", gather)
    with pytest.raises(CnnlabError, match="rank 1 differs from rank 0 in lr"):
        distributed.check_same_config(TrainConfig().to_dict(), distributed.Dist(rank=0, world_size=2))
    distributed.check_same_config(TrainConfig().to_dict(), distributed.SINGLE)  # one process: nothing to check
