"""Hooks for other parts of cnnlab: layer-list models and adversarial training inside the trainer."""
import json
import sys
import types

import pytest
from torch import nn

from conftest import tiny_dataset

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, evaluate_checkpoint, fit, load_model
from cnnlab.train import checkpoint as ckpt

FAST = dict(batch_size=32, eval_batch_size=64, optimizer="sgd", lr=0.05, schedule="constant")


def test_a_run_built_from_a_layer_list_saves_it_and_reloads_from_the_checkpoint(tmp_path):
    from cnnlab import spec

    layers = [{"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
              {"type": "fc", "num_neurons": 12, "activation": "relu"},
              {"type": "softmax", "num_classes": 10}]
    (tmp_path / "net.json").write_text(json.dumps(layers))
    data = tiny_dataset(n_train=96, n_test=32)
    cfg = TrainConfig(epochs=1, spec=str(tmp_path / "net.json"), **FAST)
    fit(cfg, tmp_path / "r", dataset=data)
    assert json.loads((tmp_path / "r" / "spec.json").read_text()) == spec.load(tmp_path / "net.json")
    for name in ("init.pt", "best.pt", "last.pt"):
        assert ckpt.load_checkpoint(tmp_path / "r" / name)["spec"] == spec.load(tmp_path / "net.json")
    (tmp_path / "net.json").unlink()  # the run no longer needs the file: the layers are in its checkpoints
    model, _ = load_model(tmp_path / "r")
    assert sum(p.numel() for p in model.parameters()) == 28 * 28 * 12 + 12 + 12 * 10 + 10
    assert evaluate_checkpoint(tmp_path / "r", dataset=data)["epoch"] == 1


@pytest.fixture
def attack_module(monkeypatch):
    calls = []
    fake = types.ModuleType("cnnlab.inspect.adversarial")

    def parse_adversarial(spec):
        if not spec.startswith("fgsm:"):
            raise CnnlabError(f"unknown attack {spec!r}")
        return spec

    def make_training_attack(spec, *, mean, std):
        def attack(model, x, y):
            calls.append((spec, mean, std, tuple(x.shape)))
            return (x + 0.01).detach()
        return attack

    fake.parse_adversarial = parse_adversarial
    fake.make_training_attack = make_training_attack
    monkeypatch.setitem(sys.modules, "cnnlab.inspect.adversarial", fake)
    import cnnlab.inspect

    monkeypatch.setattr(cnnlab.inspect, "adversarial", fake, raising=False)
    return calls


def test_adversarial_training_replaces_every_batch_by_the_attack(tmp_path, attack_module):
    data = tiny_dataset(n_train=96, n_test=32)
    fit(TrainConfig(epochs=1, model="mlp", model_args={"hidden": [8]}, adversarial="fgsm:0.1", **FAST),
        tmp_path / "r", dataset=data)
    assert len(attack_module) == 3  # 96 images in batches of 32
    assert attack_module[0][:3] == ("fgsm:0.1", (0.1307,), (0.3081,)) and attack_module[0][3] == (32, 1, 28, 28)
    with pytest.raises(CnnlabError, match="unknown attack"):
        TrainConfig(adversarial="pgd-typo").validate()


class _TwoHeads(nn.Module):
    """A model that, like GoogLeNet, returns (logits, aux_logits) in training."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        self.aux = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        return (self.body(x), self.aux(x)) if self.training else self.body(x)


def test_train_loss_of_a_model_with_auxiliary_heads_excludes_them(tmp_path, monkeypatch):
    from cnnlab.train import build
    from cnnlab.train.metrics import read_metrics_csv

    monkeypatch.setattr(build, "build_model", lambda *args, **kwargs: _TwoHeads())
    monkeypatch.setattr(build, "check_input_size", lambda *args, **kwargs: None)
    fit(TrainConfig(epochs=1, **FAST), tmp_path / "r", dataset=tiny_dataset(n_train=96, n_test=32))
    (row,) = read_metrics_csv(tmp_path / "r" / "metrics.csv")
    assert row["train_loss_with_aux"] > row["train_loss"] > 0  # the aux head adds 0.3 x its loss on top


def test_ranks_may_differ_in_their_data_root_and_threads(monkeypatch):
    from cnnlab.train import distributed

    def gather(out, obj):  # rank 1 keeps its data elsewhere and has more cores
        out[0], out[1] = obj, json.dumps({**json.loads(obj), "data_root": "/other", "threads": 8})

    monkeypatch.setattr(distributed.dist, "all_gather_object", gather)
    distributed.check_same_config(TrainConfig().to_dict(), distributed.Dist(rank=0, world_size=2))
