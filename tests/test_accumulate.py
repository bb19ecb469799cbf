"""Gradient accumulation: k weighted pieces give the gradient of the whole batch (float64)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create
from cnnlab.train.accumulate import check_accumulate, micro_batches, no_sync_unless


def grads(model, x, y, k):
    model.zero_grad()
    for i, (xs, ys, w) in enumerate(micro_batches(x, y, k)):
        with no_sync_unless(model, last=i == k - 1):
            (w * F.cross_entropy(model(xs), ys)).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("n, k", [(12, 3), (13, 4), (5, 8)])  # even, uneven, fewer images than pieces
def test_accumulated_gradient_equals_the_whole_batch_gradient(n, k):
    torch.manual_seed(0)
    model = create("lenet5", num_classes=10, in_channels=1, input_size=28).double()
    x = torch.randn(n, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (n,))
    whole = grads(model, x, y, 1)
    pieces = grads(model, x, y, k)
    for a, b in zip(whole, pieces):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert sum(w for *_, w in micro_batches(x, y, k)) == pytest.approx(1.0)
    assert len(list(micro_batches(x, y, k))) == min(n, k)


def test_soft_targets_are_split_with_their_images():
    x, y = torch.randn(6, 3), torch.softmax(torch.randn(6, 4), 1)
    parts = list(micro_batches(x, y, 4))
    assert torch.equal(torch.cat([p[1] for p in parts]), y) and [len(p[0]) for p in parts] == [2, 2, 1, 1]


def test_batch_norm_pieces_are_not_the_whole_batch():
    """The documented exception: BN normalizes each piece with its own statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double()
    x, y = torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,))
    assert not torch.allclose(grads(model, x, y, 1)[0], grads(model, x, y, 2)[0])


def test_accumulate_below_one_is_refused():
    for k in (0, -1, 1.5, True):
        with pytest.raises(CnnlabError, match="--accumulate .* at least 1; received"):
            check_accumulate(k)
    assert check_accumulate(4) == 4
