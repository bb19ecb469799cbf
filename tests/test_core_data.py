"""Hardening of the data layer: a checksummed processed cache, verified extracted CIFAR batches,
pickles that declare absurd arrays, stale temporary files, and a data root that is a file."""
import gzip
import hashlib
import io
import os
import pickle
import time

import numpy as np
import pytest

from cnnlab.data import datasets, fetch, formats
from cnnlab.errors import CnnlabError


def arrays(n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    return {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_y": rng.integers(0, 10, n_train).astype(np.int64),
            "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_y": rng.integers(0, 10, n_test).astype(np.int64)}


def idx_files(a):
    return {name: gzip.compress(formats.write_idx(a[key]))
            for name, key in zip(datasets._IDX_NAMES, datasets._KEYS)}


@pytest.fixture
def local_mnist(tmp_path, monkeypatch):
    """A data root whose MNIST source is four generated IDX files pinned by sha256; no mirrors."""
    a = arrays()
    files = idx_files(a)
    (tmp_path / "mnist").mkdir()
    for name, blob in files.items():
        (tmp_path / "mnist" / name).write_bytes(blob)
    source = fetch.Source("the test IDX files", {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
                          parse=datasets._parse_idx_files)
    spec = datasets.SPECS["mnist"]
    monkeypatch.setitem(datasets.SPECS, "mnist", datasets.DatasetSpec(
        "mnist", lambda: [source], spec.classes, spec.mean, spec.std, spec.input_size))
    return tmp_path, a


def test_cache_built_from_verified_files_records_a_checksum_and_reloads(local_mnist):
    root, a = local_mnist
    ds = datasets.load_dataset("mnist", root)
    with np.load(root / "mnist" / datasets.CACHE_FILE) as z:
        assert str(z["sha256"]) == datasets.arrays_sha256(a)
    for name in datasets._IDX_NAMES:
        (root / "mnist" / name).unlink()  # from now on only the cache is there
    assert datasets.load_dataset("mnist", root).test_x.equal(ds.test_x)


def test_a_changed_cache_is_refused_with_one_sentence(local_mnist):
    root, a = local_mnist
    datasets.load_dataset("mnist", root)
    cache = root / "mnist" / datasets.CACHE_FILE
    with np.load(cache) as z:
        recorded, stored = z["sha256"], {k: z[k] for k in datasets._KEYS}
    stored["test_y"][0] = (stored["test_y"][0] + 1) % 10  # one label flipped, checksum kept
    np.savez(cache, **stored, sha256=recorded)
    with pytest.raises(CnnlabError, match="has changed since cnnlab built it") as err:
        datasets.load_dataset("mnist", root)
    assert "\n" not in str(err.value)


def test_hand_made_cache_without_checksum_is_rebuilt_from_the_verified_files(local_mnist):
    root, a = local_mnist
    fake = arrays(3000, 10, seed=5)
    np.savez(root / "mnist" / datasets.CACHE_FILE, **fake)
    lines = []
    ds = datasets.load_dataset("mnist", root, log=lines.append)
    assert len(ds.train_x) == 30 and np.array_equal(ds.train_x[:, 0].numpy(), a["train_x"])
    assert any("no checksum" in line for line in lines)


def test_hand_made_cache_without_the_files_to_rebuild_it_is_not_accepted(local_mnist):
    root, _ = local_mnist
    for name in datasets._IDX_NAMES:
        (root / "mnist" / name).unlink()
    np.savez(root / "mnist" / datasets.CACHE_FILE, **arrays(3000, 10, seed=5))
    with pytest.raises(CnnlabError, match="not trusted") as err:
        datasets.load_dataset("mnist", root)
    assert "\n" not in str(err.value)


def test_extracted_cifar_batch_that_changed_is_refused(tmp_path, monkeypatch):
    batch = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=2)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    md5 = {n: "md5:" + hashlib.md5(batch).hexdigest() for n in names}
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for n in names:
        (folder / n).write_bytes(batch)
    spec = datasets.SPECS["cifar10"]
    sources = lambda: datasets._cifar_sources("none.tar.gz", "0" * 64, "cifar-10-batches-py", md5,  # noqa: E731
                                              names[:5], names[5:], b"labels")[:1]
    monkeypatch.setitem(datasets.SPECS, "cifar10", datasets.DatasetSpec(
        "cifar10", sources, spec.classes, spec.mean, spec.std, spec.input_size))
    assert datasets.load_dataset("cifar10", tmp_path).train_x.shape == (10, 3, 32, 32)
    (tmp_path / "cifar10" / datasets.CACHE_FILE).unlink()
    flipped = bytearray(batch)
    flipped[len(batch) // 2] ^= 1  # one bit of one pixel
    (folder / "data_batch_3").write_bytes(bytes(flipped))
    with pytest.raises(CnnlabError, match="data_batch_3 has md5"):
        datasets.load_dataset("cifar10", tmp_path)


def test_real_cifar_batch_digests_are_pinned():
    sources = datasets.SPECS["cifar10"].sources()
    assert all(v.startswith("md5:") and len(v) == 36 for v in sources[0].files.values())
    assert len(datasets.SPECS["cifar100"].sources()[0].files) == 2


class _HugeArray:
    """Pickles as numpy's ``_reconstruct(ndarray, (2**40,), "b")``: a 1 TiB array, as a tampered
    file could declare (an ordinary pickle asks for shape (0,) and fills the data in later)."""

    def __reduce__(self):
        return np.ndarray.__reduce__(np.zeros(0, np.uint8))[0], (np.ndarray, (2 ** 40,), b"b")


def test_pickle_declaring_a_terabyte_array_is_refused_before_allocating():
    with pytest.raises(CnnlabError, match="declares 1,099,511,627,776 bytes"):
        formats.parse_cifar_batch(pickle.dumps({b"data": _HugeArray(), b"labels": [0]}, protocol=2), "data_batch_1", b"labels")


@pytest.mark.parametrize("payload", [
    {b"data": [[1, 2]], b"labels": [0]},                          # a list, not an array
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},     # one label for two images
    {b"data": np.zeros((1, 3072), np.uint8), b"labels": ["a"]},   # a label that is not a number
    {b"data": np.zeros((1, 3072), np.float32), b"labels": [0]},   # not uint8
])
def test_malformed_cifar_batches_are_one_sentence(payload):
    with pytest.raises(CnnlabError) as err:
        formats.parse_cifar_batch(pickle.dumps(payload, protocol=2), "b", b"labels")
    assert "\n" not in str(err.value)


def test_stale_temporary_files_of_dead_writers_are_removed(local_mnist):
    root, _ = local_mnist
    stale = root / "mnist" / f".{datasets.CACHE_FILE}.abc123.tmp"
    fresh = root / "mnist" / f".{datasets.CACHE_FILE}.def456.tmp"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = time.time() - 2 * fetch.STALE_TEMP_S
    os.utime(stale, (old, old))
    datasets.load_dataset("mnist", root)
    assert not stale.exists() and fresh.exists()  # a live writer's file is left alone


@pytest.mark.parametrize("where", ["root", "dataset"])
def test_data_root_that_is_a_file_is_one_sentence(tmp_path, where):
    if where == "root":
        path = tmp_path / "notadir"
        path.write_text("x")
        root = path
    else:
        (tmp_path / "mnist").write_text("x")
        root = tmp_path
    with pytest.raises(CnnlabError, match="is a file") as err:
        datasets.load_dataset("mnist", root)
    assert "\n" not in str(err.value)


def test_fashion_mnist_mirrors_are_all_https_endpoints_that_serve_https():
    (source,) = datasets.SPECS["fashion-mnist"].sources()
    assert source.mirrors and all(m.startswith("https://") for m in source.mirrors)
    assert not any("s3-website" in m for m in source.mirrors)  # website endpoints serve http only


def test_verify_accepts_sha256_and_md5_pins():
    data = b"abc"
    fetch.verify(data, hashlib.sha256(data).hexdigest(), "f")
    fetch.verify(data, "md5:" + hashlib.md5(data).hexdigest(), "f")
    with pytest.raises(CnnlabError, match="md5"):
        fetch.verify(b"abd", "md5:" + hashlib.md5(data).hexdigest(), "f")


def test_cache_checksum_covers_shape_and_dtype():
    a = arrays()
    b = dict(a, train_x=a["train_x"].reshape(30, 784))
    assert datasets.arrays_sha256(a) != datasets.arrays_sha256(b)
    assert datasets.arrays_sha256(a) == datasets.arrays_sha256({k: v.copy() for k, v in a.items()})
