"""Parsers for the standard dataset file formats, from bytes to uint8 numpy arrays.

- IDX (MNIST, Fashion-MNIST): a big-endian header ``0x0000 TT DD`` (type code, number of
  dimensions), then one uint32 per dimension, then the raw data. Usually gzipped.
- CIFAR-10/100 "python version": pickled dicts with ``b"data"`` (N x 3072 uint8, channel-major
  rows) and ``b"labels"`` or ``b"fine_labels"``.
- ``mnist.pkl.gz`` (Nielsen / deeplearning.net layout): a gzipped pickle of
  ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` with float32 images equal to
  uint8/256.

Pickles are read with a restricted unpickler that only rebuilds NumPy arrays, lists, dicts and
plain values, so a tampered file cannot run code even if it slipped past the checksum.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import tarfile
import zlib
from typing import IO

import numpy as np

from cnnlab.errors import CnnlabError

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def gunzip(data: bytes, name: str) -> bytes:
    """Decompress gzip bytes, turning a truncated or corrupt archive into one clear error."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise CnnlabError(f"{name} is not a valid gzip file ({e}); delete it and fetch it again") from None


def parse_idx(data: bytes, name: str = "IDX file") -> np.ndarray:
    """Parse an (uncompressed) IDX file into a numpy array of its declared shape."""
    if data[:2] == b"\x1f\x8b":
        data = gunzip(data, name)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise CnnlabError(f"{name} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CnnlabError(f"{name} is truncated: its header needs {header} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise CnnlabError(
            f"{name} is truncated or padded: its header declares shape {shape} "
            f"({expected} bytes of data), the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(array: np.ndarray) -> bytes:
    """Serialize a uint8 array as IDX (the inverse of ``parse_idx``; used by tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


class _SafeUnpickler(pickle.Unpickler):
    """Rebuild only NumPy arrays and builtin containers; refuse every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def __init__(self, file: IO[bytes], max_bytes: int) -> None:
        super().__init__(file, encoding="bytes")
        self.max_bytes = max_bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return self._bounded(found)
        return found

    def _bounded(self, reconstruct):
        """``_reconstruct(cls, shape, dtype)`` allocates ``shape`` before any data arrives (an
        ordinary pickle asks for shape (0,) and fills it in later), so a tampered file could ask
        for a terabyte. Refuse any array larger than the pickle that carries it."""
        def checked(cls, shape, dtype):
            dims = shape if isinstance(shape, (tuple, list)) else (shape,)
            if not all(isinstance(d, int) and d >= 0 for d in dims):
                raise pickle.UnpicklingError(f"an array declares the shape {str(shape)[:80]}")
            size = math.prod(dims) * np.dtype(dtype).itemsize
            if size > self.max_bytes:
                raise pickle.UnpicklingError(f"an array declares {size:,} bytes, more than the "
                                             f"{self.max_bytes:,} bytes of the file")
            return reconstruct(cls, shape, dtype)
        return checked


def safe_unpickle(data: bytes, name: str):
    """Unpickle ``data`` with ``_SafeUnpickler``; anything malformed is one ``CnnlabError``."""
    try:
        return _SafeUnpickler(io.BytesIO(data), max_bytes=len(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError, struct.error) as e:
        raise CnnlabError(f"{name} is not a readable pickle ({str(e)[:200]}); delete it and fetch it again") from None


def parse_mnist_pkl(data: bytes, name: str = "mnist.pkl.gz") -> dict[str, np.ndarray]:
    """Parse ``mnist.pkl.gz`` into the standard 60,000/10,000 split as uint8 (N, 28, 28).

    Train + valid, in that order, is the standard 60,000-image training set in its original order.
    """
    splits = safe_unpickle(gunzip(data, name), name)
    try:
        (tx, ty), (vx, vy), (sx, sy) = splits
    except (TypeError, ValueError):
        raise CnnlabError(f"{name} does not hold the (train, valid, test) triple of (images, labels)") from None

    def to_uint8(x: np.ndarray) -> np.ndarray:
        # The images are float32 equal to uint8/256 (see ../shared/DESIGN.md), so *256 is exact.
        return np.rint(np.asarray(x, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_x": np.concatenate([to_uint8(tx), to_uint8(vx)]),
        "train_y": np.concatenate([np.asarray(ty), np.asarray(vy)]).astype(np.int64),
        "test_x": to_uint8(sx),
        "test_y": np.asarray(sy).astype(np.int64),
    }


def parse_cifar_batch(data: bytes, name: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle batch -> (uint8 (N, 3, 32, 32), int64 (N,))."""
    batch = safe_unpickle(data, name)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise CnnlabError(f"{name} is not a CIFAR batch (missing b'data' or {label_key!r})")
    x, y = batch[b"data"], batch[label_key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = x.shape if isinstance(x, np.ndarray) else type(x).__name__
        raise CnnlabError(f"{name} holds images of shape {shape}; expected a uint8 array of (N, 3072)")
    try:
        y = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        y = None
    if y is None or y.shape != (len(x),):
        raise CnnlabError(f"{name} does not hold one integer label for each of its {len(x)} images")
    return x.reshape(-1, 3, 32, 32), y


def read_tar_members(data: bytes, name: str) -> dict[str, bytes]:
    """Every regular file of a (gzipped) tar archive, keyed by its base name."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            return {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise CnnlabError(f"{name} is not a readable tar.gz archive ({e}); delete it and fetch it again") from None
