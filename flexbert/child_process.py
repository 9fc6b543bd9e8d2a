"""Child processes that do not outlive the tool that started them.

A sweep or a parallel evaluation runs its training and fine-tuning as subprocesses. When the parent is killed
with SIGKILL (OOM killer, `kill -9`, a scheduler's hard stop) it runs no cleanup, and a child would go on
training and writing into a folder nobody holds any more. On Linux the kernel's parent-death signal
(prctl PR_SET_PDEATHSIG) sends the child SIGTERM the moment its parent dies; SIGTERM, not SIGKILL, so a
launcher (`composer -n 8`) can still stop its own workers. Elsewhere there is no such signal and the child is
left as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Callable, Optional

_PR_SET_PDEATHSIG = 1


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def die_with_parent() -> Optional[Callable[[], None]]:
    """A `preexec_fn` for subprocess.Popen that ties the child's life to this process (None where unsupported).

    libc is loaded here, in the parent, so the function run between fork and exec only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    libc = _libc()
    if libc is None:
        return None
    parent = os.getpid()

    def tie() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return tie
