"""Image folders as datasets: layouts, preprocessing, the cache, bad input, and the streaming loader."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import BatchLoader, Dataset
from cnnlab.data.augment import parse_augment
from cnnlab.data.folder import (FolderData, FolderLoader, ImageUnreadable, Preprocess, StreamingFolder, decode,
                                load_folder, make_loader, parse_folder_spec, scan)
from cnnlab.data.own import from_torch_datasets
from cnnlab.errors import CnnlabError


def write_image(path: Path, array: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return path


def class_image(k: int, i: int, size=(8, 8), rgb=False) -> np.ndarray:
    """Class k: a bright row at height k, plus image-specific noise (lossless formats keep it exactly)."""
    rng = np.random.default_rng(1000 * k + i)
    a = rng.integers(0, 60, size).astype(np.uint8)
    a[k % size[0]] = 250
    return np.stack([a, a // 2, 255 - a], -1) if rgb else a


def make_folder(root: Path, layout="splits", classes=("cat", "dog", "emu"), n=6, size=(8, 8), rgb=False,
                ext=".png", splits=("train", "test")) -> Path:
    for k, c in enumerate(classes):
        for i in range(n):
            if layout == "single":
                write_image(root / c / f"{i}{ext}", class_image(k, i, size, rgb))
            else:
                for s_i, split in enumerate(splits):
                    write_image(root / split / c / f"{i}{ext}", class_image(k, 100 * s_i + i, size, rgb))
    return root


def test_imagefolder_layout_gives_sorted_classes_labels_and_exact_pixels(tmp_path):
    root = make_folder(tmp_path / "pics")
    ds = load_folder(root, workers=0)
    assert isinstance(ds, FolderData) and isinstance(ds, Dataset)
    assert ds.classes == ("cat", "dog", "emu") and ds.input_size == (1, 8, 8)
    assert ds.train_x.dtype == torch.uint8 and len(ds.train_x) == 18 and len(ds.test_x) == 18
    assert ds.val_x is None and ds.name == f"folder:{root.resolve()}"
    # files are read in sorted order: dog/3.png is the 6 + 3 = 9th training image, label 1
    assert ds.train_y[9] == 1
    assert torch.equal(ds.train_x[9, 0], torch.from_numpy(class_image(1, 3)))
    assert torch.equal(ds.test_x[9, 0], torch.from_numpy(class_image(1, 103)))
    assert ds.info["sources"] == {"train": "train/", "test": "test/"}


def test_single_folder_is_split_per_class_reproducibly_and_disjointly(tmp_path):
    root = make_folder(tmp_path / "pics", layout="single", n=8)
    a = scan(root, test_split=0.25, val_split=0.25, seed=3)
    b = scan(root, test_split=0.25, val_split=0.25, seed=3)
    c = scan(root, test_split=0.25, val_split=0.25, seed=4)
    assert a.layout == "single" and list(a.test.paths) == list(b.test.paths)
    assert list(a.test.paths) != list(c.test.paths)
    everything = set(a.train.paths) | set(a.val.paths) | set(a.test.paths)
    assert len(everything) == 24 == len(a.train) + len(a.val) + len(a.test)
    for files in (a.train, a.val, a.test):  # stratified: every class in every split
        assert sorted(np.unique(files.labels)) == [0, 1, 2]
    assert len(a.test) == 6 and len(a.val) == 6
    ds = load_folder(root, test_split=0.25, val_split=0.25, seed=3, workers=0)
    assert len(ds.val_x) == 6 and len(ds.train_x) == 12


def test_imagenet_layout_reads_jpeg_folders_and_uses_val_as_test(tmp_path):
    root = make_folder(tmp_path / "imagenet", classes=("n01440764", "n01443537"), n=4, size=(20, 30), rgb=True,
                       ext=".JPEG", splits=("train", "val"))
    ds = load_folder(root, image_size=16, val_split=0.25, workers=0)
    assert ds.classes == ("n01440764", "n01443537") and ds.input_size == (3, 16, 16)
    assert len(ds.test_x) == 8 and len(ds.val_x) == 2 and len(ds.train_x) == 6
    assert "val/" in ds.info["sources"]["test"] and "train/" in ds.info["sources"]["val"]


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    a = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (20, 1))  # 20 high, 40 wide: a horizontal ramp
    path = write_image(tmp_path / "ramp.png", a)
    pre = Preprocess((10, 10), 1)
    got = decode(path, pre)[0].astype(int)
    # torchvision's Resize(10) then CenterCrop(10): 20x10, then columns 5..14
    ref = np.asarray(Image.fromarray(a).resize((20, 10), Image.BILINEAR))[:, 5:15].astype(int)
    assert got.shape == (10, 10) and np.abs(got - ref).max() <= 2
    # crop_pct 0.5: the shorter side goes to 20 (no resize here), then the centre 10x10 is cut out
    assert np.array_equal(decode(path, Preprocess((10, 10), 1, crop_pct=0.5))[0], a[5:15, 15:25])


def test_channel_count_is_detected_from_the_images(tmp_path):
    grey = make_folder(tmp_path / "grey")
    assert load_folder(grey, workers=0).input_size[0] == 1
    mixed = make_folder(tmp_path / "mixed")
    write_image(mixed / "train" / "cat" / "colour.png", class_image(0, 50, rgb=True))
    ds = load_folder(mixed, workers=0)
    assert ds.input_size == (3, 8, 8)
    # a greyscale image in an RGB folder is repeated over the three channels
    assert torch.equal(ds.train_x[1, 0], ds.train_x[1, 2])


def test_mean_and_std_are_those_of_the_training_split(tmp_path):
    ds = load_folder(make_folder(tmp_path / "pics", rgb=True), workers=0)
    x = ds.train_x.double() / 255
    assert np.allclose(ds.mean, x.mean((0, 2, 3)).numpy(), atol=1e-6)
    assert np.allclose(ds.std, x.std((0, 2, 3), unbiased=False).numpy(), atol=1e-6)


def test_images_of_different_sizes_need_an_image_size(tmp_path):
    root = make_folder(tmp_path / "pics")
    write_image(root / "train" / "cat" / "big.png", class_image(0, 9, size=(12, 12)))
    with pytest.raises(CnnlabError, match="differ in size.*--image-size"):
        load_folder(root, workers=0)
    assert load_folder(root, image_size=8, workers=0).input_size == (1, 8, 8)


def test_cache_is_reused_and_rebuilt_when_a_file_or_the_cache_changes(tmp_path):
    root = make_folder(tmp_path / "pics")
    first = load_folder(root, workers=0)
    assert first.info["cache"].startswith("wrote") and (root / ".cnnlab").is_dir()
    again = load_folder(root, workers=0)
    assert again.info["cache"].startswith("read") and torch.equal(again.train_x, first.train_x)
    # a changed file: new pixels, new size and mtime
    changed = root / "train" / "cat" / "0.png"
    write_image(changed, np.full((8, 8), 7, np.uint8))
    os.utime(changed, ns=(1, 1))
    rebuilt = load_folder(root, workers=0)
    assert rebuilt.info["cache"].startswith("wrote") and int(rebuilt.train_x[0].max()) == 7
    # a damaged cache file (bit flip in an array) fails its checksum and is rebuilt
    cache = next((root / ".cnnlab").glob("folder-*.npz"))
    with np.load(cache) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_x"][0, 0, 0, 0] ^= 1
    np.savez(cache, **arrays)
    assert load_folder(root, workers=0).info["cache"].startswith("wrote")
    # a new image is noticed too
    write_image(root / "train" / "dog" / "new.png", class_image(1, 77))
    assert len(load_folder(root, workers=0).train_x) == 19


def test_unreadable_images_are_skipped_and_named_or_refused_with_strict(tmp_path):
    root = make_folder(tmp_path / "pics")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    truncated = root / "train" / "emu" / "cut.jpg"
    write_image(truncated, class_image(2, 5, size=(32, 32)), quality=90)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageUnreadable, match="broken.png"):
        load_folder(root, strict=True, workers=0)
    assert not (root / ".cnnlab").exists()  # refused before anything was written
    ds = load_folder(root, workers=0)
    assert len(ds.train_x) == 18 and len(ds.info["skipped"]) == 2
    assert any("broken.png" in s for s in ds.info["skipped"]) and any("cut.jpg" in s for s in ds.info["skipped"])
    with pytest.raises(ImageUnreadable, match="broken.png"):  # also when read back from the cache
        load_folder(root, strict=True, workers=0)


@pytest.mark.parametrize("setup, message", [
    (lambda r: None, "no such folder"),
    (lambda r: (r.parent.mkdir(exist_ok=True), r.write_text("x")), "is a file, not a folder"),
    (lambda r: (r.mkdir(parents=True), (r / "a.png").write_bytes(b"x"), (r / "b.png").write_bytes(b"x")),
     r"no class subfolders \(it holds 2 files \(a.png, b.png\)\)"),
    (lambda r: (r.mkdir(parents=True),), r"no class subfolders \(it holds nothing\)"),
    (lambda r: ((r / "cat").mkdir(parents=True), (r / "cat" / "notes.txt").write_text("x")),
     r"1 class subfolders \(cat\) but no images .* 1 other files \(notes.txt\)"),
    (lambda r: ((r / "val" / "cat").mkdir(parents=True),), "has val/ but no train/ folder"),
    (lambda r: (make_folder(r), (r / "train" / "yak").mkdir()), "class folder .*yak holds no images"),
    (lambda r: (make_folder(r), write_image(r / "test" / "yak" / "0.png", class_image(0, 0))),
     r"class folders that train/ lacks \(yak\)"),
])
def test_bad_folders_are_one_sentence_saying_what_was_found(tmp_path, setup, message):
    root = tmp_path / "data" / "pics"
    setup(root)
    with pytest.raises(CnnlabError, match=message) as e:
        load_folder(root, workers=0)
    assert "\n" not in str(e.value)


def test_folder_spec_is_parsed():
    assert parse_folder_spec("folder:~/x") == Path("~/x").expanduser()
    assert parse_folder_spec("mnist") is None
    with pytest.raises(CnnlabError, match="needs a path"):
        parse_folder_spec("folder:")


# --- streaming ------------------------------------------------------------------------------------

def test_a_folder_over_the_memory_budget_streams(tmp_path):
    root = make_folder(tmp_path / "pics")
    ds = load_folder(root, memory_budget=1000, workers=0)  # 36 images x 64 bytes > 1000
    assert isinstance(ds, StreamingFolder) and ds.input_size == (1, 8, 8) and ds.classes == ("cat", "dog", "emu")
    assert isinstance(load_folder(root, memory_budget=10_000, workers=0), FolderData)


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_batches_equal_the_in_memory_batches(tmp_path, workers):
    root = make_folder(tmp_path / "pics", rgb=True)
    mem = load_folder(root, stream=False, workers=0)
    stream = load_folder(root, stream=True, workers=workers)
    assert stream.mean == mem.mean and stream.std == mem.std  # fewer images than the sample: all of them
    augment = parse_augment("flip,crop:2")
    kw = dict(batch_size=5, shuffle=True, seed=7, augment=augment, num_classes=3)
    a, b = make_loader(mem, "train", **kw), make_loader(stream, "train", **kw)
    assert isinstance(a, BatchLoader) and isinstance(b, FolderLoader) and len(a) == len(b) == 4
    for epoch in (1, 2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        pairs = list(zip(a, b, strict=True))
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6)
    ta, tb = make_loader(mem, "test", batch_size=64, shuffle=False), make_loader(stream, "test", batch_size=64,
                                                                                  shuffle=False)
    (xa, ya), = ta
    (xb, yb), = tb
    assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6)


def test_streaming_loader_shards_over_ranks_and_skips_batches_when_resuming(tmp_path):
    ds = load_folder(make_folder(tmp_path / "pics"), stream=True, workers=0)
    full = ds.loader("train", batch_size=6, seed=1)
    full.set_epoch(3)
    ys = [y for _, y in full]
    shards = []
    for rank in (0, 1):
        part = ds.loader("train", batch_size=6, seed=1, rank=rank, world_size=2)
        part.set_epoch(3)
        shards.append([y for _, y in part])
    for k, y in enumerate(ys):
        assert torch.equal(torch.cat([shards[0][k], shards[1][k]]), y)
    resumed = ds.loader("train", batch_size=6, seed=1)
    resumed.set_epoch(3)
    resumed.start_batch = 2
    assert [y.tolist() for _, y in resumed] == [y.tolist() for y in ys[2:]]
    assert len([y for _, y in resumed]) == len(ys)  # start_batch applies to one pass only


def test_streaming_skips_unreadable_images_by_path_or_refuses_with_strict(tmp_path):
    root = make_folder(tmp_path / "pics")
    (root / "test" / "dog" / "zzz.png").write_bytes(b"\x89PNG broken")
    ds = load_folder(root, stream=True, workers=0)
    loader = ds.loader("test", batch_size=4, shuffle=False)
    assert sum(len(y) for _, y in loader) == 18
    assert len(loader.skipped) == 1 and "zzz.png" in loader.skipped[0]
    strict = load_folder(root, stream=True, strict=True, workers=0).loader("test", batch_size=4, shuffle=False)
    with pytest.raises(ImageUnreadable, match="zzz.png"):
        list(strict)


def test_random_resized_crop_is_seeded_per_image_and_epoch(tmp_path):
    root = make_folder(tmp_path / "pics", size=(24, 24))
    ds = load_folder(root, image_size=12, train_crop="rrc", stream=True, workers=0)
    loader = ds.loader("train", batch_size=18, shuffle=False)

    def first_batch(epoch):
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    x1, x1_again, x2 = first_batch(1), first_batch(1), first_batch(2)
    assert x1.shape == (18, 1, 12, 12) and torch.equal(x1, x1_again) and not torch.equal(x1, x2)
    test = next(iter(ds.loader("test", batch_size=18, shuffle=False)))[0]  # evaluation: centre, fixed
    assert torch.equal(test, next(iter(ds.loader("test", batch_size=18, shuffle=False)))[0])
    with pytest.raises(CnnlabError, match="needs the streaming loader"):
        load_folder(root, image_size=12, train_crop="rrc", stream=False, workers=0)


# --- datasets of your own -------------------------------------------------------------------------

class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items, classes=None):
        self.items = items
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_torch_datasets_of_pil_arrays_or_tensors_become_one_in_memory_dataset():
    a = [class_image(k, i, rgb=True) for i in range(4) for k in range(3)]
    labels = [k for i in range(4) for k in range(3)]
    train = ListDataset([(Image.fromarray(x), y) for x, y in zip(a, labels)], classes=["cat", "dog", "emu"])
    test = ListDataset([(torch.from_numpy(x).permute(2, 0, 1).float() / 255, y) for x, y in zip(a[:3], labels)])
    val = ListDataset([(x, y) for x, y in zip(a[3:6], labels)])
    ds = from_torch_datasets(train, test, val=val, name="pets")
    assert ds.name == "pets" and ds.classes == ("cat", "dog", "emu") and ds.input_size == (3, 8, 8)
    assert torch.equal(ds.train_x[1], torch.from_numpy(a[1]).permute(2, 0, 1))
    assert torch.equal(ds.test_x, ds.train_x[:3])  # float [0, 1] tensors round back to the same bytes
    assert torch.equal(ds.val_x, ds.train_x[3:6]) and ds.train_y.tolist() == labels
    x = ds.train_x.double() / 255
    assert np.allclose(ds.mean, x.mean((0, 2, 3)).numpy(), atol=1e-6)


def test_torch_datasets_with_bad_items_are_refused_by_index():
    ok = [(np.zeros((8, 8), np.uint8), 0), (np.zeros((8, 8), np.uint8), 1)]
    with pytest.raises(CnnlabError, match="item 1 of the test dataset has shape"):
        from_torch_datasets(ListDataset(ok), ListDataset([ok[0], (np.zeros((9, 8), np.uint8), 0)]), name="x")
    with pytest.raises(CnnlabError, match=r"values in \[-1, 1\]; expected \[0, 1\]"):
        from_torch_datasets(ListDataset([(torch.linspace(-1, 1, 64).view(1, 8, 8), 0)]), ListDataset(ok), name="x")
    with pytest.raises(CnnlabError, match="is a str"):
        from_torch_datasets(ListDataset([("a.png", 0)]), ListDataset(ok), name="x")
    with pytest.raises(CnnlabError, match=r"labels of x lie in \[0, 1\]; expected 0..0"):
        from_torch_datasets(ListDataset(ok), ListDataset(ok), name="x", classes=["only"])
    with pytest.raises(CnnlabError, match="over the 0.0 GB budget"):
        from_torch_datasets(ListDataset(ok), ListDataset(ok), name="x", memory_budget=10)


def test_a_read_only_folder_is_cached_under_the_data_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pics")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == root.resolve() else real_access(p, mode))
    ds = load_folder(root, workers=0)
    assert not (root / ".cnnlab").exists() and str(tmp_path / "cache" / "folders") in ds.info["cache"]
    assert load_folder(root, workers=0).info["cache"].startswith("read")
    explicit = load_folder(root, workers=0, cache_dir=tmp_path / "mine")
    assert str(tmp_path / "mine") in explicit.info["cache"]
