"""Safe files: atomic writes, stale temporary files, disk-full messages and directory locks.

Atomic writes go to a temporary file beside the target (``.NAME.PID.XXXX.tmp``), are fsynced,
then ``os.replace``d over it: a reader (or a run killed half-way) sees either the old file or
the new one, never a half-written one. A writer killed before the replace leaves its temporary
file behind; its name carries the writer's PID so that ``clean_stale_temps`` can remove it once
that process is gone.

A full disk during a write is reported as ``DiskFullError``: one sentence naming the file and
the free space, the previous version of the file left intact.

``DirLock`` keeps a second writer out of a directory (a run directory, a data cache): a lock
file holding the owner's PID, locked with ``flock`` so that the kernel releases it when the
owner dies; a stale lock file of a dead process is simply taken over.

    >>> with DirLock("runs/lenet5"):          # CnnlabError if another process holds it
    ...     atomic_write_text("runs/lenet5/config.json", "{}")
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cnnlab.errors import CnnlabError, DiskFullError

LOCK_NAME = ".lock"
PID_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_LEGACY_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp names written before the PID was added


def _space_error(error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` in ``error``'s chain (torch wraps it in a RuntimeError), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        if "No space left on device" in str(error) or "[Errno 28]" in str(error):
            return OSError(errno.ENOSPC, "No space left on device")
        error = error.__cause__ or error.__context__
    return None


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes available to this user on the file system of ``path`` (None when unknown)."""
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except (OSError, AttributeError):
            continue
        return st.f_bavail * st.f_frsize
    return None


def _human(n: int | None) -> str:
    if n is None:
        return "an unknown amount of space"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def disk_full_error(path: str | os.PathLike) -> DiskFullError:
    return DiskFullError(f"the disk is full: could not write {path} ({_human(free_space(Path(path).parent))} free "
                         f"there); the previous version of the file, if any, is intact; free some space and retry")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if _space_error(e):
            raise disk_full_error(path) from None
        raise
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, Exception) and not isinstance(e, CnnlabError) and _space_error(e):
            raise disk_full_error(path) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine (a PID we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike, *, include_legacy: bool = False) -> list[Path]:
    """Remove the ``.NAME.PID.XXXX.tmp`` files in ``directory`` whose writer is no longer running.

    With ``include_legacy`` (the caller holds the directory's lock) temporary files in the older
    ``.NAME.XXXXXXXX.tmp`` form, which carry no PID, are removed too. Returns the removed paths.
    """
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = PID_TEMP.match(entry.name)
        stale = (m is not None and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"]))) or \
            (m is None and include_legacy and _LEGACY_TEMP.match(entry.name) is not None)
        if stale and entry.is_file():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


class DirLock:
    """An exclusive lock on a directory, held by this process until ``release`` (or the ``with`` ends).

    The lock file ``DIR/.lock`` holds ``PID HOSTNAME``. It is locked with ``flock``, so a process
    that dies releases it and the next writer takes it over; the file's content only serves the
    message that names the holder. Where ``fcntl`` is missing (Windows) the file is created
    exclusively and a lock of a PID that no longer runs is taken over.

    Args:
        directory: created if missing (``create=True``); with ``remove_if_empty`` a directory that
            the lock created is removed again on release if nothing but the lock file was put in it.
    """

    def __init__(self, directory: str | os.PathLike, *, create: bool = True, what: str = "directory",
                 remove_if_empty: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.create = create
        self.what = what
        self.remove_if_empty = remove_if_empty
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> DirLock:
        if self._fd is not None:
            return self
        if not self.directory.exists():
            if not self.create:
                raise CnnlabError(f"no such {self.what}: {self.directory}")
            try:
                self.directory.mkdir(parents=True)
                self._created_dir = True
            except FileExistsError:
                pass
            except OSError as e:
                raise CnnlabError(f"cannot create the {self.what} {self.directory}: {e.strerror}") from None
        if not self.directory.is_dir():
            raise CnnlabError(f"the {self.what} {self.directory} exists and is not a directory")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._acquire_pidfile()
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CnnlabError(f"cannot create the lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            self._cleanup_dir()
            raise CnnlabError(f"the {self.what} {self.directory} is in use by another cnnlab process ({holder}); "
                              f"wait for it to finish, or use another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _holder(self, fd: int) -> str:
        try:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        except OSError:
            text = []
        return f"PID {text[0]} on {text[1]}" if len(text) >= 2 else "PID unknown"

    def _acquire_pidfile(self) -> None:  # pragma: no cover - only where fcntl is missing
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pid = -1
                if pid_alive(pid):
                    raise CnnlabError(f"the {self.what} {self.directory} is in use by another cnnlab process "
                                      f"(PID {pid}); wait for it to finish, or use another directory") from None
                with contextlib.suppress(OSError):
                    self.path.unlink()  # a dead writer's lock: take it over
                continue
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd = fd
            return
        raise CnnlabError(f"could not lock the {self.what} {self.directory}; another process keeps taking it")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(fd)
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._created_dir and self.remove_if_empty:
            with contextlib.suppress(OSError):
                if [p.name for p in self.directory.iterdir()] in ([], [LOCK_NAME]):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    self.directory.rmdir()
            self._created_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
