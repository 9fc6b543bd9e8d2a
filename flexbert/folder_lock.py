"""One owner per output folder: a training run's save folder, a sweep's --out folder.

Two runs writing into one save folder overwrite each other's checkpoints, the second autoresumes the first's state
(and its learning rate), and its start-up cleanup deletes the other's in-progress checkpoint files; two sweeps in
one folder launch every variant twice. `hold_folder(folder, what)` takes an exclusive `fcntl.flock` on
`folder/.lock` and keeps the file open for the life of the process. The kernel drops the lock when the holder exits
in any way (SIGKILL and OOM kills included), so a dead holder never leaves a stale lock; the holder's pid, host,
name and start time are written into the file, and a second process fails at once naming them (`FolderBusyError`).

Locks are per process and re-entrant: the process that holds a folder may take it again (a test or notebook that
trains twice in one interpreter). On a shared file system the lock is as good as the file system's flock (local
and NFSv4 file systems honour it across hosts).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Optional

LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # realpath of a lock file -> the open descriptor that holds it (kept for the process)


class FolderBusyError(RuntimeError):
    """Another live process holds the folder."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not written its name yet)"
    return (f"{info.get('what', 'a process')} {info.get('name')!r} (pid {info.get('pid')} on host "
            f"{info.get('host')}, since {info.get('since')})")


def hold_folder(folder: str | os.PathLike, what: str, name: Optional[str] = None) -> Path:
    """Lock `folder` (created if missing) for this process until it exits; returns the lock file.

    Raises FolderBusyError naming the holder when another process holds it."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    key = os.path.realpath(path)
    if key not in _held:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusyError(
                f"'{folder}' is in use by {_holder_text(path)}; wait for it to finish, stop it, or choose another "
                f"folder (two writers would overwrite each other's checkpoints and results)") from None
        _held[key] = fd
    info = {"what": what, "name": name, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds")}
    fd = _held[key]
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
    return path


def release_folder(folder: str | os.PathLike) -> None:
    """Give the folder up before the process exits (the lock file stays; it is only a name to lock)."""
    fd = _held.pop(os.path.realpath(Path(folder) / LOCK_NAME), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock
