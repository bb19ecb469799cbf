"""Model surgery: ``deepen`` embeds a trained ResNet into a deeper one that computes the same.

The lecture (Ryu, ch. 3, "ResNet34"): "A trained ResNet18 architecture can be exactly fitted into a
ResNet34: copy over the parameters and set parameters of the additional blocks to be 0. The
additional blocks [will] only serve to apply an additional ReLU, but this makes no difference as
ReLU is idempotent." This is the argument that deeper ResNets form a larger, nested function class.

    >>> from cnnlab import models
    >>> from cnnlab.models.surgery import deepen
    >>> small = models.create("resnet18", num_classes=10).eval()
    >>> big = deepen(small, "resnet34")   # big(x) == small(x) in eval mode

Only the end of each added block's residual branch has to be zero (``blocks.zero_branch_end``:
gamma and beta of its last BN, or the last conv of a pre-activation block); the rest of the
added block keeps the target's fresh initialization, so it can still learn.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import zero_branch_end
from cnnlab.models.registry import create, info
from cnnlab.models.resnet import ResNet


def _describe(model: ResNet) -> str:
    stages = [len(stage) for stage in model.stages()]
    return f"{type(model.stages()[0][0]).__name__} x {stages}"


@torch.no_grad()
def deepen(model: nn.Module, target_name: str) -> nn.Module:
    """A ``target_name`` network (more blocks per stage, same block type and widths) whose
    outputs equal ``model``'s in eval mode.

    Each stage of the target keeps the source's blocks first, in order, and appends identity
    blocks. The target has the source's ``num_classes``, ``in_channels`` and ``version``, and is
    built on its device, with its dtype and train/eval mode.

    Raises:
        CnnlabError: ``model`` is not a zoo ResNet, or ``target_name`` is not one that deepens it
            (fewer blocks in a stage, another block type, other widths or stem).
    """
    if not isinstance(model, ResNet):
        raise CnnlabError(f"deepen takes a ResNet from the zoo; received {type(model).__name__}")
    options = {"num_classes": model.fc.out_features, "in_channels": model.conv1.in_channels}
    if "version" in inspect.signature(info(target_name).builder).parameters:
        options["version"] = model.version
    with torch.device(model.fc.weight.device):  # build where the source lives (meta included)
        target = create(target_name, **options)
    if not isinstance(target, ResNet):
        raise CnnlabError(
            f"cannot deepen into {target_name!r}: it is a {type(target).__name__}, not a ResNet"
        )
    source_stages, target_stages = model.stages(), target.stages()
    same_blocks = len(source_stages) == len(target_stages) and all(
        type(s[0]) is type(t[0]) and len(s) <= len(t) for s, t in zip(source_stages, target_stages)
    )
    if not same_blocks:
        raise CnnlabError(
            f"cannot deepen {_describe(model)} into {target_name!r} ({_describe(target)}); "
            "the target needs the same block type and at least as many blocks in every stage"
        )
    if not all(block.shortcut for stage in source_stages for block in stage):
        raise CnnlabError(
            "cannot deepen a network without shortcuts: an added block with a zero branch and no "
            "skip connection outputs zero, not its input"
        )
    for source_stage, target_stage in zip(source_stages, target_stages):
        for s, t in zip(source_stage, target_stage):
            if [type(m) for m in s.modules()] != [type(m) for m in t.modules()]:
                raise CnnlabError(
                    f"cannot deepen into {target_name!r}: its blocks are built differently "
                    f"(shortcut kind or squeeze-and-excitation) from the source's"
                )
    target.to(dtype=model.fc.weight.dtype)

    # Every source tensor has a twin of the same name in the target: the stem, the head and the
    # first len(stage) blocks of each stage (nn.Sequential names blocks by position).
    source_state = model.state_dict()
    target_state = target.state_dict()
    for key, value in source_state.items():
        if key not in target_state or target_state[key].shape != value.shape:
            found = tuple(target_state[key].shape) if key in target_state else "nothing"
            raise CnnlabError(
                f"cannot deepen into {target_name!r}: the source's {key} {tuple(value.shape)} "
                f"meets {found} in the target (a different stem, width or block option)"
            )
        target_state[key].copy_(value)
    for source_stage, target_stage in zip(source_stages, target_stages):
        for block in list(target_stage)[len(source_stage):]:
            zero_branch_end(block)  # branch = 0, so the added block is the identity
    return target.train(model.training)
