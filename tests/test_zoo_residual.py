"""The residual-era zoo: ResNet (v1, v1.5, v2, CIFAR, noshort), ResNeXt, DenseNet, SENet, WRN,
and ``surgery.deepen``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    SqueezeExcite,
    ZeroPadShortcut,
)
from cnnlab.models.resnet import ResNet
from cnnlab.models.resnext import PathsConcatBlock, PathsSumBlock, copy_grouped_weights
from cnnlab.models.surgery import deepen

PUBLISHED = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50-32x4d": 25_028_904,
    "resnext101-32x8d": 88_791_336,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet161": 28_681_000,
    "se-resnet50": 28_088_024,
    "se-resnext50-32x4d": 27_559_896,
}
# The papers round these (millions, second column: He et al. Table 6, Huang et al. Table 2,
# Zagoruyko & Komodakis Table 4); the exact counts are our constructions' at 10 classes.
CIFAR_COUNTS = {
    "resnet20": (269_722, "0.27"),
    "resnet32": (464_154, "0.46"),
    "resnet44": (658_586, "0.66"),
    "resnet56": (853_018, "0.85"),
    "resnet110": (1_727_962, "1.7"),
    "densenet-bc-100-12": (769_162, "0.8"),
    "wrn-28-10": (36_479_194, "36.5"),
}
CIFAR_MODELS = ["resnet18-cifar", "resnet20", "densenet-bc-100-12", "wrn-28-10"]


def meta(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: shapes and counts without memory or init cost."""
    with torch.device("meta"):
        return models.create(name, **kwargs)


def randomize_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_the_published_one(name):
    assert models.count_params(meta(name)) == PUBLISHED[name]
    assert models.info(name).params == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_parameter_counts_are_exact_and_round_to_the_papers(name):
    exact, rounded = CIFAR_COUNTS[name]
    count = models.count_params(meta(name, num_classes=10))
    assert count == exact == models.info(name).params
    digits = len(rounded.split(".")[1])
    assert f"{count / 1e6:.{digits}f}" == rounded


def test_resnet20_option_a_shortcut_has_no_parameters_and_option_b_adds_two_projections():
    # Option A (zero padding) is parameter-free; option B adds a 1x1 conv + BN at the two stage
    # transitions: (16*32 + 2*32) + (32*64 + 2*64) = 2,752 parameters, giving 272,474.
    assert models.count_params(meta("resnet20", shortcut_kind="projection")) == 272_474
    shortcuts = [b.downsample for b in meta("resnet20").modules() if isinstance(b, BasicBlock)]
    assert sum(isinstance(s, ZeroPadShortcut) for s in shortcuts) == 2


def test_zero_pad_shortcut_subsamples_and_appends_zero_channels():
    x = torch.randn(2, 3, 7, 7)
    y = ZeroPadShortcut(3, 5, stride=2)(x)
    assert y.shape == (2, 5, 4, 4)  # same grid as a 3x3/2 conv with padding 1 on 7x7
    torch.testing.assert_close(y[:, :3], x[:, :, ::2, ::2])
    assert torch.all(y[:, 3:] == 0)


def test_v1_strides_the_first_1x1_and_v15_the_3x3():
    v1 = meta("resnet50", version="1").layer2[0]
    v15 = meta("resnet50").layer2[0]  # v1.5 is the default
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert v1.downsample[0].stride == v15.downsample[0].stride == (2, 2)
    assert models.count_params(v1) == models.count_params(v15)


def _leaf_call_order(module: nn.Module, x: torch.Tensor) -> list[type]:
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(type(m)))
             for m in module.modules() if not list(m.children())]
    module(x)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_v2_is_preactivation_bn_relu_before_each_conv_and_a_final_bn_relu(name):
    model = models.create(name, version="2").eval()
    block = model.layer2[1]
    assert isinstance(block, (PreActBasicBlock, PreActBottleneck))
    order = [t for t in _leaf_call_order(block, torch.randn(1, block.bn1.num_features, 4, 4))
             if t in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)]
    convs = order.count(nn.Conv2d)
    assert order == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d] * convs  # nothing after the last conv
    assert isinstance(model.bn_final, nn.BatchNorm2d) and isinstance(model.relu_final, nn.ReLU)
    assert isinstance(model.bn1, nn.Identity)  # the stem leaves BN-ReLU to the first block


def test_v1_block_runs_conv_before_bn_and_relu_after_the_addition():
    block = models.create("resnet18").layer1[0].eval()
    order = [t for t in _leaf_call_order(block, torch.randn(1, 64, 4, 4))
             if t in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)]
    assert order == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_unknown_version_is_refused_with_the_received_value():
    with pytest.raises(CnnlabError, match=r"'3'.*1, 1\.5, 2"):
        meta("resnet50", version="3")
    assert meta("resnet50", version=1.5).version == "1.5"


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["cifar", "mnist"])
def test_cifar_models_run_on_cifar_and_mnist_shapes(name, shape):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=shape[0]).eval()
    with torch.no_grad():
        y = model(torch.randn(1, *shape))
    assert y.shape == (1, 10)
    assert torch.isfinite(y).all()


def test_resnet18_runs_on_a_small_imagenet_sized_input_and_gradients_flow():
    model = models.create("resnet18", num_classes=7)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 7)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnext50-32x4d", "se-resnet50", "densenet121"])
def test_imagenet_bottleneck_models_run_forward(name):
    model = models.create(name).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_resnext_block_forms_a_b_c_compute_the_same_function(train):
    # Form (c), the zoo's grouped bottleneck, 256 -> 32 groups x 4 channels -> 256 (Xie et al.
    # 2017, Fig. 3). Forms (a) and (b) get its weights; per-channel BN slices exactly.
    gen = torch.Generator().manual_seed(0)
    grouped = Bottleneck(256, 128, 256, groups=32)
    randomize_bn(grouped, gen)
    summed, concat = PathsSumBlock(256, cardinality=32, d=4), PathsConcatBlock(256, cardinality=32, d=4)
    copy_grouped_weights(grouped, summed)
    copy_grouped_weights(grouped, concat)
    x = torch.randn(2, 256, 5, 5, generator=gen)
    outputs = [block.train(train)(x) for block in (summed, concat, grouped)]
    torch.testing.assert_close(outputs[0], outputs[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs[1], outputs[2], atol=1e-5, rtol=1e-4)
    assert len(summed.paths) == 32 and grouped.conv2.groups == 32


def test_resnext_grouped_conv_has_the_32x4d_widths():
    block = meta("resnext50-32x4d").layer1[0]
    assert (block.conv2.in_channels, block.conv2.groups) == (128, 32)
    assert meta("resnext101-32x8d").layer4[0].conv2.in_channels == 32 * 8 * 8


def test_squeeze_excite_gates_lie_in_open_unit_interval_and_scale_channels():
    torch.manual_seed(0)
    se = SqueezeExcite(64, ratio=16)
    x = torch.randn(3, 64, 6, 6)
    gates = se.gates(x)
    assert gates.shape == (3, 64, 1, 1)
    assert torch.all(gates > 0) and torch.all(gates < 1)
    torch.testing.assert_close(se(x), x * gates)
    assert se.fc1.out_channels == 4  # the 1x1 bottleneck: 64 / 16


def test_se_ratio_puts_squeeze_excite_in_every_block():
    model = meta("se-resnet50")
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(isinstance(b.se, SqueezeExcite) for b in blocks)
    assert isinstance(meta("resnet18", se_ratio=16).layer1[0].se, SqueezeExcite)
    assert isinstance(meta("resnet18").layer1[0].se, nn.Identity)


def test_noshort_has_no_shortcut_and_a_zero_branch_then_outputs_zero():
    plain = models.create("resnet56", shortcut=False)
    blocks = [m for m in plain.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27 and all(not b.shortcut and b.downsample is None for b in blocks)
    assert models.count_params(plain) == models.count_params(meta("resnet56"))  # option A: free
    x = torch.rand(2, 16, 8, 8)
    for shortcut, expected in ((False, torch.zeros_like(x)), (True, x)):
        block = BasicBlock(16, 16, shortcut=shortcut).eval()
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
        torch.testing.assert_close(block(x), expected)


def test_he_init_and_zero_init_residual():
    torch.manual_seed(0)
    model = models.create("resnet34", zero_init_residual=True)
    conv = model.layer4[1].conv1  # 512 x 512 x 3 x 3
    expected_std = (2 / (conv.out_channels * 9)) ** 0.5  # He, fan_out
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02
    assert torch.all(model.layer1[0].bn1.weight == 1) and torch.all(model.layer1[0].bn1.bias == 0)
    assert all(torch.all(b.bn2.weight == 0) for b in model.modules() if isinstance(b, BasicBlock))
    plain = models.create("resnet34")
    assert all(torch.all(b.bn2.weight == 1) for b in plain.modules() if isinstance(b, BasicBlock))


def test_densenet_grows_by_k_per_layer_and_transitions_halve_channels():
    model = meta("densenet121")
    block = model.features.denseblock1
    assert [layer.conv1.in_channels for layer in block.values()] == [64 + 32 * i for i in range(6)]
    assert block["denselayer1"].conv1.out_channels == 4 * 32  # the 1x1 bottleneck: 4k
    assert model.features.transition1.conv.out_channels == (64 + 6 * 32) // 2
    assert model.classifier.in_features == 1024


def test_state_dict_names_follow_torchvision():
    resnet = meta("resnet50").state_dict()
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
            "layer4.2.bn3.weight", "fc.bias"} <= set(resnet)
    densenet = meta("densenet121").state_dict()
    assert {"features.conv0.weight", "features.denseblock4.denselayer16.conv2.weight",
            "features.transition3.norm.weight", "features.norm5.weight", "classifier.weight"} <= set(densenet)


def test_wrn_has_wide_preactivation_blocks_and_optional_dropout():
    model = meta("wrn-28-10", dropout=0.3)
    blocks = [m for m in model.modules() if isinstance(m, PreActBasicBlock)]
    assert len(blocks) == 12 and blocks[0].conv1.out_channels == 160 and blocks[-1].conv2.out_channels == 640
    assert all(isinstance(b.dropout, nn.Dropout) and b.dropout.p == 0.3 for b in blocks)
    assert isinstance(meta("wrn-28-10").layer1[0].dropout, nn.Identity)
    with pytest.raises(CnnlabError, match="depth=27"):
        meta("wrn-28-10", depth=27)


def test_dropout_outside_preactivation_basic_blocks_is_refused():
    with pytest.raises(CnnlabError, match="dropout=0.5"):
        ResNet(block="basic", layers=[1], widths=[8], dropout=0.5)


@pytest.mark.parametrize(
    ("source", "target", "shape", "kwargs"),
    [
        ("resnet18", "resnet34", (3, 32, 32), {}),
        ("resnet18", "resnet34", (3, 32, 32), {"version": "2"}),
        ("resnet20", "resnet56", (1, 28, 28), {"in_channels": 1}),
    ],
    ids=["resnet18-34", "resnet18-34-v2", "resnet20-56-mnist"],
)
def test_deepen_embeds_the_trained_network_exactly(source, target, shape, kwargs):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    small = models.create(source, num_classes=10, **kwargs)
    randomize_bn(small, gen)  # as if trained: non-trivial running statistics
    small.eval()
    big = deepen(small, target)
    assert not big.training
    assert [len(s) for s in big.stages()] == [len(s) for s in models.create(target).stages()]
    assert models.count_params(big) > models.count_params(small)
    x = torch.randn(2, *shape, generator=gen)
    with torch.no_grad():
        assert torch.equal(big(x), small(x))


def test_deepen_leaves_the_added_blocks_trainable():
    small = models.create("resnet20")
    big = deepen(small, "resnet32")
    added = big.layer1[4]
    assert torch.all(added.bn2.weight == 0) and added.conv1.weight.abs().sum() > 0


@pytest.mark.parametrize(
    ("source", "kwargs", "target", "message"),
    [
        ("resnet18", {}, "resnet50", "same block type"),
        ("resnet34", {}, "resnet18", "at least as many blocks"),
        ("resnet18-cifar", {}, "resnet34", "conv1.weight"),
        ("resnet20", {"shortcut": False}, "resnet56", "without shortcuts"),
        ("resnet18", {"se_ratio": 16}, "resnet34", "built differently"),
        ("resnet50", {}, "densenet121", "not a ResNet"),
    ],
)
def test_deepen_refuses_targets_it_cannot_embed_into(source, kwargs, target, message):
    with pytest.raises(CnnlabError, match=message):
        deepen(meta(source, **kwargs), target)


def test_deepen_refuses_a_model_that_is_not_a_resnet():
    with pytest.raises(CnnlabError, match="received Sequential"):
        deepen(nn.Sequential(nn.Linear(2, 2)), "resnet34")
