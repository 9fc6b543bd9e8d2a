"""Python processes for the tests that start without paying for their imports again.

Most of the suite's time went to starting Python: a process that imports Composer loads about 5,000 modules
(torchmetrics pulls in scipy, scikit-learn and pandas) and needs 5 to 11 s of a core before it runs a line of
ours, and the tests start about a hundred of them (main.py runs, kills and resumes, sweeps, launcher ranks).

A zygote process imports those modules once and then forks on request. Each fork is still a real, separate
process running the real command (`python main.py ...`, `python -m flexbert.sweep ...`, the `composer` launcher
script): its own pid, environment, working directory, stdin/stdout/stderr, exit status and signals, so SIGKILLs,
launcher rank handling and `os.wait4` behave as with a fresh interpreter. What it skips is the interpreter's start
and the imports the zygote already holds; `PrewarmedPopen` decides per command whether that is equivalent and
otherwise starts the command the ordinary way:

- only this interpreter (or a script whose `#!` line names it), with no option but `-u`, running a script or
  `-m module` (never `-c`: the tests that run `-c` probe what a fresh interpreter imports);
- no environment variable that is read at import time may differ from the zygote's (HF_*, TORCH*, OMP_*,
  PYTHON* but PYTHONUNBUFFERED and PYTHONPATH, which the fork applies itself, ...);
- no preexec_fn other than flexbert's `die_with_parent` (applied here), no pass_fds, no user or group change.

For the test process that started the zygote, the fork is made its own child: the zygote forks an intermediate
that forks the command and exits, and the test process is a child subreaper (prctl) for that moment, so the kernel
hands it the orphan. `Popen.wait`, `os.wait4` (the sweep's peak RSS), `PR_SET_PDEATHSIG` (the sweep's
`die_with_parent`) and `kill` then work as for any child. The commands' own subprocesses (the `composer`
launcher's ranks) find the zygote through FLEXBERT_TEST_ZYGOTE too; a launcher is not an ancestor of the zygote,
so its ranks stay the zygote's children and the zygote sends each exit status back over the request's
connection, where `PrewarmedPopen.poll`/`wait` read it (a `die_with_parent` child of such a command starts the
ordinary way).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import importlib
import io
import locale
import os
import pickle
import random
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

ENV_VAR = "FLEXBERT_TEST_ZYGOTE"

# What main.py, the sweep, eval and the composer launcher import before they do anything of their own.
PRELOAD = ("torch", "transformers", "composer", "composer.cli.launcher", "streaming", "flexbert.train.builders",
           "flexbert.train.trainer", "flexbert.sweep.runner", "flexbert.eval.runner")

# Read once at import by torch, transformers, huggingface_hub, OpenMP, tokenizers or the interpreter itself: a
# command whose value differs from the zygote's starts the ordinary way.
_IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "TORCH", "PYTORCH", "OMP_", "MKL_", "KMP_", "OPENBLAS",
                    "CUDA", "TOKENIZERS", "PYTHON", "LD_", "TRITON", "XDG_", "TMPDIR", "COMPOSER")
# Exceptions: applied by the fork itself, or read only when a process group is built (the launcher sets these).
_RUNTIME_ENV = ("PYTHONUNBUFFERED", "PYTHONPATH", "TORCH_NCCL_")

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_spawn_lock = threading.Lock()
_original_popen = subprocess.Popen


def _import_time_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(_IMPORT_TIME_ENV) and not k.startswith(_RUNTIME_ENV)}


# ---------------------------------------------------------------------------------------------------- zygote side

def serve(path: str) -> None:
    """The zygote: import PRELOAD, then fork one command per connection on the Unix socket `path`."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the test process that started it
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    except BaseException:
        open(path + ".failed", "w").write(traceback.format_exc())  # commands then start the ordinary way
        raise
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the path appears only once the zygote accepts
    listener.listen(64)
    running: dict[int, socket.socket] = {}  # the zygote's own children: pid -> the requester's connection
    while True:
        ready, _, _ = select.select([listener], [], [], 0.02 if running else None)
        for pid, conn in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                with conn:
                    try:
                        conn.sendall(struct.pack("q", status))
                    except OSError:
                        pass  # the requester is gone
                del running[pid]
        if not ready:
            continue
        conn, _ = listener.accept()
        try:
            request, fds = _receive(conn)
        except (OSError, EOFError, pickle.UnpicklingError):
            conn.close()  # the requester died mid-request: it waits for nothing
            continue
        if request["adopt"]:
            with conn:
                conn.sendall(struct.pack("q", _fork_orphan(request, fds, [listener, conn, *running.values()])))
        else:
            pid = os.fork()
            if pid == 0:
                for sock in [listener, conn, *running.values()]:
                    sock.close()
                _become(request, fds)  # never returns
            conn.sendall(struct.pack("q", pid))
            running[pid] = conn
        for fd in fds:
            os.close(fd)


def _fork_orphan(request: dict, fds: list[int], sockets: list[socket.socket]) -> int:
    """Fork the command through an intermediate that exits at once; the kernel then hands the orphan to the nearest
    subreaper among its ancestors: the requester, which started this zygote."""
    pid_read, pid_write = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        os.close(pid_read)
        command = os.fork()
        if command == 0:
            os.close(pid_write)
            for sock in sockets:
                sock.close()
            _become(request, fds)  # never returns
        os.write(pid_write, struct.pack("q", command))
        os._exit(0)
    os.close(pid_write)
    os.waitpid(intermediate, 0)
    pid = struct.unpack("q", os.read(pid_read, 8))[0]
    os.close(pid_read)
    return pid


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size = struct.unpack("q", header)[0] if len(header) == 8 else 0
    payload = conn.recv(size, socket.MSG_WAITALL)
    if len(header) != 8 or len(payload) != size:
        for fd in fds:
            os.close(fd)
        raise EOFError("incomplete request")
    return pickle.loads(payload), fds


def _text_stream(fd: int, mode: str, unbuffered: bool, errors: str, line_buffering: bool) -> io.TextIOWrapper:
    """A std stream as the interpreter builds it at start-up for this fd."""
    raw = io.FileIO(fd, mode, closefd=False)
    encoding = locale.getpreferredencoding(False)
    if mode == "r":
        return io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, errors=errors)
    binary = raw if unbuffered else io.BufferedWriter(raw)
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors, line_buffering=line_buffering or os.isatty(fd),
                            write_through=unbuffered)


def _become(request: dict, fds: list[int]) -> None:
    """In the forked command: take its stdio, directory, environment and argv, run it, exit with its status."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
        deadline = time.monotonic() + 10
        while request["adopt"] and os.getppid() != request["parent"] and time.monotonic() < deadline:
            time.sleep(0.001)  # adopted by the requester once the intermediate has exited
        if request["die_with_parent"]:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != request["parent"]:
                os._exit(1)
        if request["new_session"]:
            os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        entries = [e for e in request["env"].get("PYTHONPATH", "").split(os.pathsep) if e]
        sys.path[1:1] = [e for e in entries if e not in sys.path]  # where the interpreter puts them
        unbuffered = request["unbuffered"] or bool(request["env"].get("PYTHONUNBUFFERED"))
        sys.stdin = sys.__stdin__ = _text_stream(0, "r", False, "strict", False)
        sys.stdout = sys.__stdout__ = _text_stream(1, "w", unbuffered, "strict", False)
        sys.stderr = sys.__stderr__ = _text_stream(2, "w", unbuffered, "backslashreplace", True)
        # A fresh interpreter seeds these from the OS; forks of one zygote would otherwise share one state.
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        if os.environ.get(ENV_VAR):
            install()  # the command's own subprocesses (the launcher's ranks) are prewarmed as well
        code = _run(request["argv"])
    except BaseException:  # noqa: BLE001 - a failure of the bootstrap itself: say so and exit 1
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _run(argv: list[str]) -> int:
    """Run `script args` or `-m module args` as __main__; the exit status the interpreter would give."""
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = _exit_status(stop.code)
    except KeyboardInterrupt:
        _shutdown()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as the interpreter does: die of SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # noqa: BLE001 - printed and turned into status 1, as the interpreter does
        traceback.print_exc()
        code = 1
    _shutdown()
    return code


def _exit_status(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _shutdown() -> None:
    """What the interpreter does at exit before the process ends: join threads, run atexit, flush."""
    try:
        threading._shutdown()
    except Exception:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


# -------------------------------------------------------------------------------------------------- client side

def _python_argv(args: list[str]) -> tuple[list[str], bool] | None:
    """(the argv after the interpreter, unbuffered) when `args` runs this interpreter on a script or module."""
    if not args:
        return None
    first = os.fspath(args[0])
    if first == sys.executable or os.path.realpath(first) == os.path.realpath(sys.executable):
        rest = [os.fspath(a) for a in args[1:]]
    elif _shebang_is_this_python(first):
        rest = [first, *[os.fspath(a) for a in args[1:]]]
    else:
        return None
    unbuffered = False
    while rest and rest[0] == "-u":
        unbuffered, rest = True, rest[1:]
    if not rest or (rest[0].startswith("-") and rest[0] != "-m") or (rest[0] == "-m" and len(rest) < 2):
        return None
    return rest, unbuffered


def _shebang_is_this_python(path: str) -> bool:
    if os.sep not in path:
        return False
    try:
        with open(path, "rb") as f:
            line = f.readline(512)
    except OSError:
        return False
    return line.rstrip() == b"#!" + os.fsencode(sys.executable)


class PrewarmedPopen(_original_popen):
    """subprocess.Popen that forks eligible Python commands from the zygote (see the module docstring)."""

    _status = None  # for a command that stays the zygote's child: the connection its exit status arrives on

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                       restore_signals, gid, gids, uid, umask, start_new_session, *more):
        path = os.environ.get(ENV_VAR)
        simple = not (shell or executable or pass_fds or isinstance(args, (str, bytes, os.PathLike)))
        parsed = _python_argv(list(args)) if simple else None
        # Only the zygote's parent can adopt a command (it is the orphan's nearest ancestor); for any other
        # requester the command stays the zygote's child, which a parent-death signal cannot follow.
        adopt = os.environ.get(ENV_VAR + "_OWNER") == str(os.getpid())
        die_with_parent = getattr(preexec_fn, "__qualname__", "") == "die_with_parent.<locals>.tie" and adopt
        full_env = dict(os.environ if env is None else env)
        eligible = (parsed is not None and path and (preexec_fn is None or die_with_parent)
                    and gid is None and gids is None and uid is None and umask < 0 and more in ((), (-1,))
                    and _import_time_env(full_env) == _zygote_env() and _ready(path))  # the wait last
        if eligible:
            argv, unbuffered = parsed
            stdio = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1,
                     errwrite if errwrite != -1 else 2]
            request = dict(argv=argv, unbuffered=unbuffered, cwd=os.fspath(cwd) if cwd else os.getcwd(),
                           env=full_env, new_session=bool(start_new_session), die_with_parent=die_with_parent,
                           parent=os.getpid(), adopt=adopt)
            try:
                self.pid, self._status = _spawn(path, request, stdio)
            except (ConnectionRefusedError, FileNotFoundError):
                eligible = False  # the zygote is gone: start the ordinary way
        if path and parsed is not None:
            _log(path, "prewarmed" if eligible else "ordinary", args, full_env)
        if not eligible:
            return super()._execute_child(args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                                          creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread,
                                          errwrite, restore_signals, gid, gids, uid, umask, start_new_session, *more)
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _internal_poll(self, _deadstate=None, *args, **kwargs):
        if self._status is None:
            return super()._internal_poll(_deadstate, *args, **kwargs)
        if self.returncode is None:
            self._receive_status(0)
        return self.returncode

    def _wait(self, timeout):
        if self._status is None:
            return super()._wait(timeout)
        if self.returncode is None and not self._receive_status(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _receive_status(self, timeout) -> bool:
        """The zygote sends the wait status when the command ends; False if it has not within `timeout`."""
        if not select.select([self._status], [], [], timeout)[0]:
            return False
        answer = self._status.recv(8, socket.MSG_WAITALL)
        self._status.close()
        self.returncode = os.waitstatus_to_exitcode(struct.unpack("q", answer)[0]) if len(answer) == 8 else 255
        return True


def _ready(path: str) -> bool:
    """Whether the zygote accepts commands; while it is still importing, wait for it (a fresh interpreter would
    need longer than what is left of its start)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if os.path.exists(path + ".failed") or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _log(path: str, how: str, args, env: dict) -> None:
    """One line per Python command in commands.log beside the socket: how it started and, if the ordinary way,
    which import-time variables differed."""
    mine, zygote = _import_time_env(env), _zygote_env()
    differing = sorted(k for k in mine.keys() | zygote.keys() if mine.get(k) != zygote.get(k))
    with open(os.path.join(os.path.dirname(path), "commands.log"), "a") as log:
        log.write(f"{how} {os.getpid()} {' '.join(map(os.fspath, args))[:300]} {differing or ''}\n")


_zygote_env_cache: dict | None = None


def _zygote_env() -> dict:
    global _zygote_env_cache
    if _zygote_env_cache is None:
        _zygote_env_cache = dict(pickle.loads(bytes.fromhex(os.environ[ENV_VAR + "_ENV"])))
    return _zygote_env_cache


def _spawn(path: str, request: dict, stdio: list[int]) -> tuple[int, socket.socket | None]:
    """(pid, None) for an adopted command; (pid, connection its exit status arrives on) for the zygote's child."""
    payload = pickle.dumps(request)
    with _spawn_lock:
        if request["adopt"]:
            _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)  # ConnectionRefusedError / FileNotFoundError: nothing was sent, nothing started
            socket.send_fds(conn, [struct.pack("q", len(payload))], stdio)
            conn.sendall(payload)
            answer = conn.recv(8, socket.MSG_WAITALL)
            if len(answer) != 8:
                raise OSError("the test zygote closed the connection without starting the command")
        except BaseException:
            conn.close()
            raise
        finally:
            if request["adopt"]:
                _libc.prctl(_PR_SET_CHILD_SUBREAPER, 0)
    pid = struct.unpack("q", answer)[0]
    if request["adopt"]:
        conn.close()
        return pid, None
    return pid, conn


def install() -> None:
    """Route this process's subprocess.Popen through the zygote named in the environment."""
    subprocess.Popen = PrewarmedPopen


class Zygote:
    """The zygote process of one test process, started in the background: a command asked for while it still
    imports waits for it (up to a minute, then starts the ordinary way)."""

    def __init__(self, folder: str, cwd: str):
        self.path = os.path.join(folder, "zygote.sock")
        os.environ[ENV_VAR] = self.path
        os.environ[ENV_VAR + "_OWNER"] = str(os.getpid())
        os.environ[ENV_VAR + "_ENV"] = pickle.dumps(_import_time_env(dict(os.environ))).hex()
        self.process = _original_popen([sys.executable, "-c", f"from tests.prewarmed import serve; serve({self.path!r})"],
                                       cwd=cwd, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        for name in (ENV_VAR, ENV_VAR + "_ENV", ENV_VAR + "_OWNER"):
            os.environ.pop(name, None)
        subprocess.Popen = _original_popen
        self.process.kill()
        self.process.wait()
