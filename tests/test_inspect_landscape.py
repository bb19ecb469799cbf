"""The loss landscape: filter normalization holds exactly, the centre is the model's own loss, a
convex quadratic gives a bowl centred on the weights, a line's ends are its two models, and the
fast evaluation (loader read once, chunks on worker threads, weights set in place) gives what a
plain evaluation of each point gives."""
import copy

import pytest
import torch
from torch import nn

from cnnlab import inspect
from cnnlab.errors import CnnlabError
from cnnlab.inspect import landscape as landscape_module
from cnnlab.inspect.landscape import direction_line


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def _batches(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)], x, y


def test_every_filter_of_a_direction_has_the_norm_of_its_weight_filter_and_biases_get_zero():
    model = _net()
    d = inspect.filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            assert torch.allclose(d[name].reshape(len(p), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1),
                                  rtol=1e-5, atol=0), name
            assert not torch.allclose(d[name], p.detach())  # random, not the weights themselves


def test_the_grid_centre_is_the_models_loss_on_the_subset_in_eval_mode_and_weights_are_restored():
    model = _net()
    batches, x, y = _batches()
    model.train()(x)  # give BN running statistics that differ from the batch statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    land = inspect.landscape_2d(model, batches, grid=5, span=0.5, progress=calls.append)
    assert land.loss.shape == land.accuracy.shape == (5, 5) and len(calls) == 25
    assert land.alphas[2] == 0 and land.betas[2] == 0
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model.eval()(x), y).item()
    model.train()
    assert land.loss[2, 2].item() == pytest.approx(expected, rel=1e-6)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert land.loss.std() > 0  # the plane is not flat


class _Quadratic(nn.Module):
    """output = W - W*; with the squared-norm loss, L(θ* + αd1 + βd2) = ||αd1 + βd2||² per image."""

    def __init__(self):
        super().__init__()
        target = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
        self.weight = nn.Parameter(target.clone())
        self.register_buffer("target", target)

    def forward(self, x):
        return (self.weight - self.target).reshape(1, -1).expand(len(x), -1)


def test_a_convex_quadratic_gives_a_bowl_with_its_minimum_at_the_centre():
    model = _Quadratic()
    batches = [(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))]
    land = inspect.landscape_2d(model, batches, grid=9, span=1.0, generator=torch.Generator().manual_seed(0),
                                loss_fn=lambda out, y: out.pow(2).sum())
    z = land.loss
    assert z[4, 4] == 0 and (z > 0).sum() == 80
    assert int(z.argmin()) == 4 * 9 + 4
    assert torch.allclose(z, z.flip(0).flip(1), rtol=1e-5)  # symmetric through the centre
    # convex along both axes: second differences are non-negative (exactly 2||d||² h² > 0)
    assert (z[2:] - 2 * z[1:-1] + z[:-2] > 0).all() and (z[:, 2:] - 2 * z[:, 1:-1] + z[:, :-2] > 0).all()


def test_a_line_between_two_weight_vectors_ends_at_their_losses():
    model = _net().eval()
    batches, x, y = _batches()
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    other = _net().eval()
    for p in other.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    b = other.state_dict()
    line = inspect.landscape_1d(model, a, b, batches, steps=5)
    with torch.no_grad():
        la = nn.functional.cross_entropy(model(x), y).item()
        lb = nn.functional.cross_entropy(other(x), y).item()
    assert line.loss[0].item() == pytest.approx(la, rel=1e-6) and line.loss[-1].item() == pytest.approx(lb, rel=1e-5)
    assert all(torch.equal(a[k], v) for k, v in model.state_dict().items())  # restored
    d = inspect.filter_normalized_direction(model)
    centre = direction_line(model, d, batches, steps=5, span=1.0).loss[2].item()
    assert centre == pytest.approx(la, rel=1e-6)


def test_bad_grid_and_span_are_refused():
    with pytest.raises(CnnlabError, match="at least 2 points"):
        inspect.landscape_2d(_net(), [], grid=1)
    with pytest.raises(CnnlabError, match="span must be positive"):
        inspect.landscape_2d(_net(), [], span=0)
    with pytest.raises(CnnlabError, match="workers is a number of threads"):
        inspect.landscape_2d(_net(), _batches()[0], workers=0)


class _Counting:
    """A loader that counts how often it is read."""

    def __init__(self, batches):
        self.batches, self.reads = batches, 0

    def __iter__(self):
        self.reads += 1
        return iter(self.batches)


def _plain_point(model, dirs, a, b, x, y):
    """The loss and accuracy at θ* + a d1 + b d2, computed the straightforward way."""
    other = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in other.named_parameters():
            p.copy_(p + a * dirs[0][name] + b * dirs[1][name])
        out = other(x)
    return nn.functional.cross_entropy(out, y).item(), int((out.argmax(1) == y).sum()) / len(y)


def test_the_fast_path_equals_a_plain_evaluation_of_each_point():
    model = _net()
    batches, x, y = _batches(n=600, seed=3)
    batches = [(x[i:i + 300], y[i:i + 300]) for i in range(0, 600, 300)]  # cut into chunks of 256: 256+256+88
    model.train()(x)  # running statistics unlike the batch statistics
    g = torch.Generator().manual_seed(4)
    dirs = tuple(inspect.filter_normalized_direction(model, generator=g) for _ in range(2))
    land = inspect.landscape_2d(model, batches, dirs, grid=5, span=0.8, workers=2)
    for i, j in [(0, 0), (1, 3), (2, 2), (4, 1), (4, 4)]:
        a, b = land.alphas[i].item(), land.betas[j].item()
        loss, acc = _plain_point(model, dirs, a, b, x, y)
        assert land.loss[i, j].item() == pytest.approx(loss, rel=1e-6), (i, j)
        assert land.accuracy[i, j].item() == pytest.approx(acc, abs=1e-12), (i, j)
    assert land.loss.std() > 0.01


def test_the_result_does_not_depend_on_the_workers_and_torch_threads_are_restored():
    model = _net().eval()
    batches, x, y = _batches(n=600, seed=3)
    threads = torch.get_num_threads()
    grids = [inspect.landscape_2d(model, batches, grid=3, generator=torch.Generator().manual_seed(0), workers=w)
             for w in (1, 3)]
    assert torch.get_num_threads() == threads
    assert torch.equal(grids[0].loss, grids[1].loss) and torch.equal(grids[0].accuracy, grids[1].accuracy)


def test_the_loader_is_read_once_unless_it_is_too_large_to_keep(monkeypatch):
    model = _net().eval()
    batches, x, y = _batches()
    loader = _Counting(batches)
    kept = inspect.landscape_2d(model, loader, grid=3, generator=torch.Generator().manual_seed(0))
    assert loader.reads == 1
    monkeypatch.setattr(landscape_module, "_KEEP_LIMIT", 0)
    loader = _Counting(batches)
    streamed = inspect.landscape_2d(model, loader, grid=3, generator=torch.Generator().manual_seed(0))
    assert loader.reads == 1 + 9  # the first look, then once per point
    assert torch.allclose(kept.loss, streamed.loss, rtol=1e-6, atol=0)


def test_an_empty_loader_is_refused_and_the_weights_are_restored():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CnnlabError, match="no images"):
        inspect.landscape_2d(model, [], grid=3)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
