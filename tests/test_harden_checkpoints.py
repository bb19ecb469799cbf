"""Checkpoints that know they are whole; last.pt/best.pt consistent under a kill; the guard."""
import random

import pytest
import torch

from conftest import tiny_dataset

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, TrainingDiverged, evaluate_checkpoint, fit, load_model
from cnnlab.train import checkpoint as ckpt
from cnnlab.train import trainer as trainer_mod
from cnnlab.train.guard import DivergenceGuard
from cnnlab.train.metrics import read_metrics_csv

MLP = dict(model="mlp", model_args={"hidden": [16]}, batch_size=32, eval_batch_size=64, optimizer="sgd", lr=0.05,
           schedule="constant")


@pytest.fixture(scope="module")
def small():
    return tiny_dataset(n_train=128, n_test=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small):
    out = tmp_path_factory.mktemp("run") / "r"
    fit(TrainConfig(epochs=1, **MLP), out, dataset=small)
    return out


def weights(path):
    return ckpt.load_checkpoint(path)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_bit_flip_is_refused_or_changes_nothing(trained, tmp_path):
    blob = bytearray((trained / "last.pt").read_bytes())
    reference = ckpt.content_digest({k: v for k, v in torch.load(trained / "last.pt", weights_only=True).items()
                                     if k != "sha256"})
    rng = random.Random(0)
    refused = 0
    for i in range(40):
        flipped = bytearray(blob)
        pos = rng.randrange(len(flipped))
        flipped[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / f"f{i}.pt"
        path.write_bytes(bytes(flipped))
        try:
            state = ckpt.load_checkpoint(path, training=True)
        except CnnlabError as e:
            assert "\n" not in str(e)
            refused += 1
        else:  # a flip in bytes torch never reads (zip headers, padding): the content is the original
            assert ckpt.content_digest(state) == reference
    assert refused > 0


def test_a_flipped_weight_bit_is_refused_by_eval(trained, tmp_path):
    state = torch.load(trained / "best.pt", weights_only=True)
    state["model"]["net.1.weight" if "net.1.weight" in state["model"] else next(iter(state["model"]))].view(-1)[3] += 1.0
    torch.save(state, tmp_path / "tampered.pt")  # keeps the old sha256
    with pytest.raises(CnnlabError, match="does not match the sha256"):
        load_model(tmp_path / "tampered.pt")


def test_non_finite_weights_are_refused_on_save_and_on_load(trained, tmp_path):
    state = ckpt.load_checkpoint(trained / "best.pt")
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name].clone().fill_(float("nan"))
    with pytest.raises(CnnlabError, match="NaN or infinity"):
        ckpt.save_checkpoint(tmp_path / "nan.pt", state)
    assert not (tmp_path / "nan.pt").exists()
    torch.save({"format": ckpt.FORMAT, **state}, tmp_path / "nan.pt")  # written by hand, no digest
    with pytest.raises(CnnlabError, match="non-finite weights"):
        load_model(tmp_path / "nan.pt")


@pytest.mark.parametrize("drop, message", [
    ("config", "the key 'config' is missing"), ("dataset", "the key 'dataset' is missing"),
    ("model", "the key 'model' is missing"),
])
def test_a_malformed_checkpoint_names_its_first_problem_in_one_line(trained, tmp_path, drop, message):
    state = ckpt.load_checkpoint(trained / "best.pt")
    del state[drop]
    torch.save({"format": ckpt.FORMAT, **state}, tmp_path / "bad.pt")
    with pytest.raises(CnnlabError, match=message) as e:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(e.value)


def test_a_model_only_checkpoint_loads_and_init_pt_holds_the_initial_weights(trained, tmp_path, small):
    best = ckpt.load_checkpoint(trained / "best.pt")
    ckpt.save_checkpoint(tmp_path / "eval.pt", {k: best[k] for k in ("model", "config", "dataset", "epoch")})
    model, state = load_model(tmp_path / "eval.pt")
    assert state["epoch"] == 1 and same(model.state_dict(), best["model"])
    init_model, init_state = load_model(trained / "init.pt")
    torch.manual_seed(0)
    from cnnlab.train.engine import build_model

    fresh = build_model(TrainConfig(**MLP), 10, (1, 28, 28))
    assert init_state["epoch"] == 0 and same(init_model.state_dict(), fresh.state_dict())


def test_evaluation_normalizes_with_the_checkpoints_mean_and_std(trained, small):
    plain = evaluate_checkpoint(trained, dataset=small)
    other = tiny_dataset(n_train=128, n_test=64)
    other.mean, other.std = (0.9,), (0.05,)  # a dataset object with other statistics, the same images
    assert evaluate_checkpoint(trained, dataset=other)["test_loss"] == plain["test_loss"]


def scripted_evaluate(monkeypatch, test_top1):
    from cnnlab.train.engine import evaluate as real
    values = iter(test_top1)

    def scripted(model, loader, **kw):
        result = real(model, loader, **kw)
        result["top1"] = next(values)
        return result

    monkeypatch.setattr(trainer_mod, "evaluate", scripted)


def test_a_kill_between_the_best_and_last_writes_resumes_with_the_right_best(tmp_path, small, monkeypatch):
    cfg = TrainConfig(epochs=3, val_split=0, **MLP)  # best.pt chosen on the (scripted) test accuracy
    scripted_evaluate(monkeypatch, [0.5, 0.7, 0.6])
    fit(cfg, tmp_path / "a", dataset=small)

    scripted_evaluate(monkeypatch, [0.5, 0.7, 0.7, 0.6])
    real_save = ckpt.save_checkpoint

    class Killed(BaseException):
        pass

    def save(path, state):
        if path.name == "last.pt" and state["epoch"] == 2:
            raise Killed()  # the process dies after best.pt (epoch 2), before last.pt
        real_save(path, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    with pytest.raises(Killed):
        fit(cfg, tmp_path / "b", dataset=small)
    assert ckpt.load_checkpoint(tmp_path / "b" / "best.pt")["epoch"] == 2
    assert ckpt.load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    lines = []
    fit(cfg, tmp_path / "b", dataset=small, resume=True, log=lines.append)
    assert any("repaired" in line for line in lines)
    best_a, best_b = ckpt.load_checkpoint(tmp_path / "a" / "best.pt"), ckpt.load_checkpoint(tmp_path / "b" / "best.pt")
    assert best_a["epoch"] == best_b["epoch"] == 2 and same(best_a["model"], best_b["model"])


def test_patience_running_out_on_the_last_epoch_restores_the_named_epoch(tmp_path, monkeypatch):
    data = tiny_dataset(n_train=160, n_test=64)  # validation: 40 images
    cfg = TrainConfig(epochs=3, val_split=0.25, early_stopping=2, **MLP)
    real = trainer_mod.evaluate
    val = iter([0.7, 0.5, 0.4, 0.9])

    def scripted(model, loader, **kw):
        result = real(model, loader, **kw)
        if loader.num_samples == 40:
            result["top1"] = next(val)
        return result

    monkeypatch.setattr(trainer_mod, "evaluate", scripted)
    summary = fit(cfg, tmp_path / "es", dataset=data)
    assert summary["stopped_early"] and summary["epochs_run"] == 3 and summary["final_epoch"] == 1
    val = iter([0.7])
    fit(cfg, tmp_path / "one", dataset=data, stop_after_epoch=1)
    assert same(weights(tmp_path / "es" / "best.pt"), weights(tmp_path / "one" / "last.pt"))
    assert ckpt.load_checkpoint(tmp_path / "es" / "best.pt")["epoch"] == 1


def test_a_huge_learning_rate_stops_as_diverged_naming_the_lr(tmp_path, small):
    cfg = TrainConfig(epochs=2, **{**MLP, "optimizer": "adam", "lr": 1e6})
    with pytest.raises(TrainingDiverged, match="likely cause: the learning rate") as e:
        fit(cfg, tmp_path / "r", dataset=small)
    assert "step" in str(e.value) and e.value.exit_code == 3
    assert not (tmp_path / "r" / "best.pt").exists()


def test_divergence_from_weight_decay_is_blamed_on_weight_decay(tmp_path, small):
    cfg = TrainConfig(epochs=3, **{**MLP, "lr": 0.5, "weight_decay": 10.0})
    with pytest.raises(TrainingDiverged, match="likely cause: weight decay"):
        fit(cfg, tmp_path / "r", dataset=small)


def test_a_non_finite_test_loss_is_divergence_and_never_becomes_best(tmp_path, small, monkeypatch):
    real = trainer_mod.evaluate
    calls = iter(range(100))

    def poisoned(model, loader, **kw):
        result = real(model, loader, **kw)
        if next(calls) >= 1:  # epoch 2's test evaluation
            result["loss"] = float("nan")
        return result

    monkeypatch.setattr(trainer_mod, "evaluate", poisoned)
    with pytest.raises(TrainingDiverged, match="test loss became nan"):
        fit(TrainConfig(epochs=2, val_split=0, **MLP), tmp_path / "r", dataset=small)  # one evaluation per epoch
    assert ckpt.load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == 1
    assert ckpt.load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1
    assert len(read_metrics_csv(tmp_path / "r" / "metrics.csv")) == 1


def test_the_guard_names_the_first_bad_step_when_it_reads_the_flag_late():
    guard = DivergenceGuard(TrainConfig(), torch.device("cpu"), sync_every=10)
    for step in range(1, 11):
        guard.observe(torch.tensor(float("nan") if step == 7 else 1.0), step)
        if guard.due(step):
            with pytest.raises(TrainingDiverged, match="became nan at step 7"):
                guard.check("epoch 1 of 1", kept="k")
            break
    else:
        pytest.fail("the guard never read its flag")


def test_the_guard_catches_an_exploding_finite_loss_and_ignores_a_wobbling_small_one():
    guard = DivergenceGuard(TrainConfig(diverge_factor=10), torch.device("cpu"))
    for step, value in enumerate([2.3, 1.0, 0.3, 0.01, 0.002, 0.02, 0.003, 0.05], 1):
        guard.observe(torch.tensor(value), step)
        guard.check("epoch 1 of 1", kept="k")  # a small loss wobbling 10x is not divergence
    for step in range(9, 200):
        guard.observe(torch.tensor(1e6), step)
    with pytest.raises(TrainingDiverged, match="exploded"):
        guard.check("epoch 1 of 1", kept="k")


def test_weights_made_non_finite_by_the_last_step_are_caught():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="'weight' holds NaN or infinity"):
        DivergenceGuard(TrainConfig(), torch.device("cpu")).check_weights(model, "the last step", "k")
