"""Layer classes of the manual backend: ``torch.nn`` layers whose ``forward`` calls the hand-written ops.

Each class subclasses its ``torch.nn`` counterpart and only overrides ``forward``, so constructor
arguments, parameter and buffer names (``weight``, ``bias``, ``running_mean``, ...), ``repr``,
initialization and ``state_dict`` keys are PyTorch's own. A checkpoint moves between the two
backends unchanged, and ``convert`` (``backend.py``) can swap a layer's class in place.

    >>> import torch
    >>> from cnnlab import manual
    >>> conv = manual.Conv2d(1, 6, kernel_size=5, padding=2)
    >>> conv(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 6, 28, 28])
    >>> sorted(conv.state_dict())
    ['bias', 'weight']
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.errors import CnnlabError
from cnnlab.manual import functional as MF
from cnnlab.manual.activations import DROPOUT_MODES


class Conv2d(nn.Conv2d):
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            # reflect / replicate / circular padding only moves data: torch's F.pad, then no padding.
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return MF.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return MF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(nn.Conv1d):
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return MF.conv1d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return MF.conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Linear(nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.linear(input, self.weight, self.bias)


class MaxPool2d(nn.MaxPool2d):
    def forward(self, input: torch.Tensor):
        return MF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    def forward(self, input: torch.Tensor):
        return MF.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class ReLU(nn.ReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.relu(input)


class LeakyReLU(nn.LeakyReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.leaky_relu(input, self.negative_slope)


class Sigmoid(nn.Sigmoid):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.sigmoid(input)


class Tanh(nn.Tanh):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.tanh(input)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a choice of convention: ``mode="inverted"`` (PyTorch's, the default) or
    ``"scale-at-test"`` (mask only in training, multiply by 1 - p at test time); see
    ``cnnlab.manual.activations``. A converted ``nn.Dropout`` has no ``mode`` and is inverted."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, mode: str = "inverted") -> None:
        super().__init__(p, inplace)
        if mode not in DROPOUT_MODES:
            raise CnnlabError(f"unknown dropout mode {str(mode)[:50]!r}; valid: {', '.join(DROPOUT_MODES)}")
        self.mode = mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.dropout(input, self.p, self.training, mode=getattr(self, "mode", "inverted"))

    def extra_repr(self) -> str:
        mode = getattr(self, "mode", "inverted")
        return super().extra_repr() + ("" if mode == "inverted" else f", mode={mode!r}")


class _ManualBatchNorm:
    """torch's ``_BatchNorm.forward`` (momentum=None is the cumulative average) on the manual op."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # Batch statistics in training, and in eval too when no running statistics are kept.
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return MF.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                             self.weight, self.bias, use_batch, factor, self.eps)


class BatchNorm1d(_ManualBatchNorm, nn.BatchNorm1d):
    pass


class BatchNorm2d(_ManualBatchNorm, nn.BatchNorm2d):
    pass


class LayerNorm(nn.LayerNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class LocalResponseNorm(nn.LocalResponseNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return MF.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                                reduction=self.reduction, label_smoothing=self.label_smoothing)


class MSELoss(nn.MSELoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return MF.mse_loss(input, target, reduction=self.reduction)


# torch.nn class -> its manual twin; ``convert`` swaps exactly these (exact type match).
MANUAL_EQUIVALENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: Conv2d, nn.Conv1d: Conv1d, nn.Linear: Linear,
    nn.MaxPool2d: MaxPool2d, nn.AvgPool2d: AvgPool2d,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d: AdaptiveMaxPool2d,
    nn.ReLU: ReLU, nn.LeakyReLU: LeakyReLU, nn.Sigmoid: Sigmoid, nn.Tanh: Tanh, nn.Dropout: Dropout,
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.LayerNorm: LayerNorm,
    nn.LocalResponseNorm: LocalResponseNorm,
    nn.CrossEntropyLoss: CrossEntropyLoss, nn.MSELoss: MSELoss,
}

__all__ = [cls.__name__ for cls in MANUAL_EQUIVALENTS.values()] + ["MANUAL_EQUIVALENTS"]
