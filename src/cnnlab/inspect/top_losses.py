"""The test images a model gets most wrong: highest cross-entropy first (as fastai's
``ClassificationInterpretation.plot_top_losses``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class TopLoss:
    index: int  # position in the evaluated set
    loss: float
    true: int
    predicted: int
    probability: float  # of the predicted class


@torch.no_grad()
def top_losses(model: nn.Module, x: Tensor, y: Tensor, k: int = 16, *, batch_size: int = 1000) -> list[TopLoss]:
    """The ``k`` examples of (x, y) with the highest loss; ``x`` is what the model takes."""
    if k < 0 or batch_size < 1:
        raise CnnlabError(f"k must be non-negative and batch_size at least 1; received k={k}, batch_size={batch_size}")
    device = next(model.parameters()).device
    losses, preds, probs = [], [], []
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size].to(device))
        yb = y[start:start + batch_size].to(device)
        losses.append(nn.functional.cross_entropy(out, yb, reduction="none").cpu())
        p = out.softmax(1)
        conf, pred = p.max(1)
        preds.append(pred.cpu())
        probs.append(conf.cpu())
    return _ranked(torch.cat(losses), torch.cat(preds), torch.cat(probs), y, k)


def top_losses_from_proba(proba: Tensor, y: Tensor, k: int = 16) -> list[TopLoss]:
    """The ``k`` rows of ``proba`` (N, C), already computed class probabilities such as an
    ensemble's or a test-time-augmentation average, whose true class ``y`` has the highest loss
    -log p(y) (a probability that underflowed to zero is clamped, keeping the loss finite)."""
    if proba.ndim != 2 or y.shape != proba.shape[:1]:
        raise CnnlabError(f"expected probabilities (N, C) and N targets; received {tuple(proba.shape)} "
                          f"and {tuple(y.shape)}")
    if k < 0:
        raise CnnlabError(f"k must be non-negative; received k={k}")
    proba, y = proba.detach().cpu(), y.detach().cpu().long()
    p_true = proba.gather(1, y.unsqueeze(1)).squeeze(1).double()
    loss = -p_true.clamp_min(torch.finfo(proba.dtype).tiny).log()
    conf, pred = proba.max(1)
    return _ranked(loss, pred, conf, y, k)


def _ranked(loss: Tensor, pred: Tensor, prob: Tensor, y: Tensor, k: int) -> list[TopLoss]:
    order = loss.argsort(descending=True, stable=True)[:k]
    return [TopLoss(int(i), float(loss[i]), int(y[i]), int(pred[i]), float(prob[i])) for i in order]
