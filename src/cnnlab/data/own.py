"""Datasets of your own from Python: any ``torch.utils.data.Dataset`` of (image, label), decoded once.

    >>> from cnnlab.data.own import from_torch_datasets
    >>> ds = from_torch_datasets(my_train, my_test, name="pets")    # a FolderData, in memory
    >>> fit(cfg, "runs/pets", dataset=ds)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cnnlab.data.folder import DEFAULT_MEMORY_BUDGET, PREFIX, FolderData, Progress, mean_std
from cnnlab.errors import CnnlabError

def _as_uint8_chw(image: Any, where: str) -> np.ndarray:
    """A PIL image, an (H, W[, C]) uint8 array, or a (C, H, W) tensor (uint8, or float in [0, 1])."""
    from PIL import Image

    if isinstance(image, Image.Image):
        a = np.array(image.convert("RGB") if image.mode not in ("L", "RGB") else image, dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise CnnlabError(f"{where} is a tensor of shape {tuple(image.shape)}; expected (C, H, W)")
        if t.is_floating_point():
            if t.numel() and (t.min() < 0 or t.max() > 1):
                raise CnnlabError(f"{where} is a float tensor with values in [{float(t.min()):.3g}, "
                                  f"{float(t.max()):.3g}]; expected [0, 1] (before normalization) or uint8")
            t = (t * 255).round()
        return t.to(torch.uint8).numpy()
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    raise CnnlabError(f"{where} is a {type(image).__name__}; expected a PIL image, a uint8 (H, W[, C]) array "
                      f"or a (C, H, W) tensor")


def from_torch_datasets(train: torch.utils.data.Dataset, test: torch.utils.data.Dataset, *,
                        name: str, classes: Sequence[str] | None = None,
                        val: torch.utils.data.Dataset | None = None,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET,
                        progress: Progress | None = None) -> FolderData:
    """Datasets of your own, ``(image, label)`` per item, decoded once into a FolderData.

    Images may be PIL images, uint8 arrays (H, W[, C]) or tensors (C, H, W; uint8, or float in
    [0, 1] -- give the raw images: normalization comes from the training split's mean and std).
    All must share one shape. Class names: ``classes``, else the training dataset's ``classes``
    attribute (as torchvision's datasets have), else the label numbers."""
    if not name or PREFIX in name:
        raise CnnlabError(f"a dataset of your own needs a name without {PREFIX!r}; received {name!r}")
    parts = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    first = _as_uint8_chw(train[0][0], "item 0 of the training dataset") if len(train) else None
    if first is None or len(test) == 0:
        raise CnnlabError(f"the {'training' if first is None else 'test'} dataset of {name} is empty")
    total = sum(len(d) for d in parts.values())
    need = total * first.nbytes
    if need > memory_budget:
        raise CnnlabError(f"{name} needs {need / 2**30:.1f} GB in memory, over the {memory_budget / 2**30:.1f} GB "
                          f"budget; write it as an image folder (streamed from disk) or raise memory_budget")
    arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    done = 0
    for split, d in parts.items():
        x = np.empty((len(d), *first.shape), np.uint8)
        y = np.empty(len(d), np.int64)
        for i in range(len(d)):
            image, label = d[i][:2]
            a = _as_uint8_chw(image, f"item {i} of the {split} dataset")
            if a.shape != first.shape:
                raise CnnlabError(f"item {i} of the {split} dataset has shape {a.shape}; the first training image "
                                  f"has {first.shape}, and all must share one (resize them in the dataset)")
            x[i], y[i] = a, int(label)
            done += 1
            if progress is not None and (done % 256 == 0 or done == total):
                progress(done, total)
        arrays[split] = torch.from_numpy(x), torch.from_numpy(y)
    n_classes = int(max(int(t[1].max()) for t in arrays.values() if len(t[1]))) + 1
    names = tuple(classes) if classes is not None else tuple(getattr(train, "classes", ()) or ())
    if not names:
        names = tuple(str(i) for i in range(n_classes))
    low = min(int(t[1].min()) for t in arrays.values() if len(t[1]))
    if low < 0 or n_classes > len(names):
        raise CnnlabError(f"the labels of {name} lie in [{low}, {n_classes - 1}]; expected 0..{len(names) - 1}, "
                          f"one per class name")
    mean, std = mean_std(arrays["train"][0].numpy())
    val_x, val_y = arrays.get("val", (None, None))
    return FolderData(name, *arrays["train"], *arrays["test"], names, mean, std, val_x=val_x, val_y=val_y,
                      info={"source": "torch datasets", "images": {k: len(v[0]) for k, v in arrays.items()}})
