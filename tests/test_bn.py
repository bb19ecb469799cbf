"""Batch norm's two lecture techniques: precise (population) statistics, and training only BN."""
import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.bn import count_bn, precise_bn, train_only_bn


class ConvBNNet(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-linear, with the BN layers *registered* in the reverse of the
    order ``forward`` calls them, so that only the execution order gives the right answer."""

    def __init__(self) -> None:
        super().__init__()
        self.bn2 = nn.BatchNorm2d(3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.head = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 4, 6, 6)
        x = torch.relu(self.bn2(self.conv2(x)))  # (B, 3, 4, 4)
        return self.head(x.flatten(1))


def garbage_net(seed: int = 0) -> ConvBNNet:
    torch.manual_seed(seed)
    net = ConvBNNet()
    for bn in (net.bn1, net.bn2):
        bn.running_mean.uniform_(-3, 3)
        bn.running_var.uniform_(0.1, 5)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return net


def make_batches(sizes=(7, 13, 5, 11), seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 2, 8, 8, generator=g) * 2 + 0.5 for n in sizes]


def full_pass_inputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each BN layer's input in one eval-mode pass over all of ``x`` at once."""
    seen = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
               for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return seen


def assert_population_stats(net: nn.Module, x: torch.Tensor) -> None:
    inputs = full_pass_inputs(net, x)
    for name, inp in inputs.items():
        bn = net.get_submodule(name)
        var, mean = torch.var_mean(inp.double(), dim=(0, 2, 3), correction=1)  # torch's running_var is unbiased
        torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(bn.running_var.double(), var, atol=1e-5, rtol=1e-5, msg=name)


def test_precise_bn_stats_equal_a_full_eval_pass_over_all_the_data():
    net, batches = garbage_net(), make_batches()
    assert precise_bn(net, batches) == 2
    assert_population_stats(net, torch.cat(batches))


def test_precise_bn_is_needed_layer_by_layer():
    # The lecture's "Why?": measuring every layer in one pass with the old statistics gets the
    # second layer wrong, because its input depends on the first layer's statistics.
    net, batches = garbage_net(), make_batches()
    naive = full_pass_inputs(net, torch.cat(batches))["bn2"].mean(dim=(0, 2, 3))
    precise_bn(net, batches)
    assert not torch.allclose(net.bn2.running_mean, naive, atol=1e-2)


def test_precise_bn_accepts_a_generator_function_and_x_y_pairs():
    batches = make_batches()
    a, b, c = garbage_net(), garbage_net(), garbage_net()
    precise_bn(a, batches)
    precise_bn(b, lambda: (x for x in batches))
    precise_bn(c, [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches])
    for other in (b, c):
        for name in ("bn1", "bn2"):
            assert torch.equal(a.get_submodule(name).running_mean, other.get_submodule(name).running_mean)
            assert torch.equal(a.get_submodule(name).running_var, other.get_submodule(name).running_var)


def test_precise_bn_refuses_a_one_shot_iterator_and_empty_data():
    with pytest.raises(CnnlabError, match="re-iterable"):
        precise_bn(garbage_net(), (x for x in make_batches()))
    with pytest.raises(CnnlabError, match="at least one batch"):
        precise_bn(garbage_net(), [])
    with pytest.raises(CnnlabError, match="num_batches"):
        precise_bn(garbage_net(), make_batches(), num_batches=0)


def test_precise_bn_num_batches_uses_only_the_first_batches():
    batches = make_batches()
    net = garbage_net()
    precise_bn(net, batches, num_batches=2)
    assert_population_stats(net, torch.cat(batches[:2]))


def test_precise_bn_leaves_weights_and_mode_alone():
    net = garbage_net()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    net.train()
    precise_bn(net, make_batches())
    assert net.training and net.bn1.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_precise_bn_on_a_model_without_bn_updates_nothing():
    assert precise_bn(nn.Sequential(nn.Conv2d(2, 3, 3)), make_batches()) == 0


def test_cumulative_variant_gets_the_first_layers_mean_and_restores_momentum():
    batches = make_batches(sizes=(8, 8, 8))  # equal sizes: the average of batch means is the mean
    net = garbage_net().eval()
    assert precise_bn(net, batches, exact=False) == 2
    assert net.bn1.momentum == 0.1 and not net.bn1.training
    first_input = net.conv1(torch.cat(batches)).detach()
    torch.testing.assert_close(net.bn1.running_mean, first_input.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)


def test_count_bn_counts_batch_norm_layers():
    assert count_bn(ConvBNNet()) == 2
    assert count_bn(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.LayerNorm(2))) == 1


def test_train_only_bn_leaves_only_bn_affine_params_trainable_and_only_they_change():
    net = garbage_net()
    params = train_only_bn(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"}
    assert {id(p) for p in params} == {id(p) for n, p in net.named_parameters() if n in trainable}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    net.train()
    x, y = torch.cat(make_batches()), torch.arange(36) % 5
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n


def test_train_only_bn_refuses_a_model_without_bn_parameters():
    with pytest.raises(CnnlabError, match="batch-norm"):
        train_only_bn(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    with pytest.raises(CnnlabError, match="batch-norm"):
        train_only_bn(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False)))
