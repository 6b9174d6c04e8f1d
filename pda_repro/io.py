"""Safe file output: atomic writes (one permission policy), file digests, a lock per output directory.

    with atomic_writer(path) as fh:      # a temporary file next to `path`, fsynced, then os.replace
        fh.write(data)
    staged = temp_path(final); ...; commit([(staged, final), ...])   # several files, replaced in order
    with OutputLock(out_dir):            # a second run on the same directory gets LockHeld
        ...

Every file written here gets mode FILE_MODE (0644), whatever the umask; temporary files are named
``.<name>.<pid>.<token>.tmp`` so that `remove_stale_temps` can clean those left by killed runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FILE_MODE",
    "LockHeld",
    "OutputLock",
    "atomic_savez",
    "atomic_writer",
    "commit",
    "describe_os_error",
    "file_digest",
    "remove_stale_temps",
    "temp_path",
]

FILE_MODE = 0o644
TEMP_SUFFIX = ".tmp"


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to `path` (same file system, so os.replace is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _finish(tmp: Path) -> None:
    """Give a staged file the one permission policy and flush it to disk."""
    os.chmod(tmp, FILE_MODE)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Move staged files onto their final names, in order (put the file that marks completion last)."""
    for tmp, _ in pairs:
        _finish(tmp)
    for tmp, final in pairs:
        os.replace(tmp, final)
    for directory in {final.parent for _, final in pairs}:
        _fsync_dir(directory)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write `path` through a temporary file: on success it replaces `path`, on any error (or
    interrupt) it is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        commit([(tmp, path)])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> None:
    """np.savez of `arrays` to `path` through `atomic_writer` (nothing half-written under `path`)."""
    import numpy as np  # noqa: PLC0415 - this module is otherwise standard library only

    with atomic_writer(path) as fh:
        np.savez(fh, **arrays)


def remove_stale_temps(
    directory: str | os.PathLike, pattern: str = f".*{TEMP_SUFFIX}", older_than: float = 0.0
) -> list[Path]:
    """Delete the files matching `pattern` in `directory` older than `older_than` seconds; returns them.

    Call it while holding the directory's OutputLock (or with an age no live writer reaches)."""
    removed: list[Path] = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in Path(directory).glob(pattern):
            with contextlib.suppress(OSError):
                if entry.is_file() and now - entry.stat().st_mtime >= older_than:
                    entry.unlink()
                    removed.append(entry)
    return removed


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def describe_os_error(exc: OSError, action: str = "access", path: str | os.PathLike | None = None) -> str:
    """One line: ``cannot <action> '<path>': <cause>`` (`path` defaults to the one in `exc`)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ELOOP:
        cause += " (a symlink loop)"
    where = path if path is not None else exc.filename
    return f"cannot {action}{f' {str(where)!r}' if where else ''}: {cause}"


class LockHeld(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file (may be empty)."""

    def __init__(self, path: Path, holder: dict) -> None:
        self.path, self.holder = path, holder
        who = ", ".join(
            f"{k} {holder[k]}" for k in ("pid", "host", "started") if holder.get(k) not in (None, "")
        )
        command = " ".join(holder.get("command") or [])
        super().__init__(
            f"{str(path.parent)!r} is in use by another run ({who or 'holder unknown'}"
            f"{': ' + command if command else ''}); wait for it to finish or choose another directory"
        )


class OutputLock:
    """An exclusive, non-blocking flock on ``<directory>/.pda-repro.lock``, released on exit (also when
    the process is killed). The holder's pid, host, start time and command are written into the file so
    that a second run can say who holds it."""

    NAME = ".pda-repro.lock"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise LockHeld(self.path, holder) from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the file may have been unlinked by its last holder between our open and flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": ["pda-repro", *sys.argv[1:]],
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
