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
