"""cnnlab.autodiff trains a network: a 2-layer MLP with softmax cross-entropy built from the
engine's ops, on generated MNIST-like 28x28 images (class-dependent blobs, never the real data)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab import autodiff as ad


def blob_digits(n: int, rng: np.random.Generator, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 784) in [0, ~1] and labels: each class is three Gaussian blobs at fixed
    places, every image shifts them by a random pixel or two and adds noise."""
    centers = np.random.default_rng(123).uniform(6, 22, size=(classes, 3, 2))  # the same for every call
    labels = rng.integers(classes, size=n)
    c = centers[labels] + rng.normal(0, 1.5, size=(n, 1, 2))  # (n, 3, 2)
    rows, cols = np.mgrid[0:28, 0:28]
    d2 = (rows - c[..., 0, None, None]) ** 2 + (cols - c[..., 1, None, None]) ** 2  # (n, 3, 28, 28)
    images = np.exp(-d2 / (2 * 2.5**2)).sum(axis=1) + rng.normal(0, 0.3, size=(n, 28, 28))
    return images.reshape(n, 784), labels


def cross_entropy(logits: ad.Tensor, labels: np.ndarray) -> ad.Tensor:
    """Mean softmax cross-entropy from the engine's ops: -log softmax(z)[label]."""
    # Subtracting the row maximum (a constant) leaves softmax unchanged and keeps exp from overflowing.
    z = logits - logits.data.max(axis=1, keepdims=True)
    log_probs = z - ad.log(ad.exp(z).sum(axis=1, keepdims=True))  # (B, classes)
    one_hot = np.eye(logits.shape[1])[labels]
    return -(log_probs * one_hot).sum(axis=1).mean()


def test_cross_entropy_from_our_ops_matches_torch():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 4)) * 3, rng.integers(4, size=5)
    ours = ad.Tensor(logits)
    loss = cross_entropy(ours, labels)
    loss.backward()
    theirs = torch.tensor(logits, requires_grad=True)
    expected = F.cross_entropy(theirs, torch.tensor(labels))
    expected.backward()
    np.testing.assert_allclose(loss.data, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_two_layer_mlp_loss_goes_down_on_blob_digits():
    rng = np.random.default_rng(0)
    x, y = blob_digits(3000, rng)
    # He initialisation for the ReLU layer, 1/sqrt(fan_in) for the output layer.
    w1 = ad.Tensor(rng.normal(0, np.sqrt(2 / 784), size=(784, 32)))
    b1 = ad.Tensor(np.zeros(32))
    w2 = ad.Tensor(rng.normal(0, np.sqrt(1 / 32), size=(32, 10)))
    b2 = ad.Tensor(np.zeros(10))
    params = [w1, b1, w2, b2]

    def forward(images: np.ndarray) -> ad.Tensor:
        hidden = ad.relu(ad.Tensor(images) @ w1 + b1)  # (B, 32)
        return hidden @ w2 + b2  # (B, 10)

    def full_loss() -> float:
        with ad.no_grad():  # evaluation only: no graph
            return float(cross_entropy(forward(x), y).data)

    start = full_loss()
    for epoch in range(2):
        order = rng.permutation(len(x))
        for batch in order.reshape(-1, 100):
            for p in params:
                p.zero_grad()
            loss = cross_entropy(forward(x[batch]), y[batch])
            loss.backward()
            for p in params:
                p.data -= 0.1 * p.grad  # plain SGD
    end = full_loss()
    with ad.no_grad():
        accuracy = float((forward(x).data.argmax(axis=1) == y).mean())
    assert abs(start - np.log(10)) < 0.5  # near chance at the start
    assert end < 0.25 * start, (start, end)
    assert accuracy > 0.9
