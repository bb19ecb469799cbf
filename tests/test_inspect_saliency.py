"""Saliency maps agree with Captum's implementations; the sanity check of Adebayo et al. 2018."""
import pytest
import torch
from torch import nn

from cnnlab import inspect
from cnnlab.errors import CnnlabError
from tests.conftest import make_images

captum_attr = pytest.importorskip("captum.attr", reason="Captum (a test-only peer) is not installed")


def _small_net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 3)).to(dtype).eval()


@pytest.fixture
def net_and_batch():
    model = _small_net()
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x, torch.tensor([0, 1, 2, 1])


def test_grad_agrees_with_captum_saliency(net_and_batch):
    model, x, y = net_and_batch
    ours = inspect.saliency(model, x, y, "grad")
    theirs = captum_attr.Saliency(model).attribute(x, target=y)
    assert ours.shape == x.shape and torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_grad_x_input_agrees_with_captum(net_and_batch):
    model, x, y = net_and_batch
    ours = inspect.saliency(model, x, y, "grad_x_input")
    theirs = captum_attr.InputXGradient(model).attribute(x, target=y)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_smoothgrad_agrees_with_captum_noise_tunnel_under_the_same_seed(net_and_batch):
    model, x, y = net_and_batch
    torch.manual_seed(7)
    ours = inspect.saliency(model, x, y, "smoothgrad", samples=8, stdev=0.3)
    torch.manual_seed(7)
    theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x, target=y, nt_type="smoothgrad", nt_samples=8, stdevs=0.3)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, inspect.saliency(model, x, y, "grad"), atol=1e-3)  # the noise mattered


def test_integrated_gradients_agree_with_captum_and_are_complete(net_and_batch):
    model, x, y = net_and_batch
    ours = inspect.saliency(model, x, y, "integrated_gradients", steps=32)
    theirs = captum_attr.IntegratedGradients(model).attribute(x, target=y, n_steps=32)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    # completeness: the attributions add up to S(x) - S(0) (up to the quadrature error)
    gap = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(ours.sum(dim=(1, 2, 3)), gap, atol=0.05 * gap.abs().max().item())


def test_default_target_is_the_predicted_class_and_parameter_grads_stay_untouched(net_and_batch):
    model, x, _ = net_and_batch
    pred = model(x).argmax(1)
    assert torch.equal(inspect.saliency(model, x), inspect.saliency(model, x, pred))
    assert all(p.grad is None for p in model.parameters())


def test_bad_method_and_target_are_one_sentence(net_and_batch):
    model, x, _ = net_and_batch
    with pytest.raises(CnnlabError, match="unknown saliency method 'gradcam'"):
        inspect.saliency(model, x, method="gradcam")
    with pytest.raises(CnnlabError, match=r"must lie in \[0, 2\]"):
        inspect.saliency(model, x, 5)


def test_spearman_is_one_for_a_monotone_map_and_minus_one_reversed():
    a = torch.randn(50)
    assert inspect.spearman(a, a.exp()) == pytest.approx(1.0)
    assert inspect.spearman(a, -a) == pytest.approx(-1.0)
    assert inspect.spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 5.0])) == pytest.approx(1.0)


def test_sanity_check_correlation_falls_for_vanilla_gradients_on_a_trained_net():
    torch.manual_seed(0)
    xs, ys = make_images(256, 0, classes=3, size=12)
    x = (torch.from_numpy(xs).float() / 255 - 0.2) / 0.3
    y = torch.from_numpy(ys)
    model = _small_net(dtype=torch.float32).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(60):
        idx = torch.randint(0, 256, (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.9  # it learned the task
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.get_rng_state()
    rows = inspect.saliency_sanity(model, x[:8])
    assert [r.layer for r in rows] == ["(none)", "6", "3", "0"]  # from the output down
    assert rows[0].spearman == 1.0
    assert rows[-1].spearman < 0.5 < rows[0].spearman  # fully randomized: the map no longer matches
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # worked on a copy
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
