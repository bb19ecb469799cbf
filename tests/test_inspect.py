"""cnnlab.inspect: summaries, the zoo table, the input-size check, BatchNorm folding and the
weight-sharing matrix, on small generated networks and, where registered, on the zoo's models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab import inspect, models, shapes
from cnnlab.errors import CnnlabError
from cnnlab.inspect import check_input_size, conv_bias_vector, conv_matrix, fold_bn, summary

# --- small networks ----------------------------------------------------------------------------


class Inception(nn.Module):
    """Two branches concatenated, a residual addition and a squeeze-and-excitation style scale."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch1 = nn.Conv2d(8, 4, 1)
        self.branch3 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.gate = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)  # RF 3
        y = torch.cat([self.branch1(x), self.branch3(x)], dim=1)  # widest branch: RF 3 + 2 + 2 = 7
        y = y + x  # residual: still 7
        scale = torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))  # whole map, but broadcast
        y = y * scale  # the main path keeps RF 7
        return self.head(y.mean((2, 3)))  # global pooling: the whole (padded) map


class WithAux(nn.Module):
    """An auxiliary head used only in training, as in GoogLeNet."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        self.aux = nn.Linear(4, 3)

    def forward(self, x):
        out = self.body(x)
        return (out, self.aux(out.new_zeros(out.shape[0], 4))) if self.training else out


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial statistics and affine parameters, so that folding has something to fold."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- summary -----------------------------------------------------------------------------------


def test_lenet5_summary_rows_shapes_params_macs_and_receptive_fields():
    s = summary(models.create("lenet5"), (1, 28, 28))
    rows = {r.name: r for r in s.rows}
    assert rows["features.0"].output_shape == (1, 6, 28, 28)
    assert rows["features.5"].output_shape == (1, 16, 5, 5)
    assert rows["classifier.4"].output_shape == (1, 10)
    assert rows["features.0"].params == shapes.conv_params(5, 1, 6)
    # A conv's MACs: one F^2 C_in dot product per output value.
    assert rows["features.0"].macs == 6 * 28 * 28 * (5 * 5 * 1)
    assert rows["features.3"].macs == 16 * 10 * 10 * (5 * 5 * 6)
    assert rows["classifier.0"].macs == 400 * 120
    assert rows["features.1"].macs == 0  # ReLU: no multiply-accumulates
    assert rows["features.3"].receptive_field == (shapes.receptive_field([(5, 1), (2, 2), (5, 1)]),) * 2
    assert rows["features.5"].receptive_field == (16, 16)
    # All 5x5 positions, 4 apart, see 16 + 4 * 4 = 32 pixels: more than the 28x28 input, so clipped.
    assert rows["classifier.0"].receptive_field == (28, 28)
    assert s.field_text(rows["classifier.0"]) == "whole input" and s.field_text(rows["features.5"]) == "16x16"
    assert s.total_params == s.trainable_params == 61_706 == sum(r.params for r in s.rows)
    assert s.macs == sum(r.macs for r in s.rows)
    assert s.params_by_type == {"Linear": 59_134, "Conv2d": 2_572}
    assert s.output_shape == (1, 10)


def test_summary_follows_the_main_path_through_branches():
    s = summary(Inception(), (3, 16, 16))
    rows = {r.name: r for r in s.rows}
    assert rows["branch1"].receptive_field == (3, 3)
    assert rows["branch3.1"].receptive_field == (7, 7)
    assert rows["gate"].receptive_field == (16, 16)  # global mean of the 16x16 map: 7 + 15, clipped
    assert rows["head"].receptive_field == (16, 16)
    assert [r.name for r in s.rows] == ["stem", "branch1", "branch3.0", "branch3.1", "gate", "head"]


def test_summary_macs_scale_with_the_batch_and_the_model_is_left_as_it_was():
    model = models.create("lenet5")
    model.train()
    one = summary(model, "1x28x28")
    four = summary(model, "1x28x28", batch_size=4)
    assert four.macs == 4 * one.macs
    assert four.rows[0].output_shape == (4, 6, 28, 28)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_summary_lists_layers_that_do_not_run_in_eval_mode():
    s = summary(WithAux(), (1, 8, 8))
    aux = [r for r in s.rows if r.name == "aux"]
    assert aux and aux[0].output_shape is None and aux[0].params == 4 * 3 + 3
    assert sum(r.params for r in s.rows) == s.total_params


def test_summary_counts_a_reused_layers_parameters_once():
    relu_conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), relu_conv, relu_conv)
    s = summary(model, (1, 8, 8))  # 8 > the field of 7
    assert [r.name for r in s.rows] == ["0", "1", "1"]
    assert [r.params for r in s.rows] == [40, 148, 0]
    assert s.rows[1].macs == s.rows[2].macs > 0
    assert s.rows[2].receptive_field == (7, 7)


def test_summary_table_prints_every_layer_and_the_totals():
    text = str(summary(models.create("lenet5"), (1, 28, 28)))
    assert "features.0" in text and "Conv2d" in text and "1x6x28x28" in text
    assert "Total params: 61,706" in text
    assert "Linear 59,134 (96%), Conv2d 2,572 (4%)" in text


def test_format_table_aligns_numbers_right_and_text_left():
    lines = inspect.format_table([["a", 1234, None], ["bbb", 5, "x"]], ["name", "n", "note"]).splitlines()
    assert lines[0] == "name      n  note"
    assert lines[2] == "a     1,234  -"
    assert lines[3] == "bbb       5  x"


def test_summary_refuses_a_too_small_input_and_a_malformed_size():
    with pytest.raises(CnnlabError, match="too small.*features.3 \\(Conv2d\\)"):
        summary(models.create("lenet5"), (1, 4, 4))
    with pytest.raises(CnnlabError, match="3x224x224.*'3by224'"):
        summary(models.create("lenet5"), "3by224")
    with pytest.raises(CnnlabError, match="received \\(1, 0, 28\\)"):
        summary(models.create("lenet5"), (1, 0, 28))


@pytest.mark.parametrize(
    ("name", "split"),
    [
        # Ryu, ch. 3, "Linear layers have too many parameters".
        ("alexnet", {"Conv2d": 2_469_696, "Linear": 58_631_144}),
        ("vgg19", {"Conv2d": 20_024_384, "Linear": 123_642_856}),
    ],
)
def test_summary_shows_the_lectures_conv_linear_split(name, split):
    if name not in models.names(aliases=True):
        pytest.skip(f"{name} is not registered yet")
    entry = models.info(name)
    with torch.device("meta"):
        model = models.create(name)
    s = summary(model, entry.input_size)
    assert s.params_by_type == split
    assert s.total_params == sum(split.values())


def test_zoo_table_rows_hold_the_registry_metadata_and_the_counts():
    rows = inspect.zoo_table(["mlp", "lenet5"])
    assert [r.name for r in rows] == ["mlp", "lenet5"]  # oldest first
    lenet = rows[1]
    assert (lenet.family, lenet.year, lenet.input_size) == ("LeNet", 1998, (1, 28, 28))
    assert lenet.published == 61_706 and lenet.aux_params == 0
    assert (lenet.params, lenet.macs) == (61_706, 416_520)
    assert rows[0].macs == rows[0].params - 512 - 256 - 10  # an MLP: one MAC per weight
    text = inspect.format_zoo(rows)
    assert "lenet5" in text and "1998" in text and "61,706" in text
    assert text.splitlines()[0].split()[:2] == ["Model", "Aliases"]


@pytest.mark.slow
def test_zoo_table_lists_every_model_with_its_counts():
    rows = inspect.zoo_table()
    assert sorted(r.name for r in rows) == models.names()
    lenet = next(r for r in rows if r.name == "lenet5")
    assert (lenet.params, lenet.macs) == (61_706, 416_520)
    for r in rows:
        assert r.macs is None or r.macs > 0
        if r.published is not None:
            assert r.params == r.published, r.name
    text = inspect.format_zoo(rows)
    assert "lenet5" in text and "1998" in text and "61,706" in text


# --- the input-size check ----------------------------------------------------------------------


def test_check_names_the_layer_where_lenet5_runs_out_of_pixels():
    # 4x4 -> conv pad 2 -> 4x4 -> pool -> 2x2 -> 5x5 conv: nothing left.
    with pytest.raises(CnnlabError) as error:
        check_input_size(models.create("lenet5"), (1, 4, 4), name="lenet5")
    message = str(error.value)
    assert message.startswith("input 1x4x4 is too small for lenet5: at features.3 (Conv2d)")
    assert "would be 0x0" in message and "2x2 input" in message


def test_check_on_a_small_conv_net_and_the_size_it_passes():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(CnnlabError, match="1x5x5 is too small.* at 2 \\(Conv2d\\).* 0x0"):
        check_input_size(net, (1, 5, 5))
    assert check_input_size(net, (1, 10, 10)) == (2, 2)
    with pytest.raises(CnnlabError, match="at 1 \\(MaxPool2d\\).*would be 0x1"):
        check_input_size(net, (1, 3, 4))


def test_check_computes_nothing_on_real_tensors():
    model = models.create("lenet5")
    devices = []
    model.features[0].register_forward_pre_hook(lambda m, args: devices.append(args[0].device.type))
    check_input_size(model, (1, 28, 28))
    assert devices == ["meta"]
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_check_reports_other_shape_errors_with_the_layer_not_a_raw_torch_error():
    with pytest.raises(CnnlabError, match="1x32x32 does not fit lenet5: at classifier.0 \\(Linear\\)"):
        check_input_size("lenet5", (1, 32, 32))
    with pytest.raises(CnnlabError, match="3x28x28 does not fit lenet5: at features.0 \\(Conv2d\\)"):
        check_input_size(models.create("lenet5", in_channels=1), (3, 28, 28), name="lenet5")


def test_check_passes_the_native_input_of_a_registered_name():
    assert check_input_size("lenet5", (1, 28, 28)) == (2, 10)


def test_alexnet_on_mnist_fails_at_a_named_layer():
    if "alexnet" not in models.names():
        pytest.skip("alexnet is not registered yet")
    with pytest.raises(CnnlabError, match="1x28x28 is too small for alexnet: at .* the spatial size would be 0x0"):
        check_input_size("alexnet", (1, 28, 28))


# --- BatchNorm folding -------------------------------------------------------------------------


def conv_bn_relu(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 6), nn.BatchNorm1d(6),
    )
    return randomize_batchnorm(model).to(dtype).eval()


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_folded_conv_bn_relu_net_has_no_batchnorm_and_the_same_outputs(dtype, tol):
    model = conv_bn_relu(dtype)
    folded = fold_bn(model)
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    assert count_batchnorms(folded) == 0 and count_batchnorms(model) == 3
    torch.testing.assert_close(folded(x), model(x), rtol=tol, atol=tol)
    assert folded[0].bias is not None and model[0].bias is None  # the original is untouched
    assert not folded.training


def test_folding_agrees_with_torchs_fusion_utility():
    model = conv_bn_relu(torch.float64)
    reference = torch.nn.utils.fusion.fuse_conv_bn_eval(model[0], model[1])
    folded = fold_bn(model)
    torch.testing.assert_close(folded[0].weight, reference.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(folded[0].bias, reference.bias, rtol=0, atol=1e-12)


class Block(nn.Module):
    """A ResNet-style block: the conv/BN pairs are attributes, paired only by ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.tap = nn.Conv2d(4, 4, 1)  # its output feeds bn3 *and* the sum: not foldable
        self.bn3 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        t = self.tap(x)
        return torch.relu(y + x) + self.bn3(t) + t


def test_folding_follows_the_data_flow_and_skips_a_shared_output():
    model = randomize_batchnorm(Block()).double().eval()
    folded = fold_bn(model)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    assert isinstance(folded.bn3, nn.BatchNorm2d)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so Sequential order is used."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())

    def forward(self, x):
        return self.body(x) if x.sum() > -1e9 else x


def test_folding_falls_back_to_sequential_order_when_tracing_fails():
    model = randomize_batchnorm(Untraceable()).double().eval()
    folded = fold_bn(model)
    assert count_batchnorms(folded) == 0
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("name", "all_folded"),
    [
        ("resnet20", True),
        ("resnet18", True),
        pytest.param("vgg11-bn", True, marks=pytest.mark.slow),
        pytest.param("densenet121", False, marks=pytest.mark.slow),  # BN-ReLU-conv: mostly not foldable
    ],
)
def test_folding_registered_models_keeps_their_outputs(name, all_folded):
    if name not in models.names(aliases=True):
        pytest.skip(f"{name} is not registered yet")
    torch.manual_seed(0)
    model = randomize_batchnorm(models.create(name, num_classes=5)).double().eval()
    folded = fold_bn(model)
    assert count_batchnorms(folded) < count_batchnorms(model)
    if all_folded:
        assert count_batchnorms(folded) == 0
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


# --- the weight-sharing matrix -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv2d(1, 1, 3), (1, 5, 5)),
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 6)),
        (nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)), (2, 6, 7)),
        (nn.Conv2d(4, 6, 3, groups=2, padding=1, bias=False), (4, 5, 5)),
        # An even kernel with padding="same" pads unevenly; torch warns that it copies the input.
        pytest.param(nn.Conv2d(2, 2, 4, padding="same"), (2, 5, 5), marks=pytest.mark.filterwarnings(
            "ignore:Using padding='same' with even kernel lengths:UserWarning")),
        (nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 9)),
    ],
)
def test_conv_matrix_times_the_flat_input_is_the_convolution(conv, shape):
    torch.manual_seed(0)
    conv = conv.double()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        A = conv_matrix(conv, shape)
        expected = conv(x.unsqueeze(0)).flatten()
    torch.testing.assert_close(A @ x.flatten() + conv_bias_vector(conv, shape), expected)
    assert A.shape == (expected.numel(), x.numel())


def test_conv_matrix_has_the_lectures_shifted_rows():
    # Ryu's ch. 3 A_w: each row is the filter w_1..w_r shifted one column to the right.
    conv = nn.Conv1d(1, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0]]]))
        A = conv_matrix(conv, (1, 6))
    expected = torch.tensor([
        [1.0, 2.0, 3.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 2.0, 3.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 2.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 1.0, 2.0, 3.0],
    ])
    assert torch.equal(A, expected)


def test_conv_matrix_shares_the_weights():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        A = conv_matrix(conv, (2, 6, 6))
    # Every nonzero entry is one of the 3*2*3*3 weights, each reused at all 4x4 output positions.
    assert torch.count_nonzero(A) == conv.weight.numel() * 4 * 4
    assert set(A[A != 0].tolist()) == set(conv.weight.flatten().tolist())


def test_conv_matrix_is_differentiable_in_the_weights():
    conv = nn.Conv2d(1, 2, 3)
    conv_matrix(conv, (1, 4, 4)).sum().backward()
    # Each weight appears once per output position (2x2 of them).
    torch.testing.assert_close(conv.weight.grad, torch.full_like(conv.weight, 4.0))


def test_conv_matrix_refuses_other_layers_and_wrong_shapes():
    with pytest.raises(CnnlabError, match="received Linear"):
        conv_matrix(nn.Linear(3, 3), (3,))
    with pytest.raises(CnnlabError, match="C_in=3; received input_shape=\\(2, 5, 5\\)"):
        conv_matrix(nn.Conv2d(3, 1, 3), (2, 5, 5))
    with pytest.raises(CnnlabError, match="does not fit"):
        conv_matrix(nn.Conv2d(1, 1, 5), (1, 3, 3))
