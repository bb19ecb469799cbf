"""FGSM and PGD: equal to torchattacks' on the same model and batch, closed form on a linear model,
the ε-ball and [0, 1] respected; the adversarial-training interface."""
import importlib
import importlib.util
import sys

import pytest
import torch
from torch import nn

from cnnlab import inspect
from cnnlab.errors import CnnlabError
from cnnlab.inspect import adversarial

MEAN, STD = (0.1307,), (0.3081,)


@pytest.fixture(scope="module")
def torchattacks():
    """torchattacks' FGSM and PGD. Its package __init__ imports every attack, one of which needs
    scipy (absent here: CI installs torchattacks without dependencies), so when that import fails
    the two modules are loaded without running the package __init__; sys.modules is restored."""
    try:
        import torchattacks as ta

        yield ta.FGSM, ta.PGD
        return
    except ImportError:
        pass
    spec = importlib.util.find_spec("torchattacks")
    if spec is None:
        pytest.skip("torchattacks (a test-only peer) is not installed")
    saved = {k: v for k, v in sys.modules.items() if k == "torchattacks" or k.startswith("torchattacks.")}
    for k in saved:
        del sys.modules[k]
    sys.modules["torchattacks"] = importlib.util.module_from_spec(spec)  # a bare package, __init__ not run
    try:
        yield (importlib.import_module("torchattacks.attacks.fgsm").FGSM,
               importlib.import_module("torchattacks.attacks.pgd").PGD)
    finally:
        for k in [k for k in sys.modules if k == "torchattacks" or k.startswith("torchattacks.")]:
            del sys.modules[k]
        sys.modules.update(saved)


class _Normalize(nn.Module):
    def forward(self, x):
        return (x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)


@pytest.fixture
def net_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(16, 1, 12, 12, generator=g), torch.randint(0, 5, (16,), generator=g)


def test_fgsm_is_identical_to_torchattacks(torchattacks, net_and_batch):
    FGSM, _ = torchattacks
    model, x, y = net_and_batch
    ours = inspect.fgsm(model, x, y, 0.1, mean=MEAN, std=STD)
    theirs = FGSM(nn.Sequential(_Normalize(), model), eps=0.1)(x, y)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, x)


def test_pgd_is_identical_to_torchattacks_under_the_same_seed(torchattacks, net_and_batch):
    _, PGD = torchattacks
    model, x, y = net_and_batch
    torch.manual_seed(3)
    ours = inspect.pgd(model, x, y, 0.2, alpha=0.02, steps=7, mean=MEAN, std=STD)
    torch.manual_seed(3)
    theirs = PGD(nn.Sequential(_Normalize(), model), eps=0.2, alpha=0.02, steps=7, random_start=True)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)


def test_pgd_stays_in_the_eps_ball_and_the_unit_box_and_hurts_more_than_fgsm(net_and_batch):
    model, x, y = net_and_batch
    adv = inspect.pgd(model, x, y, 0.15, steps=10)
    assert (adv - x).abs().max() <= 0.15 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = lambda z: nn.functional.cross_entropy(model(z), y).item()  # noqa: E731
    assert loss(adv) > loss(inspect.fgsm(model, x, y, 0.15)) > loss(x)


def test_one_pgd_step_of_size_eps_without_random_start_is_fgsm(net_and_batch):
    model, x, y = net_and_batch
    assert torch.equal(inspect.pgd(model, x, y, 0.1, alpha=0.1, steps=1, random_start=False, mean=MEAN, std=STD),
                       inspect.fgsm(model, x, y, 0.1, mean=MEAN, std=STD))


def test_fgsm_on_a_two_class_linear_model_moves_by_eps_sign_of_w_other_minus_w_y():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = 0.25 + 0.5 * torch.rand(5, 1, 3, 4)  # far enough from 0 and 1 that nothing is clipped
    y = torch.tensor([0, 1, 1, 0, 1])
    w = model[1].weight.detach()
    adv = inspect.fgsm(model, x, y, 0.1)
    for i in range(5):
        other = 1 - y[i]
        expected = 0.1 * torch.sign(w[other] - w[y[i]]).view(1, 3, 4)
        assert torch.allclose(adv[i] - x[i], expected, atol=1e-6)


def test_attacks_refuse_eps_outside_0_1_steps_below_1_and_normalized_images(net_and_batch):
    model, x, y = net_and_batch
    with pytest.raises(CnnlabError, match=r"must lie in \[0, 1\]; received -0.1"):
        inspect.fgsm(model, x, y, -0.1)
    with pytest.raises(CnnlabError, match="received 1.5"):
        inspect.pgd(model, x, y, 1.5)
    with pytest.raises(CnnlabError, match="at least 1 step"):
        inspect.pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(CnnlabError, match=r"images in \[0, 1\]"):
        inspect.fgsm(model, (x - 0.5) / 0.3, y, 0.1)


def test_robustness_curve_is_clean_accuracy_at_zero_and_falls(net_and_batch):
    model, x, y = net_and_batch
    curve = inspect.robustness_curve(model, x, y, [0.0, 0.3], method="pgd", steps=5, batch_size=7)
    clean = (model(x).argmax(1) == y).float().mean().item()
    assert curve[0].accuracy == pytest.approx(clean) and curve[1].accuracy <= curve[0].accuracy


@pytest.mark.parametrize("spec, expected", [
    ("fgsm:0.3", adversarial.AdversarialSpec("fgsm", 0.3, None, 1)),
    ("fgsm-rs:0.3,0.375", adversarial.AdversarialSpec("fgsm-rs", 0.3, 0.375, 1)),
    (" pgd:0.3,0.01,40", adversarial.AdversarialSpec("pgd", 0.3, 0.01, 40)),
])
def test_parse_adversarial_reads_the_three_forms(spec, expected):
    assert adversarial.parse_adversarial(spec) == expected
    assert str(expected) == spec.strip()


@pytest.mark.parametrize("spec, message", [
    ("pgd:0.3", "pgd takes 3 numbers"), ("fgsm:1.5", "must lie in (0, 1]"), ("fgsm:0", "must lie in (0, 1]"),
    ("mim:0.3", "adversarial training spec is"), ("fgsm-rs:0.3,x", "with numbers"),
    ("pgd:0.3,0.01,0", "at least 1 step"), ("fgsm-rs:0.3,-1", "alpha must be positive"),
])
def test_parse_adversarial_refuses_bad_specs_in_one_sentence(spec, message):
    with pytest.raises(CnnlabError) as e:
        adversarial.parse_adversarial(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_training_attack_takes_and_returns_normalized_batches_in_the_same_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3)).train()
    unit = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 3, (6,))
    x = ((unit - MEAN[0]) / STD[0]).contiguous(memory_format=torch.channels_last)
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    attack = adversarial.make_training_attack("pgd:0.3,0.1,3", mean=MEAN, std=STD)
    adv = attack(model, x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.is_contiguous(memory_format=torch.channels_last)
    back = adv * STD[0] + MEAN[0]
    assert (back - unit).abs().max() <= 0.3 + 1e-5 and back.min() >= -1e-6 and back.max() <= 1 + 1e-6
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.num_batches_tracked, stats[2])  # untouched
    assert model.training and all(p.grad is None for p in model.parameters())


def test_training_attack_random_start_follows_the_global_rng_so_resume_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(4, 1, 4, 4) * 0.5, torch.tensor([0, 1, 2, 0])
    attack = adversarial.make_training_attack("fgsm-rs:0.3,0.375", mean=MEAN, std=STD)
    torch.manual_seed(5)
    a = attack(model, x, y)
    torch.manual_seed(5)
    b = attack(model, x, y)
    assert torch.equal(a, b) and not torch.equal(a, attack(model, x, y))
    fgsm = adversarial.make_training_attack("fgsm:0.1", mean=MEAN, std=STD)
    assert torch.equal(fgsm(model, x, y), fgsm(model, x, y))  # no randomness
