"""Every command's --help renders (a stray '%' in a help text breaks argparse's formatting)."""
import pytest

from cnnlab.cli import build_parser, main


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "inspect", "lab", "experiment", "speedrun", "predict", "export", "report"):
        assert name in out


@pytest.mark.parametrize("command", _commands())
def test_each_command_help_renders(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: cnnlab " + command in capsys.readouterr().out


def test_train_into_a_log_file_prints_epoch_lines_not_a_progress_bar(tmp_path, data_root, capsys):
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()  # not a terminal, as when redirected to a log
    assert "\r" not in captured.err
    assert "epoch 1 |" in captured.err and "after 1 epoch," in captured.out + captured.err


def test_default_run_directories_are_named_without_paths():
    from cnnlab.cli import _run_name
    from cnnlab.train import TrainConfig

    assert _run_name(TrainConfig()) == "lenet5-mnist"
    assert _run_name(TrainConfig(data="folder:/home/me/pets/")) == "lenet5-pets"
    assert _run_name(TrainConfig(spec="specs/convnetjs-mnist.json")) == "convnetjs-mnist-mnist"
