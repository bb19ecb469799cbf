"""Folders of image files as datasets: the torchvision ``ImageFolder`` layout and ImageNet's.

    >>> from cnnlab.data.folder import load_folder, make_loader
    >>> ds = load_folder("~/pets", image_size=64)      # FolderData (in memory) or StreamingFolder
    >>> ds.classes, ds.input_size, ds.mean
    (('cat', 'dog'), (3, 64, 64), (0.48, 0.45, 0.41))
    >>> for x, y in make_loader(ds, "train", batch_size=64, seed=0):   # float32, normalized
    ...     ...

Layouts, recognized by looking at the folder:

- ``root/train/<class>/<image>``, with ``root/val/<class>/...`` and/or ``root/test/<class>/...``
  beside it (``training``, ``valid``, ``validation``, ``testing`` are read too). With ``val/`` and
  no ``test/`` -- the ImageNet layout ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` -- the
  ``val/`` images are the test split, as ImageNet results are reported on them; a validation
  split is then held out of ``train/`` when ``val_split > 0``. With neither, ``test_split`` of
  ``train/`` is held out as the test split.
- ``root/<class>/<image>``: one folder, split per class (stratified, seeded) into test
  (``test_split``), validation (``val_split``) and training images.

Images are found recursively below each class folder; names starting with a dot are ignored.
Class names are the folder names in sorted order (label ``k`` is the ``k``-th name), as in
torchvision. Decoding uses Pillow.

Preprocessing (``Preprocess``): every image is resized so that it covers ``image_size`` x
``image_size`` -- its shorter side becomes ``image_size / crop_pct`` -- and centre-cropped
(``crop_pct`` 0.875 is the usual ImageNet evaluation, resize 256 and crop 224). Training
images get the same, or with ``train_crop="rrc"`` a random resized crop of the full-resolution
image (Szegedy et al. 2015, sec. 6; streaming only -- in memory, ask for ``--augment rrc`` on
the stored images). ``image_size=None`` keeps the images' own size when they all share it. The
channel count is detected: 1 when every image of a sample is greyscale, else 3 (RGB; alpha dropped).

Small folders (their decoded uint8 tensors fit ``memory_budget``, 2 GB by default) are decoded
once into a ``FolderData`` -- a ``cnnlab.data.Dataset`` with a validation split -- and cached in
``root/.cnnlab/`` (or, when the folder is read-only, under the cnnlab data cache). The cache
records a fingerprint of every file's name, size and modification time and a checksum of its
arrays; a change in either rebuilds it. Larger folders become a ``StreamingFolder`` whose
loaders (``FolderLoader``) decode batches in ``torch.utils.data.DataLoader`` worker processes
and yield them like ``cnnlab.data.BatchLoader``: uint8 batches are collated, moved to the
device, augmented on the whole batch and normalized there, so every batch augmentation of
``cnnlab.data.augment`` applies unchanged. Mean and standard deviation per channel are those of
the training split (exact in memory; from a seeded sample of ``STATS_SAMPLE`` images when
streaming, cached beside the folder).

An image that cannot be decoded is skipped and reported by path (``info["skipped"]`` in memory,
``FolderLoader.skipped`` when streaming), or refused with ``strict=True``.

Decoding and the streaming loader live in ``cnnlab.data.imagefiles``; datasets of your own from
Python (any ``torch.utils.data.Dataset``) in ``cnnlab.data.own``.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.datasets import Dataset
from cnnlab.data.fetch import data_root
from cnnlab.data.imagefiles import (IMAGE_EXTENSIONS, Files, FolderLoader, ImageUnreadable, Preprocess, _data_loader,
                                    _Decode, decode, default_workers)
from cnnlab.data.loader import BatchLoader
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open, atomic_write_text

__all__ = ["DEFAULT_MEMORY_BUDGET", "IMAGE_EXTENSIONS", "Files", "FolderData", "FolderIndex", "FolderLoader",
           "ImageUnreadable", "Preprocess", "StreamingFolder", "decode", "load_folder", "make_loader", "mean_std",
           "parse_folder_spec", "scan"]
SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
PREFIX = "folder:"
CACHE_DIR = ".cnnlab"
CACHE_FORMAT = "cnnlab-folder/1"
DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of decoded uint8 images held in memory
HEADER_SAMPLE = 256  # images whose headers decide the channel count and the native size
STATS_SAMPLE = 1000  # training images decoded for the mean and std of a streamed folder
TRAIN_CROPS = ("resize", "rrc")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


def _short(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(str(s)[:40] for s in items[:n])
    return shown + (", ..." if len(items) > n else "")


def parse_folder_spec(data: str) -> Path | None:
    """``"folder:PATH"`` -> ``Path(PATH)`` (``~`` expanded); anything else -> None."""
    if not data.startswith(PREFIX):
        return None
    path = data[len(PREFIX):]
    if not path:
        raise CnnlabError("--data folder: needs a path, e.g. --data folder:~/pictures")
    return Path(path).expanduser()


# --- finding the files ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderIndex:
    """What ``scan`` found: the layout, the classes, the files of each split and their fingerprint."""

    root: Path
    layout: str  # "splits" (root/train/<class>/...) or "single" (root/<class>/...)
    classes: tuple[str, ...]
    train: Files
    val: Files | None
    test: Files
    sources: dict[str, str]  # split -> where its images come from, for the run's summary
    fingerprint: str  # sha256 of every file's relative path, size and mtime


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if not e.name.startswith(".") and e.is_dir())
    except OSError as e:
        raise CnnlabError(f"cannot read the folder {path}: {e.strerror}") from None


def _walk(folder: Path) -> tuple[list[tuple[str, int, int]], list[str]]:
    """Images below ``folder`` as (path relative to it, size, mtime_ns), and the other files' names."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if not _is_image(name):
                others.append(name)
                continue
            st = os.stat(full)
            images.append((os.path.relpath(full, folder), st.st_size, st.st_mtime_ns))
    return images, others


def _class_folders(folder: Path, what: str) -> tuple[list[str], dict[str, list[tuple[str, int, int]]]]:
    """The class subfolders of ``folder`` and their images; a folder without them is one error."""
    classes = _subdirs(folder)
    if not classes:
        loose = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        found = f"{len(loose)} files ({_short(loose)})" if loose else "nothing"
        raise CnnlabError(f"{what} {folder} has no class subfolders (it holds {found}); expected "
                          f"{folder}/<class>/<image>, one subfolder per class")
    per_class, others = {}, []
    for c in classes:
        images, other = _walk(folder / c)
        per_class[c] = images
        others += other
    if not any(per_class.values()):
        found = f"{len(others)} other files ({_short(others)})" if others else "no files"
        raise CnnlabError(f"{what} {folder} has {len(classes)} class subfolders ({_short(classes)}) but no images "
                          f"({', '.join(IMAGE_EXTENSIONS[:5])}, ...); they hold {found}")
    empty = [c for c, imgs in per_class.items() if not imgs]
    if empty and what == "the training folder":
        raise CnnlabError(f"the class folder {folder / empty[0]} holds no images ({len(empty)} of {len(classes)} "
                          f"class folders are empty); add images or remove it")
    return classes, per_class


def _files(root: Path, folder: Path, classes: Sequence[str], per_class: dict, label_of: dict[str, int]
           ) -> tuple[Files, list[str]]:
    paths, labels, finger = [], [], []
    rel = os.path.relpath(folder, root)
    for c in classes:
        for name, size, mtime in per_class[c]:
            p = os.path.normpath(os.path.join(rel, c, name))
            paths.append(p.encode())
            labels.append(label_of[c])
            finger.append(f"{p}\t{size}\t{mtime}")
    arr = np.array(paths, dtype=bytes) if paths else np.zeros(0, dtype="S1")
    return Files(root, arr, np.array(labels, dtype=np.int64)), finger


def _split_per_class(files: Files, fractions: Sequence[float], seed: int) -> list[Files]:
    """Split ``files`` per class, seeded: one Files per fraction, then the rest (stratified)."""
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    g = np.random.default_rng(seed)
    for label in np.unique(files.labels):
        idx = np.flatnonzero(files.labels == label)
        idx = idx[g.permutation(len(idx))]
        start = 0
        for k, f in enumerate(fractions):
            n = min(int(round(len(idx) * f)), max(len(idx) - 1 - start, 0))  # keep one for training
            parts[k].append(idx[start:start + n])
            start += n
        parts[-1].append(idx[start:])
    return [files.subset(np.sort(np.concatenate(p))) for p in parts]


def scan(path: str | os.PathLike, *, val_split: float = 0.0, test_split: float = 0.2, seed: int = 0
         ) -> FolderIndex:
    """Find the layout, classes and files of an image folder (nothing is decoded or written)."""
    for name, f in (("val_split", val_split), ("test_split", test_split)):
        if not 0.0 <= f < 1.0:
            raise CnnlabError(f"{name} must be a fraction in [0, 1); received {name}={f}")
    root = Path(path).expanduser()
    if not root.exists():
        raise CnnlabError(f"no such folder: {str(root)[:200]} (expected a folder of class subfolders of images)")
    if not root.is_dir():
        raise CnnlabError(f"{str(root)[:200]} is a file, not a folder of class subfolders of images")
    root = root.resolve()
    top = _subdirs(root)
    split_dirs = {split: next((d for d in top if d in names), None) for split, names in SPLIT_DIRS.items()}
    if split_dirs["train"] is not None:
        layout = "splits"
        classes, per_class = _class_folders(root / split_dirs["train"], "the training folder")
        label_of = {c: i for i, c in enumerate(classes)}
        train, finger = _files(root, root / split_dirs["train"], classes, per_class, label_of)
        given: dict[str, Files] = {}
        for split in ("val", "test"):
            if split_dirs[split] is None:
                continue
            folder = root / split_dirs[split]
            cls, per = _class_folders(folder, f"the {split} folder")
            unknown = [c for c in cls if c not in label_of and per[c]]
            if unknown:
                raise CnnlabError(f"{folder} has class folders that {split_dirs['train']}/ lacks "
                                  f"({_short(unknown)}); every class needs training images")
            files, more = _files(root, folder, [c for c in cls if c in label_of], per, label_of)
            given[split], finger = files, finger + more
        sources = {"train": f"{split_dirs['train']}/"}
        if "test" in given:
            test = given["test"]
            sources["test"] = f"{split_dirs['test']}/"
            val = given.get("val")
            if val is not None:
                sources["val"] = f"{split_dirs['val']}/"
        elif "val" in given:  # the ImageNet layout: val/ is what results are reported on
            test, val = given["val"], None
            sources["test"] = f"{split_dirs['val']}/ (no test/ folder)"
        else:
            if test_split <= 0:
                raise CnnlabError(f"{root} has a {split_dirs['train']}/ folder but no val/ or test/ folder; "
                                  f"pass a test_split in (0, 1) to hold test images out of it")
            test, train = _split_per_class(train, [test_split], seed)
            sources["test"] = f"{test_split:g} of {split_dirs['train']}/ per class, seed {seed}"
            val = None
        if val is None and val_split > 0:
            val, train = _split_per_class(train, [val_split], seed + 1)
            sources["val"] = f"{val_split:g} of {split_dirs['train']}/ per class, seed {seed + 1}"
    else:
        if split_dirs["val"] or split_dirs["test"]:
            raise CnnlabError(f"{root} has {split_dirs['val'] or split_dirs['test']}/ but no train/ folder; "
                              f"expected {root}/train/<class>/<image>")
        layout = "single"
        classes, per_class = _class_folders(root, "the training folder")
        label_of = {c: i for i, c in enumerate(classes)}
        every, finger = _files(root, root, classes, per_class, label_of)
        if test_split <= 0:
            raise CnnlabError(f"{root} is one folder of classes; pass a test_split in (0, 1) to hold test images "
                              f"out of it (received {test_split})")
        if val_split > 0:
            test, val, train = _split_per_class(every, [test_split, val_split], seed)
            sources = {"val": f"{val_split:g} of the images per class, seed {seed}"}
        else:
            (test, train), val = _split_per_class(every, [test_split], seed), None
            sources = {}
        sources = {"train": "the rest", "test": f"{test_split:g} of the images per class, seed {seed}", **sources}
    if len(test) == 0:
        raise CnnlabError(f"the test split of {root} is empty ({sources['test']}); add images or raise test_split")
    if val is not None and len(val) == 0:
        raise CnnlabError(f"the validation split of {root} is empty ({sources['val']}); add images or raise val_split")
    digest = hashlib.sha256("\n".join([layout, *classes, *finger]).encode()).hexdigest()
    return FolderIndex(root, layout, tuple(classes), train, val, test, sources, digest)


def _detect(index: FolderIndex, image_size: int | None, seed: int) -> tuple[int, tuple[int, int]]:
    """Channel count and (H, W) from the headers of a seeded sample of training images."""
    from PIL import Image

    g = np.random.default_rng(seed)
    n = len(index.train)
    picks = g.choice(n, size=min(n, HEADER_SAMPLE), replace=False) if n else []
    grey, sizes = True, {}
    for i in picks:
        try:
            with Image.open(index.train.path(int(i))) as img:
                mode, size = img.mode, img.size
                if mode == "P":  # a palette: grey only if every entry is
                    rgb = np.asarray(img.convert("RGB"))
                    mode = "L" if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all() else "RGB"
        except Exception:
            continue  # reported when it is decoded
        grey &= mode in _GREY_MODES
        sizes[size] = sizes.get(size, 0) + 1
    if not sizes:
        raise CnnlabError(f"none of {len(picks)} sampled training images of {index.root} can be opened by Pillow "
                          f"(e.g. {index.train.path(int(picks[0]))})")
    if image_size is not None:
        if image_size < 1:
            raise CnnlabError(f"image size must be at least 1 pixel; received image_size={image_size}")
        return (1 if grey else 3), (image_size, image_size)
    if len(sizes) > 1:
        common = sorted(sizes, key=sizes.get, reverse=True)
        raise CnnlabError(f"the images of {index.root} differ in size ({_short([f'{w}x{h}' for w, h in common])}); "
                          f"pass an image size (--image-size N) to resize them to N x N")
    (w, h), = sizes
    return (1 if grey else 3), (h, w)


# --- the two kinds of folder dataset --------------------------------------------------------------

@dataclass
class FolderData(Dataset):
    """A folder decoded into memory: a ``cnnlab.data.Dataset`` plus its validation split (if any)
    and ``info`` (root, layout, where each split comes from, skipped files, the preprocessing)."""

    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamingFolder:
    """A folder too large for memory: the same descriptive fields as ``Dataset`` and loaders that
    decode from disk (``loader``)."""

    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    index: FolderIndex
    preprocess: Preprocess
    workers: int
    strict: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.preprocess.channels, *self.preprocess.size)

    def split(self, name: str) -> Files | None:
        return {"train": self.index.train, "val": self.index.val, "test": self.index.test}[name]

    def loader(self, split: str, *, train: bool | None = None, **kwargs) -> FolderLoader:
        """A FolderLoader over ``split`` ("train", "val", "test"); ``train`` (default: split is
        "train") applies the training crop. Other keyword arguments are BatchLoader's."""
        files = self.split(split)
        if files is None:
            raise CnnlabError(f"{self.name} has no {split} split")
        kwargs.setdefault("workers", self.workers)
        kwargs.setdefault("strict", self.strict)
        return FolderLoader(files, self.preprocess, mean=kwargs.pop("mean", self.mean), std=kwargs.pop("std", self.std),
                            train=split == "train" if train is None else train, **kwargs)


def make_loader(ds: Dataset | StreamingFolder, split: str, **kwargs) -> BatchLoader | FolderLoader:
    """A loader over ``split`` of any dataset: BatchLoader in memory, FolderLoader when streaming.

    ``kwargs`` are BatchLoader's (batch_size, shuffle, seed, device, channels_last, augment,
    num_classes, rank, world_size, drop_last); mean and std default to the dataset's."""
    kwargs.setdefault("mean", ds.mean)
    kwargs.setdefault("std", ds.std)
    if isinstance(ds, StreamingFolder):
        return ds.loader(split, **kwargs)
    x, y = getattr(ds, f"{split}_x", None), getattr(ds, f"{split}_y", None)
    if x is None:
        raise CnnlabError(f"{ds.name} has no {split} split")
    for key in ("train", "workers", "strict"):  # FolderLoader's own
        kwargs.pop(key, None)
    return BatchLoader(x, y, **kwargs)


# --- caches ---------------------------------------------------------------------------------------

def _cache_dir(root: Path, cache_dir: str | os.PathLike | None) -> Path:
    """``root/.cnnlab`` when writable, else a folder under the cnnlab data cache named by root's path."""
    if cache_dir is not None:
        return Path(cache_dir)
    beside = root / CACHE_DIR
    if os.access(beside if beside.exists() else root, os.W_OK):
        return beside
    return data_root() / "folders" / hashlib.sha256(str(root).encode()).hexdigest()[:16]


def _params_key(**params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


_ARRAYS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def _checksum(arrays: dict[str, np.ndarray], fingerprint: str) -> str:
    h = hashlib.blake2b(fingerprint.encode(), digest_size=32)
    for k in _ARRAYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}{a.shape}{a.dtype}".encode())
        h.update(a.data)
    return h.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The cached arrays if the file is intact and was built from exactly these files; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in _ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != fingerprint:
        return None
    if meta.get("checksum") != _checksum(arrays, fingerprint):
        return None
    return {**arrays, "meta": meta}


def _write_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    except OSError:
        return False  # a read-only or full disk: the folder is decoded again next time
    return True


# --- loading --------------------------------------------------------------------------------------

def _decode_all(files: Files, pre: Preprocess, workers: int, progress: Progress | None, done: int, total: int
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    C, (H, W) = pre.channels, pre.size
    x = np.empty((len(files), C, H, W), dtype=np.uint8)
    keep = np.zeros(len(files), dtype=bool)
    bad: list[str] = []
    n = len(files)
    batches = [list(range(s, min(s + 64, n))) for s in range(0, n, 64)]
    dataset = _Decode(files, pre, train=False)
    workers = min(workers, len(batches)) if n >= 256 else 0  # forking costs more than a few images
    for xb, _, ok, errors in _data_loader(dataset, batches, workers, False):
        bad += errors
        if xb is not None:
            x[ok] = xb.numpy()
            keep[ok] = True
        done += len(ok) + len(errors)
        if progress is not None:
            progress(done, total)
    return x[keep], files.labels[keep], bad


def mean_std(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of x/255 over uint8 (N, C, H, W), in float64, in chunks."""
    C = x.shape[1]
    s = np.zeros(C)
    s2 = np.zeros(C)
    count = 0
    for start in range(0, len(x), 1024):
        chunk = x[start:start + 1024].astype(np.float64) / 255.0
        s += chunk.sum(axis=(0, 2, 3))
        s2 += (chunk ** 2).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel: leave it unscaled
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_folder(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    crop_pct: float = 1.0,
    train_crop: str = "resize",
    val_split: float = 0.0,
    test_split: float = 0.2,
    seed: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    stream: bool | None = None,
    strict: bool = False,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
) -> FolderData | StreamingFolder:
    """An image folder as a dataset: decoded into memory when it fits ``memory_budget`` bytes (or
    ``stream=False``), else streamed from disk (or ``stream=True``). See the module docstring.

    ``progress(done, total)`` is called while images are decoded; ``log`` gets one line per event.
    """
    log = log or (lambda message: None)
    if not 0.0 < crop_pct <= 1.0:
        raise CnnlabError(f"crop_pct must be in (0, 1]; received crop_pct={crop_pct}")
    if train_crop not in TRAIN_CROPS:
        raise CnnlabError(f"unknown train_crop {train_crop!r}; valid: {', '.join(TRAIN_CROPS)}")
    index = scan(path, val_split=val_split, test_split=test_split, seed=seed)
    channels, size = _detect(index, image_size, seed)
    pre = Preprocess(size, channels, crop_pct, train_crop)
    name = f"{PREFIX}{index.root}"
    n_total = len(index.train) + len(index.test) + (len(index.val) if index.val is not None else 0)
    need = n_total * channels * size[0] * size[1]
    # A random resized crop is cut from the full-resolution file, so it always streams by default.
    in_memory = (need <= memory_budget and train_crop != "rrc") if stream is None else not stream
    if in_memory and train_crop == "rrc":
        raise CnnlabError("a random resized crop of the full-resolution image needs the streaming loader "
                          "(stream=True); in memory, use the batch augmentation rrc on the stored images instead")
    workers = default_workers() if workers is None else workers
    info = {"root": str(index.root), "layout": index.layout, "sources": index.sources,
            "preprocess": pre.to_dict(), "images": {"train": len(index.train), "test": len(index.test),
                                                     "val": len(index.val) if index.val is not None else 0},
            "decoded_bytes": need, "memory_budget": memory_budget, "in_memory": in_memory}
    cache = _cache_dir(index.root, cache_dir)
    key = _params_key(size=size, channels=channels, crop_pct=crop_pct, val_split=val_split, test_split=test_split,
                      seed=seed)
    if not in_memory:
        mean, std = _streaming_stats(index, pre, cache / f"stats-{key}.json", workers, strict)
        info["stats"] = f"mean and std of {min(STATS_SAMPLE, len(index.train))} sampled training images"
        why = (f"{need / 2**30:.1f} GB decoded exceeds the {memory_budget / 2**30:.1f} GB memory budget"
               if need > memory_budget else "random resized crops are cut from the files" if train_crop == "rrc"
               else "asked for")
        log(f"{name}: {n_total:,} images stream from disk ({why})")
        return StreamingFolder(name, index.classes, mean, std, index, pre, workers, strict, info)

    cache_file = cache / f"folder-{key}.npz"
    cached = _read_cache(cache_file, index.fingerprint)
    if cached is not None:
        arrays, meta = cached, cached["meta"]
        info["cache"] = f"read {cache_file}"
    else:
        arrays, bad, done = {}, [], 0
        splits = {"train": index.train, "val": index.val, "test": index.test}
        for split, files in splits.items():
            if files is None:
                arrays[f"{split}_x"] = np.zeros((0, channels, *size), np.uint8)
                arrays[f"{split}_y"] = np.zeros(0, np.int64)
                continue
            x, y, errors = _decode_all(files, pre, workers, progress, done, n_total)
            if errors and strict:
                raise ImageUnreadable(f"{errors[0]}; {len(errors)} image(s) of {split} cannot be decoded "
                                      f"(fix or remove them, or load without strict to skip them)")
            done += len(files)
            arrays[f"{split}_x"], arrays[f"{split}_y"], bad = x, y, bad + errors
        if len(arrays["train_x"]) == 0 or len(arrays["test_x"]) == 0:
            raise CnnlabError(f"no image of the {'training' if len(arrays['train_x']) == 0 else 'test'} split of "
                              f"{index.root} can be decoded ({len(bad)} unreadable, e.g. {bad[0]})")
        mean, std = mean_std(arrays["train_x"])
        meta = {"format": CACHE_FORMAT, "fingerprint": index.fingerprint, "mean": mean, "std": std,
                "skipped": bad, "classes": list(index.classes)}
        meta["checksum"] = _checksum(arrays, index.fingerprint)
        written = _write_cache(cache_file, arrays, meta)
        info["cache"] = f"wrote {cache_file}" if written else f"could not write {cache_file}"
    info["skipped"] = list(meta["skipped"])
    if meta["skipped"]:
        if strict:
            raise ImageUnreadable(f"{meta['skipped'][0]}; {len(meta['skipped'])} image(s) cannot be decoded "
                                  f"(fix or remove them, or load without strict to skip them)")
        log(f"{name}: skipped {len(meta['skipped'])} unreadable image(s), e.g. {meta['skipped'][0]}")
    t = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in _ARRAYS}
    has_val = index.val is not None
    return FolderData(name, t["train_x"], t["train_y"], t["test_x"], t["test_y"], index.classes,
                      tuple(meta["mean"]), tuple(meta["std"]),
                      val_x=t["val_x"] if has_val else None, val_y=t["val_y"] if has_val else None, info=info)


def _streaming_stats(index: FolderIndex, pre: Preprocess, path: Path, workers: int, strict: bool
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of a seeded sample of training images, cached in ``path`` by the folder's fingerprint."""
    try:
        saved = json.loads(path.read_text())
        body = {k: saved[k] for k in ("format", "fingerprint", "mean", "std")}
        if (saved["checksum"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
                and body["format"] == CACHE_FORMAT and body["fingerprint"] == index.fingerprint):
            return tuple(body["mean"]), tuple(body["std"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    g = np.random.default_rng(0)
    n = len(index.train)
    sample = index.train.subset(np.sort(g.choice(n, size=min(n, STATS_SAMPLE), replace=False)))
    x, _, errors = _decode_all(sample, pre, workers, None, 0, len(sample))
    if errors and strict:
        raise ImageUnreadable(f"{errors[0]}; fix or remove it, or load without strict to skip it")
    if len(x) == 0:
        raise CnnlabError(f"none of {len(sample)} sampled training images of {index.root} can be decoded "
                          f"(e.g. {errors[0]})")
    mean, std = mean_std(x)
    body = {"format": CACHE_FORMAT, "fingerprint": index.fingerprint, "mean": mean, "std": std}
    body["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    try:
        atomic_write_text(path, json.dumps(body, indent=1) + "\n")
    except OSError:
        pass  # read-only: computed again next time
    return tuple(mean), tuple(std)
