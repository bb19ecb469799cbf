"""The file formats: IDX, the CIFAR pickle batches, mnist.pkl.gz, and their corrupt variants."""
import gzip
import pickle

import numpy as np
import pytest

from cnnlab.data import formats
from cnnlab.errors import CnnlabError


def test_idx_round_trip_keeps_shape_and_values():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(formats.parse_idx(formats.write_idx(a)), a)


def test_gzipped_idx_is_read_transparently():
    a = np.arange(10, dtype=np.uint8)
    assert np.array_equal(formats.parse_idx(gzip.compress(formats.write_idx(a))), a)


def test_truncated_idx_names_declared_and_actual_size():
    data = formats.write_idx(np.zeros((5, 28, 28), np.uint8))[:-100]
    with pytest.raises(CnnlabError, match="truncated"):
        formats.parse_idx(data, "x.idx")


def test_bad_idx_magic_is_refused():
    with pytest.raises(CnnlabError, match="not an IDX file"):
        formats.parse_idx(b"\x01\x02\x03\x04rest")


def test_truncated_gzip_is_one_clear_error():
    blob = gzip.compress(formats.write_idx(np.zeros((50, 28, 28), np.uint8)))
    with pytest.raises(CnnlabError, match="not a valid gzip file"):
        formats.parse_idx(blob[: len(blob) // 2], "train.gz")


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batch_is_parsed_channel_major(protocol):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    blob = pickle.dumps({b"data": raw, b"labels": [1, 2, 3, 4], b"batch_label": b"x"}, protocol=protocol)
    x, y = formats.parse_cifar_batch(blob, "data_batch_1", b"labels")
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [1, 2, 3, 4]
    assert np.array_equal(x[2, 1].reshape(-1), raw[2, 1024:2048])  # green plane of image 2


def test_pickle_that_would_run_code_is_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(CnnlabError, match="not a readable pickle"):
        formats.safe_unpickle(pickle.dumps(Evil()), "evil")


def test_mnist_pkl_layout_becomes_exact_uint8_with_train_and_valid_joined():
    rng = np.random.default_rng(0)
    u8 = [rng.integers(0, 256, (n, 784)).astype(np.uint8) for n in (6, 2, 3)]
    ys = [rng.integers(0, 10, len(a)).astype(np.int64) for a in u8]
    triple = tuple((a.astype(np.float32) / 256, y) for a, y in zip(u8, ys))
    out = formats.parse_mnist_pkl(gzip.compress(pickle.dumps(triple, protocol=2)))
    assert out["train_x"].dtype == np.uint8 and out["train_x"].shape == (8, 28, 28)
    assert np.array_equal(out["train_x"].reshape(8, -1), np.concatenate(u8[:2]))
    assert np.array_equal(out["test_x"].reshape(3, -1), u8[2])
    assert out["train_y"].tolist() == np.concatenate(ys[:2]).tolist()


def test_tar_members_are_read_by_base_name(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert formats.read_tar_members(buf.getvalue(), "a.tar.gz") == {"test_batch": b"abc"}
    with pytest.raises(CnnlabError, match="tar.gz"):
        formats.read_tar_members(b"garbage" * 10, "a.tar.gz")
