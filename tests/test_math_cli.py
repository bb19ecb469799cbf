"""`cnnlab shapes`, `cnnlab pool` and `cnnlab gradcheck`: the lecture's numbers from the command line."""
from __future__ import annotations

import textwrap

from cnnlab.cli import main


def test_conv_that_does_not_fit_says_so_and_suggests_padding(capsys):
    assert main(["shapes", "conv", "--input", "7", "--kernel", "3", "--stride", "3"]) == 0
    out = capsys.readouterr().out
    assert "floor((7 - 3 + 2*0) / 3) + 1 = 2" in out
    assert "don't fit" in out and "padding 1 would make it fit" in out


def test_conv_with_padding_fits(capsys):
    assert main(["shapes", "conv", "--input", "7", "--kernel", "3", "--stride", "3", "--padding", "1"]) == 0
    out = capsys.readouterr().out
    assert "= 3" in out and out.splitlines()[1].startswith("fits")


def test_bad_conv_numbers_are_one_line_errors(capsys):
    assert main(["shapes", "conv", "--input", "7", "--kernel", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_receptive_field_of_two_and_three_3x3_convs(capsys):
    assert main(["shapes", "rf", "3,1", "3,1"]) == 0
    assert "sees 5x5" in capsys.readouterr().out
    assert main(["shapes", "rf", "3,1", "3,1", "3,1"]) == 0
    assert "sees 7x7" in capsys.readouterr().out
    assert main(["shapes", "rf", "11,4", "3,2"]) == 0  # AlexNet conv1 and its overlapping pool
    assert "sees 19x19" in capsys.readouterr().out
    assert main(["shapes", "rf", "3"]) == 2


def test_pool_example_gives_the_lecture_numbers(capsys):
    assert main(["pool", "--example"]) == 0
    out = capsys.readouterr().out
    max_part = out.split("max pool")[1].split("average")[0].split()
    assert max_part[-4:] == ["6", "8", "3", "4"]
    assert out.split("average pool")[1].split()[-4:] == ["3.25", "5.25", "2", "2"]


def test_pool_of_any_matrix_and_bad_matrices(capsys):
    assert main(["pool", "--matrix", "1,2,3;4,5,6;7,8,9", "--kernel", "2", "--stride", "1"]) == 0
    assert capsys.readouterr().out.split("average pool")[1].split()[-4:] == ["3", "4", "6", "7"]
    assert main(["pool", "--matrix", "1,2;3"]) == 2
    assert main(["pool"]) == 2


GOOD = '''
import torch
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g
class WrongSquare(Square):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return x * g
class Mul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, g * a
'''


def test_gradcheck_passes_a_right_backward_and_fails_a_wrong_one(tmp_path, capsys):
    f = tmp_path / "layer.py"
    f.write_text(textwrap.dedent(GOOD))
    assert main(["gradcheck", f"{f}:Square"]) == 0
    assert capsys.readouterr().out.startswith("PASS")
    assert main(["gradcheck", f"{f}:WrongSquare"]) == 1
    assert capsys.readouterr().out.startswith("FAIL backward differs")
    assert main(["gradcheck", f"{f}:Mul", "--shape", "2,3", "--shape", "2,3"]) == 0


def test_gradcheck_bad_targets_are_one_line_errors(tmp_path, capsys):
    f = tmp_path / "layer.py"
    f.write_text(textwrap.dedent(GOOD))
    assert main(["gradcheck", f"{f}:Nope"]) == 2
    assert "it has: Square, WrongSquare, Mul" in capsys.readouterr().err
    assert main(["gradcheck", str(tmp_path / "missing.py:X")]) == 2
    assert main(["gradcheck", "layer.py"]) == 2
