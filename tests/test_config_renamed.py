"""Renamed config keys: the new name reads well as a flag, the old one is still read from recipes and runs."""
from __future__ import annotations

import json

import pytest

from cnnlab.cli import build_parser, main
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, fit
from cnnlab.train.config import upgrade_keys

from conftest import tiny_dataset


def test_bias_bn_decay_is_on_by_default_and_the_old_key_maps_to_its_negation():
    assert TrainConfig().bias_bn_decay is True
    assert TrainConfig().updated({"no_decay_bias_bn": True}).bias_bn_decay is False
    assert TrainConfig().updated({"no-decay-bias-bn": "false"}).bias_bn_decay is True
    assert TrainConfig().updated({"no_decay_bias_bn": True, "bias_bn_decay": False}).bias_bn_decay is False
    with pytest.raises(CnnlabError, match="disagree"):
        TrainConfig().updated({"no_decay_bias_bn": True, "bias_bn_decay": True})
    assert "no_decay_bias_bn" not in TrainConfig().to_dict()


def test_the_flag_reads_well_in_the_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--bias-bn-decay, --no-bias-bn-decay" in help_text and "no-no-" not in help_text
    ns = build_parser().parse_args(["train", "--no-bias-bn-decay"])
    assert ns.bias_bn_decay is False


def test_old_recipes_still_load(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model: lenet5\nweight_decay: 0.0005\nno_decay_bias_bn: true\n")
    from cnnlab.train.config import load_config_file

    assert TrainConfig().updated(load_config_file(recipe)).validate().bias_bn_decay is False


def test_an_older_run_with_the_old_key_still_resumes(tmp_path):
    out = tmp_path / "run"
    fit(TrainConfig(epochs=1, batch_size=64, limit_batches=2, bias_bn_decay=False), out,
        dataset=tiny_dataset(n_train=128, n_test=32))
    values = json.loads((out / "config.json").read_text())
    values["no_decay_bias_bn"] = not values.pop("bias_bn_decay")  # config.json as an older cnnlab wrote it
    (out / "config.json").write_text(json.dumps(values))
    from cnnlab.train.restore import read_resume_state, resume_config

    read_resume_state(out)  # config.json (old key) and last.pt (new key) agree
    assert resume_config(out).bias_bn_decay is False
    assert upgrade_keys({"no_decay_bias_bn": True, "lr": 0.1}) == {"bias_bn_decay": False, "lr": 0.1}
