"""Run one command of a sweep (a training run, an evaluation) with its output appended to a log file, and read
the error back from that log."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from flexbert.child_process import die_with_parent

# Ctrl-C / SIGTERM: Python raises KeyboardInterrupt, but importing composer installs handlers that sys.exit(128 + sig)
# instead (composer.core.engine), so both mean "the sweep is being stopped".
INTERRUPTS = (KeyboardInterrupt, SystemExit)
ERROR_TAIL_LINES = 20


# Terminal control sequences (colours, cursor moves) a progress bar writes into a log file.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _as_printed(line: str) -> list[str]:
    """A log line as a terminal would show it: control sequences dropped, of a line redrawn with carriage returns
    (a progress bar) only the last drawing, and an `error: ` written right after an unfinished bar on a line of
    its own."""
    line = _ANSI.sub("", line).split("\r")[-1]
    start = line.find("error: ")
    return [line[:start], line[start:]] if start > 0 else [line]


def error_tail(text: str) -> str:
    """The last lines of a failed run's log, most telling line last (main.py prints `error: ...` last)."""
    lines = [part.rstrip() for line in text.split("\n") for part in _as_printed(line)]
    lines = [line for line in lines if line.strip() and not line.startswith("=== ")]
    return "\n".join(lines[-ERROR_TAIL_LINES:])


def error_headline(error: str) -> str:
    """One line for tables: the last `error:` / `...Error:` line of a log tail, else its last line."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else ""


def _max_rss_mb(usage) -> float:
    # ru_maxrss: kilobytes on Linux, bytes on macOS. For a launcher it is the largest process of its tree.
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def execute(cmd: list[str], log_path: Path) -> tuple[int, float, float]:
    """Run `cmd` with output to `log_path` (appended); (return code, wall seconds, peak RSS in MB)."""
    if cmd[0] in ("python", "python3"):
        cmd = [sys.executable] + cmd[1:]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(cmd)}\n")
        log.flush()
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=die_with_parent())  # a SIGKILLed sweep leaves no run behind
        try:
            # wait4, not wait: it returns this child's own rusage (RUSAGE_CHILDREN would be the max over all runs).
            _, status, usage = os.wait4(proc.pid, 0)
        except INTERRUPTS:
            _stop(proc)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.time() - start, _max_rss_mb(usage)


def _stop(proc: subprocess.Popen) -> None:
    """The sweep is stopped: so is its run (SIGINT, which it may have had from the terminal already; then SIGKILL)."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass
