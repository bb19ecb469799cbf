"""Image files into uint8 arrays with Pillow, and the loader that streams them from disk.

    >>> pre = Preprocess(size=(224, 224), channels=3, crop_pct=0.875)
    >>> decode("cat.jpg", pre).shape               # resize 256 + centre crop 224
    (3, 224, 224)
    >>> loader = FolderLoader(files, pre, batch_size=64, mean=mean, std=std, train=True, workers=4)

``decode`` turns one file into uint8 (C, H, W): resized so that it covers the target size (the
shorter side to size / crop_pct), centre-cropped, or with a generator and ``train_crop="rrc"``
a random resized crop of the full-resolution image (Szegedy et al. 2015, sec. 6; torchvision's
``RandomResizedCrop`` parameters). JPEGs much larger than the target are decoded at a reduced
scale directly (Pillow's ``draft``). ``FolderLoader`` decodes batches in
``torch.utils.data.DataLoader`` worker processes and yields them as ``cnnlab.data.BatchLoader``
does; ``cnnlab.data.folder`` builds both from a folder.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.augment import Pipeline
from cnnlab.errors import CnnlabError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass(frozen=True)
class Files:
    """The images of one split: paths relative to ``root`` (as bytes, cheap to share with worker
    processes) and their labels."""

    root: Path
    paths: np.ndarray  # dtype S: relative paths, UTF-8
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        return self.root / self.paths[i].decode()

    def subset(self, idx: np.ndarray) -> Files:
        return Files(self.root, self.paths[idx], self.labels[idx])



# --- decoding -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a uint8 (C, H, W) array; saved with a run so that prediction
    applies the same (``to_dict``/``from_dict``)."""

    size: tuple[int, int]  # (H, W)
    channels: int  # 1 (greyscale) or 3 (RGB)
    crop_pct: float = 1.0  # the shorter side is resized to size / crop_pct, then centre-cropped
    train_crop: str = "resize"  # "resize" (as evaluation) or "rrc" (random resized crop)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "channels": self.channels, "crop_pct": self.crop_pct,
                "train_crop": self.train_crop, "rrc_scale": list(self.rrc_scale), "rrc_ratio": list(self.rrc_ratio)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(tuple(d["size"]), int(d["channels"]), float(d.get("crop_pct", 1.0)), d.get("train_crop", "resize"),
                   tuple(d.get("rrc_scale", (0.08, 1.0))), tuple(d.get("rrc_ratio", (3 / 4, 4 / 3))))


class ImageUnreadable(CnnlabError):
    """An image file Pillow cannot decode."""


def _open(path: str | os.PathLike):
    from PIL import Image

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise ImageUnreadable(f"no such image file: {str(path)[:200]}") from None
    except Exception as e:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise ImageUnreadable(f"cannot decode the image {str(path)[:200]} ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def _rrc_box(w: int, h: int, pre: Preprocess, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop.get_params: ten tries, then a centre crop within the ratios."""
    area = w * h
    log_ratio = (math.log(pre.rrc_ratio[0]), math.log(pre.rrc_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*pre.rrc_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return left, top, left + cw, top + ch
    ratio = w / h
    if ratio < pre.rrc_ratio[0]:
        cw, ch = w, round(w / pre.rrc_ratio[0])
    elif ratio > pre.rrc_ratio[1]:
        cw, ch = round(h * pre.rrc_ratio[1]), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def decode(path: str | os.PathLike, pre: Preprocess, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode one image file into uint8 (C, H, W): resized to cover ``pre.size`` and centre-cropped,
    or with ``rng`` (training, ``train_crop="rrc"``) a random resized crop. Raises ImageUnreadable."""
    from PIL import Image

    H, W = pre.size
    try:
        with _open(path) as img:
            w, h = img.size
            random_crop = rng is not None and pre.train_crop == "rrc"
            if not random_crop:
                scale = max(H / h, W / w) / pre.crop_pct
                if img.format == "JPEG" and scale < 0.5:  # decode at 1/2, 1/4 or 1/8 scale directly
                    img.draft(pre.mode, (math.ceil(w * scale), math.ceil(h * scale)))
                    scale *= w / img.size[0]
                    w, h = img.size
            img = img.convert(pre.mode) if img.mode != pre.mode else img
            if random_crop:
                box = _rrc_box(w, h, pre, rng)
            elif (w, h) == (W, H) and pre.crop_pct == 1.0:
                box = None
            else:
                cw, ch = W / scale, H / scale  # the centre box, in source pixels, that becomes H x W
                box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
            if box is not None:
                img = img.resize((W, H), Image.BILINEAR, box=box)
            a = np.array(img, dtype=np.uint8)  # a writable copy
    except ImageUnreadable:
        raise
    except Exception as e:  # a truncated or corrupt file fails here, at load time
        raise ImageUnreadable(f"cannot decode the image {str(path)[:200]} ({_reason(e)})") from None
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))



class _Decode(torch.utils.data.Dataset):
    """Per-index decoding for DataLoader workers: returns (uint8 image or None, label, error or None).

    Random crops draw from a generator seeded by (seed, epoch, index), so they do not depend on
    which worker decodes which image."""

    def __init__(self, files: Files, pre: Preprocess, *, train: bool, seed: int = 0) -> None:
        self.root, self.paths, self.labels = str(files.root), files.paths, files.labels
        self.pre, self.train, self.seed, self.epoch = pre, train and pre.train_crop == "rrc", seed, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = os.path.join(self.root, self.paths[i].decode())
        rng = np.random.default_rng([self.seed, self.epoch, int(i)]) if self.train else None
        try:
            return int(i), torch.from_numpy(decode(path, self.pre, rng=rng)), int(self.labels[i]), None
        except CnnlabError as e:
            return int(i), None, int(self.labels[i]), str(e)


def _collate(items):
    """-> (uint8 images or None, labels, indices of the decoded images, errors of the others)."""
    good = [(i, x, y) for i, x, y, err in items if err is None]
    x = torch.stack([x for _, x, _ in good]) if good else None
    y = torch.tensor([y for _, _, y in good], dtype=torch.int64)
    return x, y, [i for i, _, _ in good], [err for _, _, _, err in items if err is not None]


def _data_loader(dataset: _Decode, batches: list[list[int]], workers: int, pin: bool):
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {"num_workers": workers, "prefetch_factor": 4, "persistent_workers": False}
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=_collate, pin_memory=pin, **kwargs)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


# --- the streaming loader -------------------------------------------------------------------------

class FolderLoader:
    """Batches decoded from files by DataLoader workers, with ``cnnlab.data.BatchLoader``'s interface.

    Iterating yields ``(x, y)``: x float32 (B, C, H, W) normalized (and augmented, on the device,
    after collation), y int64 (B,) -- or soft targets from mixup/cutmix, as BatchLoader. The
    order of epoch ``e`` is BatchLoader's (a permutation seeded by ``(seed, e)``), sharded the same
    way over ranks. ``start_batch`` skips that many batches of the next pass without decoding them
    (for resuming mid-epoch). Unreadable images are dropped from their batch and listed in
    ``skipped``; with ``strict=True`` the first one raises.
    """

    def __init__(self, files: Files, pre: Preprocess, *, batch_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], train: bool = False, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, device: torch.device | str = "cpu", channels_last: bool = False,
                 augment: Callable | None = None, num_classes: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int | None = None, strict: bool = False, track_indices: bool = False) -> None:
        if batch_size < 1:
            raise CnnlabError(f"batch size must be at least 1; received batch_size={batch_size}")
        c = pre.channels
        if len(mean) != c or len(std) != c:
            raise CnnlabError(f"mean/std need one value per channel ({c}); received mean={mean}, std={std}")
        self.files, self.pre = files, pre
        self.dataset = _Decode(files, pre, train=train, seed=seed)
        self.device = torch.device(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch, self.start_batch = seed, 0, 0
        self.channels_last = channels_last
        self.augment = None if augment is None or getattr(augment, "is_identity", False) else augment
        self.num_classes = num_classes
        self.rank, self.world_size = rank, world_size
        self.workers = default_workers() if workers is None else workers
        self.strict = strict
        self.skipped: list[str] = []  # "cannot decode the image PATH (reason)", each once
        # With track_indices, the file index of every image yielded, in order (evaluation: which
        # file each row of the predictions is, since unreadable files drop out of their batch).
        self.indices: list[int] | None = [] if track_indices else None
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.scale, self.shift, self.inv_std = 1.0 / (255.0 * std_t), -mean_t / std_t, 1.0 / std_t

    def __len__(self) -> int:
        n = len(self.files)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.files))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.files), generator=g)

    def batches(self) -> list[list[int]]:
        """This rank's share of every global batch of the current epoch, as file indices."""
        idx = self.order()
        out = []
        for start in range(0, len(idx), self.batch_size):
            batch = idx[start:start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                break
            if self.world_size > 1:
                batch = batch.tensor_split(self.world_size)[self.rank]
            out.append(batch.tolist())
        return out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, x.float(), self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batches()[self.start_batch:]
        self.start_batch = 0
        generator = None
        if self.augment is not None:
            generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + self.epoch + 1)
        pin = self.device.type == "cuda"
        for x, y, decoded, bad in _data_loader(self.dataset, batches, min(self.workers, len(batches)), pin):
            for message in bad:
                if self.strict:
                    raise ImageUnreadable(message + "; fix or remove it, or train without --strict to skip it")
                if message not in self.skipped:
                    self.skipped.append(message)
            if x is None:
                continue
            if self.indices is not None:
                self.indices.extend(decoded)
            x, y = x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)
            if generator is None:
                yield self.normalize(x), y
                continue
            # x.float() / 255 is a fresh batch, handed to a Pipeline to augment in place
            handed = {"inplace_ok": True} if isinstance(self.augment, Pipeline) else {}
            x, y = self.augment(x.float() / 255.0, y, num_classes=self.num_classes, generator=generator, **handed)
            x = torch.addcmul(self.shift, x, self.inv_std)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y


