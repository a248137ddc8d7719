"""An exclusive lock on a run directory, so that two processes never write one run.

The lock is flock(2) on DIR/.lsa-fast.lock, held for the whole life of the run. The
kernel drops it when the holder exits in any way (kill -9 included), so a lock never
outlives its process and a second process is refused only while the first one lives.
The file names its holder (pid, host, start time, command line), which the refusal
quotes. A clean release removes the file; a file found when the lock is free was left
by a holder that died, and the new holder reports that stale lock and takes it over.

Where fcntl or flock does not work (Windows, some network file systems) the file itself
is the lock (created with O_EXCL), and a lock whose pid no longer runs on this host is stale.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional, Union

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK_NAME", "RunLock", "RunDirectoryInUse"]

LOCK_NAME = ".lsa-fast.lock"


class RunDirectoryInUse(ValueError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """`with RunLock(directory) as lock:` holds the directory (created if needed, and
    removed again on release if it is still empty) for the block; RunDirectoryInUse if
    another process holds it. lock.stale describes a lock left by a dead process that
    was taken over (None if there was none)."""

    def __init__(self, directory: Union[str, os.PathLike]):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.stale: Optional[str] = None
        self._fd: Optional[int] = None
        self._created = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> Optional[str]:
        """Take the lock; returns the description of a stale lock taken over, or None."""
        if self._fd is not None:
            raise RuntimeError(f"RunLock: {self.path} is already held by this object")
        self._created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, previous = (self._acquire_flock if fcntl is not None else self._acquire_exclusive)()
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder()) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        self.stale = None
        if previous:
            self.stale = (f"{self.directory}: took over a stale lock of {_describe(previous)}: that process "
                          f"ended without releasing it (killed or crashed)")
        return self.stale

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            # Unlink while still holding it; a process that opened the old file meanwhile
            # sees, once it gets the lock, that the path no longer names its file, and retries.
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None
        if self._created:  # a run that failed before writing anything leaves no empty directory
            try:
                self.directory.rmdir()
            except OSError:
                pass

    # ------------------------------------------------------------------ helpers

    def _acquire_flock(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read(fd)
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._in_use(holder) from None
                return self._acquire_exclusive()  # a file system without flock (some NFS)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd, _read(fd)
            os.close(fd)  # the holder released (and removed) the file meanwhile: try again

    def _acquire_exclusive(self):
        while True:
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), None
            except FileExistsError:
                pass
            with open(self.path) as handle:
                holder = handle.read()
            if _alive(holder):
                raise self._in_use(holder)
            os.unlink(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            return fd, holder

    def _in_use(self, holder: str) -> RunDirectoryInUse:
        return RunDirectoryInUse(f"{self.directory} is in use by another lsa-fast process ({_describe(holder)}); "
                                 f"wait for it to finish, stop it, or choose another directory")


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])}


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return ""


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (ValueError, KeyError, TypeError):
        return "a process whose lock file is unreadable" if text.strip() else "a process that had not yet named itself"


def _alive(text: str) -> bool:
    try:
        holder = json.loads(text)
        if holder["host"] != socket.gethostname():
            return True  # cannot tell: assume it lives
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, KeyError, TypeError):
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
