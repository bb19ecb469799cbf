"""``cnnlab.manual.functional``: the lecture's layers with hand-written backward passes.

Same names and signatures as ``torch.nn.functional``; each op is a ``torch.autograd.Function``
whose ``backward`` is derived by hand (never by autograd on the op itself). The derivations are
in the docstrings of the modules that hold them:

    conv.py         linear, conv2d, conv1d                 (rot180 / full convolution, Hu, lecture 5)
    pool.py         max_pool2d, avg_pool2d, adaptive_*     (Γ mask and upsample, Hu, lecture 5)
    activations.py  relu, leaky_relu, sigmoid, tanh, dropout
    norm.py         batch_norm, layer_norm, local_response_norm
    losses.py       cross_entropy, mse_loss

    >>> import torch
    >>> from cnnlab.manual import functional as MF
    >>> x = torch.randn(2, 1, 28, 28, requires_grad=True)
    >>> MF.max_pool2d(MF.relu(MF.conv2d(x, torch.randn(6, 1, 5, 5), padding=2)), 2).shape
    torch.Size([2, 6, 14, 14])
"""
from __future__ import annotations

from cnnlab.manual.activations import dropout, leaky_relu, relu, sigmoid, tanh
from cnnlab.manual.conv import conv1d, conv2d, linear
from cnnlab.manual.losses import cross_entropy, mse_loss
from cnnlab.manual.norm import batch_norm, layer_norm, local_response_norm
from cnnlab.manual.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d

__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv2d",
    "cross_entropy", "dropout", "layer_norm", "leaky_relu", "linear", "local_response_norm",
    "max_pool2d", "mse_loss", "relu", "sigmoid", "tanh",
]
