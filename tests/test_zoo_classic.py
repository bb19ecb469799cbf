"""The classic architectures of the zoo (LeNet-5 1998, AlexNet, VGG, NiN, GoogLeNet): published
parameter counts, the lectures' structural claims, and forward shapes.

The ImageNet-sized models are counted on the ``meta`` device (no memory, no init time) and built
for real once per module for a batch-1 forward.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.models.googlenet import GoogLeNetOutputs, googlenet_loss
from cnnlab.models.lenet_classic import C3_TABLE, ScaledTanh, Subsampling, c3_inputs, rbf_prototypes


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return models.create(name, **kwargs)


def params_of(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, kind) for p in m.parameters(recurse=False))


# ---------------------------------------------------------------- published parameter counts

PUBLISHED = {
    "lenet5-classic": 60_000,
    "alexnet": 61_100_840,
    "alexnet-original": 60_965_224,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg-a-lrn": 132_863_336,
    "vgg11-bn": 132_868_840,
    "vgg13-bn": 133_053_736,
    "vgg16-bn": 138_365_992,
    "vgg19-bn": 143_678_248,
    "googlenet": 6_998_552 + 6_379_728,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_one(name):
    model = meta_model(name)
    assert models.count_params(model, trainable_only=True) == PUBLISHED[name]
    assert models.info(name).params == PUBLISHED[name]


def test_alexnet_splits_into_the_lectures_conv_and_linear_counts():
    model = meta_model("alexnet")
    assert params_of(model, nn.Conv2d) == 2_469_696
    assert params_of(model, nn.Linear) == 58_631_144


def test_vgg19_splits_into_the_lectures_conv_and_linear_counts():
    model = meta_model("vgg19")
    assert params_of(model, nn.Conv2d) == 20_024_384
    assert params_of(model, nn.Linear) == 123_642_856


def test_two_tower_alexnet_has_fewer_parameters_because_its_groups_halve_conv2_4_5():
    original, single = meta_model("alexnet-original"), meta_model("alexnet")
    convs = [m for m in original.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert params_of(original, nn.Conv2d) == 2_334_080
    assert params_of(original, nn.Linear) == params_of(single, nn.Linear)
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in original.modules()) == 2
    pools = [m for m in original.modules() if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)  # overlapping pooling


def test_googlenet_without_aux_heads_has_6998552_parameters_and_the_heads_add_6379728():
    with_aux = models.count_params(meta_model("googlenet"))
    without = models.count_params(meta_model("googlenet", aux_logits=False))
    assert without == 6_998_552
    assert with_aux - without == 6_379_728


def test_vgg_aliases_name_the_paper_configurations():
    for alias, name in [("vgg11", "vgg-a"), ("vgg13", "vgg-b"), ("vgg16", "vgg-d"), ("vgg19", "vgg-e")]:
        assert models.info(alias).name == name


def test_vgg_c_has_three_1x1_convs_and_a_lrn_one_lrn():
    kernels = [m.kernel_size for m in meta_model("vgg-c").modules() if isinstance(m, nn.Conv2d)]
    assert kernels.count((1, 1)) == 3 and len(kernels) == 13
    lrn = [m for m in meta_model("vgg-a-lrn").modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn) == 1


@pytest.mark.parametrize("name,convs", [("vgg-a", 8), ("vgg-b", 10), ("vgg-d", 13), ("vgg-e", 16)])
def test_vgg_configs_have_the_papers_weight_layer_counts(name, convs):
    model = meta_model(name)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3


def test_batch_norm_is_an_argument_for_every_vgg_config():
    model = meta_model("vgg-c", batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13


# ---------------------------------------------------------------- LeNet-5 (1998)

def test_lenet5_classic_layers_have_the_papers_parameter_counts():
    model = models.create("lenet5-classic")
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("c1", "s2", "c3", "s4", "c5", "f6", "output")}
    assert counts == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48_120, "f6": 10_164, "output": 0}


def test_c3_connection_table_is_lecuns_table_one():
    inputs = c3_inputs()
    assert len(inputs) == 16 and len(C3_TABLE) == 6
    assert [len(cols) for cols in inputs] == [3] * 6 + [4] * 9 + [6]
    for j in range(6):  # maps 0-5 read three contiguous S2 maps (cyclically)
        assert sorted(inputs[j]) == sorted({j % 6, (j + 1) % 6, (j + 2) % 6})
    for j in range(6, 12):  # maps 6-11 read four contiguous
        assert sorted(inputs[j]) == sorted({(j + i) % 6 for i in range(4)})


def test_c3_computes_each_map_from_only_its_connected_s2_maps():
    c3 = models.create("lenet5-classic").c3
    s2 = torch.randn(2, 6, 14, 14)
    out = c3(s2)
    assert out.shape == (2, 16, 10, 10)
    for j, cols in enumerate(c3.inputs):
        bias = next(conv.bias[maps.index(j)] for maps, conv in zip(c3.groups, c3.convs) if j in maps)
        expected = F.conv2d(s2[:, cols], c3.map_weight(j).unsqueeze(0), bias.reshape(1))
        torch.testing.assert_close(out[:, j:j + 1], expected, atol=1e-5, rtol=1e-5)
    # changing an unconnected S2 map leaves the map unchanged
    changed = s2.clone()
    changed[:, 3] += 1.0
    torch.testing.assert_close(c3(changed)[:, 0], out[:, 0])  # map 0 reads S2 maps 0, 1, 2


def test_scaled_tanh_maps_plus_minus_one_to_plus_minus_one():
    f = ScaledTanh()
    torch.testing.assert_close(f(torch.tensor([1.0, -1.0, 0.0])), torch.tensor([1.0, -1.0, 0.0]),
                               atol=1e-4, rtol=0)


def test_subsampling_is_a_squashed_scaled_window_sum_plus_bias():
    s = Subsampling(2)
    with torch.no_grad():
        s.scale.weight.copy_(torch.tensor([0.8, -2.0]).view(2, 1, 1, 1))  # stored 4w
        s.scale.bias.copy_(torch.tensor([0.1, 0.3]))
    x = torch.randn(1, 2, 4, 4)
    window_sum = x.unfold(2, 2, 2).unfold(3, 2, 2).sum(dim=(-1, -2))  # (1, 2, 2, 2)
    w = torch.tensor([0.2, -0.5]).view(1, 2, 1, 1)
    b = torch.tensor([0.1, 0.3]).view(1, 2, 1, 1)
    torch.testing.assert_close(s(x), 1.7159 * torch.tanh(2 / 3 * (w * window_sum + b)))


def test_rbf_output_is_the_negative_squared_distance_to_fixed_prototypes():
    model = models.create("lenet5-classic")
    protos = model.output.prototypes
    assert protos.shape == (10, 84)
    assert set(protos.unique().tolist()) == {-1.0, 1.0}
    assert len({tuple(p.tolist()) for p in protos}) == 10  # ten distinct digit bitmaps
    assert not any(p is protos for p in model.parameters())
    f6 = torch.randn(3, 84)
    torch.testing.assert_close(model.output(f6), -torch.cdist(f6, protos) ** 2, atol=1e-3, rtol=1e-4)
    assert rbf_prototypes(7).shape == (7, 84)


def test_lenet5_classic_pads_mnist_by_two():
    model = models.create("lenet5-classic").eval()
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    torch.testing.assert_close(model(x), model(F.pad(x, (2, 2, 2, 2))))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_lenet5_classic_loss_decreases_with_cross_entropy_on_negative_distances():
    torch.manual_seed(0)
    model = models.create("lenet5-classic")
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert model.output.prototypes.grad is None  # the prototypes stay fixed


# ---------------------------------------------------------------- ImageNet-sized forwards

@pytest.fixture(scope="module")
def googlenet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("googlenet")


def test_googlenet_returns_aux_logits_in_train_mode_and_logits_only_in_eval(googlenet):
    x = torch.randn(1, 3, 224, 224)
    googlenet.train()
    out = googlenet(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert [t.shape for t in out] == [(1, 1000)] * 3
    target = torch.tensor([3])
    expected = F.cross_entropy(out.logits, target) + 0.3 * (
        F.cross_entropy(out.aux1, target) + F.cross_entropy(out.aux2, target))
    torch.testing.assert_close(googlenet_loss(out, target), expected)
    googlenet.eval()
    logits = googlenet(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 1000)


def test_googlenet_5x5_branch_is_a_true_5x5_conv(googlenet):
    conv = googlenet.inception3a.branch3[1][0]
    assert conv.kernel_size == (5, 5) and conv.out_channels == 32 and conv.bias is not None
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in googlenet.modules()) == 2


@pytest.mark.parametrize("name,size", [("alexnet", 224), ("alexnet-original", 227), ("nin", 224)])
def test_imagenet_model_forward_shape(name, size):
    torch.manual_seed(0)
    model = models.create(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_alexnet_original_uses_the_papers_init():
    torch.manual_seed(0)
    model = models.create("alexnet-original")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [c.bias.mean().item() for c in convs] == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert [lin.bias.mean().item() for lin in linears] == [1.0, 1.0, 0.0]
    assert abs(linears[0].weight.std().item() - 0.01) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "vgg19-bn"])
def test_vgg_forward_shape_on_224(name):
    model = models.create(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)


def test_nin_has_no_linear_layer_and_pools_with_ceil_mode():
    model = models.create("nin-cifar")
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(p.ceil_mode and (p.kernel_size, p.stride) == (3, 2) for p in pools)
    x = torch.randn(1, 3, 32, 32)
    assert model.features[:2](x).shape[-1] == 16  # (32 - 3) / 2 + 1 = 15.5 rounds up


# ---------------------------------------------------------------- CIFAR-sized models, and MNIST

CIFAR_MODELS = ["alexnet-cifar", "vgg-cifar", "nin-cifar", "googlenet-cifar"]


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["cifar", "mnist"])
def test_cifar_model_runs_on_cifar_and_mnist(name, shape):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=shape[0])
    x = torch.randn(1, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_googlenet_cifar_can_have_aux_heads():
    model = models.create("googlenet-cifar", in_channels=1, aux_logits=True)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 28, 28))
        assert isinstance(out, GoogLeNetOutputs) and out.aux1.shape == (1, 10)
        assert isinstance(model.eval()(torch.randn(1, 1, 28, 28)), torch.Tensor)


# ---------------------------------------------------------------- metadata and bad input

CLASSIC = ["lenet5-classic", "alexnet", "alexnet-original", "alexnet-cifar", "vgg-a", "vgg-a-lrn",
           "vgg-b", "vgg-c", "vgg-d", "vgg-e", "vgg11-bn", "vgg13-bn", "vgg16-bn", "vgg19-bn",
           "vgg-cifar", "nin", "nin-cifar", "googlenet", "googlenet-cifar"]


@pytest.mark.parametrize("name", CLASSIC)
def test_registered_with_paper_year_input_and_class_count(name):
    entry = models.info(name)
    assert entry.paper and 1998 <= entry.year <= 2015
    assert entry.input_size[0] in (1, 3) and entry.num_classes in (10, 1000)
    model = meta_model(name, num_classes=7, in_channels=entry.input_size[0])
    assert model is not None


@pytest.mark.parametrize("name", ["alexnet", "vgg-cifar", "nin-cifar", "googlenet"])
def test_dropout_outside_unit_interval_is_refused(name):
    with pytest.raises(CnnlabError, match="dropout=1.5"):
        models.create(name, dropout=1.5)


def test_unknown_vgg_config_is_refused_with_the_valid_ones():
    with pytest.raises(CnnlabError, match="'F'.*A-LRN"):
        models.create("vgg-a", config="F")
