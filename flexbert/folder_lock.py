"""One owner per output folder: a training run's save folder, a sweep's --out folder.

Two runs writing into one save folder overwrite each other's checkpoints, the second autoresumes the first's state
(and its learning rate), and its start-up cleanup deletes the other's in-progress checkpoint files; two sweeps in
one folder launch every variant twice. `hold_folder(folder, what)` takes an exclusive `fcntl.flock` on
`folder/.lock` and keeps the file open for the life of the process. The kernel drops the lock when the holder exits
in any way (SIGKILL and OOM kills included), so a dead holder never leaves a stale lock; the holder's pid, host,
name and start time are written into the file, and a second process fails at once naming them (`FolderBusyError`).

The lock file is opened without following links (`O_NOFOLLOW`) and must be a regular file with one name: a `.lock`
planted as a symlink or hard link to another file would otherwise have that file truncated and overwritten with
the holder's details.

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
_held: dict[str, int] = {}  # lock file in the folder's realpath -> the open descriptor that holds it (for the process)


class FolderBusyError(RuntimeError):
    """Another live process holds the folder."""


class UnsafeLockFileError(FolderBusyError):
    """The folder's `.lock` is a link (or not a regular file): taking it would write through to another file."""


def _open_lock_file(path: Path) -> int:
    """A descriptor of `path` as a regular file of its own, created if missing; never through a link."""
    import stat

    advice = f"'{path}' is {{}}; remove it (the lock file is only a name to lock) and start again"
    try:  # O_NONBLOCK: a planted FIFO must not hang the open
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError:
        if os.path.islink(path):  # ELOOP from O_NOFOLLOW (dangling links too: O_CREAT would create their target)
            raise UnsafeLockFileError(advice.format(f"a symbolic link (to '{os.readlink(path)}')")) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"a hard link ({info.st_nlink} names)"
        raise UnsafeLockFileError(advice.format(what))
    os.set_blocking(fd, True)
    return fd


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not written its name yet)"
    return (f"{info.get('what', 'a process')} {info.get('name')!r} (pid {info.get('pid')} on host "
            f"{info.get('host')}, since {info.get('since')})")


def _busy(folder, path: Path) -> FolderBusyError:
    return FolderBusyError(f"'{folder}' is in use by {_holder_text(path)}; wait for it to finish, stop it, or choose "
                           f"another folder (two writers would overwrite each other's checkpoints and results)")


def _key(folder: Path | str) -> str:
    """The lock file's name with the folder resolved but not the file itself (a link there is refused, not followed)."""
    return os.path.join(os.path.realpath(folder), LOCK_NAME)


def hold_folder(folder: str | os.PathLike, what: str, name: Optional[str] = None) -> Path:
    """Lock `folder` (created if missing) for this process until it exits; returns the lock file.

    Raises FolderBusyError naming the holder when another process holds it."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    key = _key(folder)
    if key not in _held:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, path) from None
        _held[key] = fd
    info = {"what": what, "name": name, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds")}
    fd = _held[key]
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
    return path


def check_folder_free(folder: str | os.PathLike) -> None:
    """Raise FolderBusyError naming the holder when another live process holds `folder`; creates nothing.

    For checks before a run takes its folder: a busy folder is reported at once, and a run refused for any reason
    leaves no lock file behind (only `hold_folder` creates one)."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    if _key(folder) in _held or not path.is_file() or path.is_symlink():
        return  # ours, never taken, or a planted link that hold_folder will refuse
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # unreadable: hold_folder reports it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(folder, path) from None
    finally:
        os.close(fd)  # closing releases the probe's own lock, if it got one


def release_folder(folder: str | os.PathLike) -> None:
    """Give the folder up before the process exits (the lock file stays; it is only a name to lock)."""
    fd = _held.pop(_key(folder), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock
