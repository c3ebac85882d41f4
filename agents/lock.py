"""One writer per folder: an exclusive lock on a run or output folder for a process's life.

`FolderLock(folder)` takes an exclusive ``flock`` on ``folder/.lock`` and writes the holder's
pid, host and start time into it. The kernel releases the lock when the process exits, however
it exits (normal end, exception, SIGKILL), so a lock can never outlive its holder; a lock file
left by a process that died is detected (its pid is gone) and reported when the next process
takes the folder over. A second process that wants a folder in use stops with `LockError`
naming the holder, before it writes anything.

Locks are advisory and local: they protect folders on a local filesystem against processes on
the same machine (on a network filesystem, flock may not reach other machines).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

LOCK_FILE = ".lock"


class LockError(RuntimeError):
    """The folder is being written by another live process."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing) until `release` or process exit.

    :param what: how the folder is named in messages (e.g. "run folder")
    :raise LockError: if another process holds the lock
    """

    _held: dict[Path, FolderLock] = {}  # per process: re-locking a folder this process holds is a no-op

    def __init__(self, folder: Path, what: str = "folder", log: Callable[[str], None] = print) -> None:
        self.folder = Path(folder).resolve()
        self.handle: Any = None
        if self.folder in FolderLock._held:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        handle = open(path, "a+")  # noqa: SIM115 (kept open: the lock lives as long as the handle)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LockError(f"{what} {self.folder} is in use by {holder}; wait for it to finish or choose "
                            f"another folder") from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            try:
                pid = json.loads(previous).get("pid")
            except ValueError:
                pid = None
            if isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
                log(f"note: {what} {self.folder} was left by process {pid}, which died; taking it over")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self.handle = handle
        FolderLock._held[self.folder] = self

    def release(self) -> None:
        """Clear the holder record and unlock (a record left behind means its holder died)."""
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.flush()
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
            FolderLock._held.pop(self.folder, None)

    @staticmethod
    def release_all() -> None:
        for lock in list(FolderLock._held.values()):
            lock.release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


atexit.register(FolderLock.release_all)  # a normal exit leaves no holder record behind
