"""An exponential moving average of a model's weights, kept beside the weights being trained.

    >>> ema = EMA(model, decay=0.999)
    >>> for x, y in loader:
    ...     ...; optimizer.step()
    ...     ema.update(model)                 # after every optimizer step
    >>> with ema.swapped_in(model):           # evaluate (or save) the averaged weights
    ...     evaluate(model, test_loader)
    >>> checkpoint["ema"] = ema.state_dict()  # and EMA.from_state_dict(model, checkpoint["ema"])

After each step, every floating-point entry of the model's state is averaged,
``avg <- decay * avg + (1 - decay) * current`` (Polyak & Juditsky 1992 averaged the iterates;
the exponential form is TensorFlow's ``ExponentialMovingAverage`` and timm's ``ModelEmaV2``).
With ``warmup=True`` the decay of update ``n`` is ``min(decay, (1 + n) / (10 + n))``, as in
TensorFlow's ``num_updates``, so that a short run is not dominated by its initial weights.

Batch-norm buffers. The running mean and variance are statistics of activations, not weights,
and no average of them is exact for the averaged weights. ``buffers="average"`` (the default,
as timm and ``torch.optim.swa_utils.AveragedModel(use_buffers=True)``) averages them like the
weights; ``buffers="copy"`` takes the live model's current ones. Integer buffers (BN's
``num_batches_tracked``) are always copied. For exact statistics, recompute them for the
averaged weights with ``cnnlab.train.bn.precise_bn`` inside ``swapped_in`` and keep them with
``take_buffers``:

    >>> with ema.swapped_in(model):
    ...     precise_bn(model, train_loader)
    ...     ema.take_buffers(model)

The average is kept in float32 on the model's device; ``update`` takes the unwrapped model
(``ddp.module``), whose weights are the same on every rank.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError

BUFFER_MODES = ("average", "copy")
FORMAT = "cnnlab-ema/1"


class EMA:
    def __init__(self, model: nn.Module, decay: float, *, buffers: str = "average", warmup: bool = False) -> None:
        if not (isinstance(decay, (int, float)) and 0.0 < decay < 1.0):
            raise CnnlabError(f"the EMA decay must be in (0, 1), e.g. 0.999; received {decay!r}")
        if buffers not in BUFFER_MODES:
            raise CnnlabError(f"unknown EMA buffer handling {buffers!r}; valid: {', '.join(BUFFER_MODES)}")
        self.decay, self.buffers, self.warmup = float(decay), buffers, warmup
        self.num_updates = 0
        params = {name for name, _ in model.named_parameters()}
        state = model.state_dict()
        self.averaged = {k: v.detach().clone() for k, v in state.items()}  # the averaged state
        self._float = [k for k, v in state.items() if v.is_floating_point()
                       and (k in params or buffers == "average")]
        self._copied = [k for k in state if k not in set(self._float)]

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        d = self.current_decay()
        state = model.state_dict()
        if self._float:
            # avg + (1 - d) * (current - avg) = d * avg + (1 - d) * current
            torch._foreach_lerp_([self.averaged[k] for k in self._float],
                                 [state[k].detach() for k in self._float], 1.0 - d)
        for k in self._copied:
            self.averaged[k].copy_(state[k])
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights with the averaged ones."""
        model.load_state_dict(self.averaged)

    @torch.no_grad()
    def take_buffers(self, model: nn.Module) -> None:
        """Store the model's current buffers (BN statistics) as the average's: call it inside
        ``swapped_in`` after recomputing the statistics for the averaged weights (precise BN)."""
        for name, buffer in model.named_buffers():
            if name in self.averaged:
                self.averaged[name].copy_(buffer)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block the model holds the averaged weights; its own come back afterwards,
        even when the block raises."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                model.load_state_dict(saved)

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint: ``state_dict()["weights"]`` loads into the model like its own state."""
        return {"format": FORMAT, "decay": self.decay, "buffers": self.buffers, "warmup": self.warmup,
                "num_updates": self.num_updates, "weights": dict(self.averaged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT:
            raise CnnlabError(f"not an EMA state (no {FORMAT!r} marker)")
        saved = state["weights"]
        wrong = [k for k in self.averaged if k not in saved or saved[k].shape != self.averaged[k].shape]
        wrong += [k for k in saved if k not in self.averaged]
        if wrong:
            raise CnnlabError(f"the saved EMA weights do not fit this model (first mismatched key: {wrong[0]})")
        with torch.no_grad():
            for k, v in state["weights"].items():
                self.averaged[k].copy_(v)
        self.decay, self.buffers, self.warmup = state["decay"], state["buffers"], state["warmup"]
        self.num_updates = state["num_updates"]

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: dict[str, Any]) -> EMA:
        ema = cls(model, state["decay"], buffers=state["buffers"], warmup=state["warmup"])
        ema.load_state_dict(state)
        return ema


def ema_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The averaged weights stored in a checkpoint (under ``"ema"``), or None."""
    ema = checkpoint.get("ema")
    return None if ema is None else ema["weights"]
