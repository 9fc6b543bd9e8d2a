"""The tests' prewarmed processes (tests/prewarmed.py) behave like a fresh interpreter: each check runs the same
command both ways (the ordinary start is the reference) and compares what a caller can observe."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests import prewarmed
from tests.helpers import process_alive

pytestmark = pytest.mark.skipif(os.environ.get("FLEXBERT_TEST_PREWARM", "1") == "0" or sys.platform != "linux",
                                reason="the zygote is off (FLEXBERT_TEST_PREWARM=0, or not Linux)")

PROBE = textwrap.dedent("""
    import os, sys
    print("argv", sys.argv[1:])
    print("cwd", os.getcwd())
    print("path0", sys.path[0])
    print("env", os.environ.get("PROBE_VALUE"))
    print("stdin", sys.stdin.read().strip())
    print("to stderr", file=sys.stderr)
    code = sys.argv[1]
    if code == "raise":
        raise ValueError("bad input")
    if code == "message":
        sys.exit("error: a message")
    sys.exit(int(code))
""")


def _both_ways(zygote, cmd, **kwargs):
    """(prewarmed result, ordinary result) of subprocess.run(cmd, ...), checking the first really was prewarmed."""
    log = os.path.join(os.path.dirname(zygote.path), "commands.log")
    before = open(log).read().count("\n") if os.path.exists(log) else 0
    warm = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    lines = open(log).read().splitlines()[before:]
    assert lines and lines[0].startswith(f"prewarmed {os.getpid()} "), lines  # then any of its own children
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", prewarmed._original_popen)
        ordinary = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    return warm, ordinary


@pytest.mark.parametrize("code", ["0", "3", "raise", "message"])
def test_script_sees_the_same_argv_cwd_env_stdin_and_exits_the_same(prewarmed_processes, tmp_path, code):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PROBE_VALUE="from the caller")
    warm, ordinary = _both_ways(prewarmed_processes, [sys.executable, str(script), code, "two words"], cwd=work,
                                env=env, input="hello\n")
    assert warm.returncode == ordinary.returncode == {"0": 0, "3": 3, "raise": 1, "message": 1}[code]
    assert warm.stdout == ordinary.stdout and f"cwd {work}" in warm.stdout and "env from the caller" in warm.stdout
    assert f"path0 {tmp_path}" in warm.stdout  # the script's folder, as for `python script.py`
    # The traceback's first frames differ (runpy vs the interpreter's own start); the message lines do not.
    assert warm.stderr.splitlines()[0] == "to stderr" and warm.stderr.splitlines()[-1] == ordinary.stderr.splitlines()[-1]


def test_module_run_with_unbuffered_flag(prewarmed_processes, tmp_path):
    (tmp_path / "data.json").write_text('{"b": 1, "a": [1, 2]}')
    warm, ordinary = _both_ways(prewarmed_processes, [sys.executable, "-u", "-m", "json.tool", "--sort-keys",
                                                      "data.json"], cwd=tmp_path)
    assert warm.returncode == ordinary.returncode == 0 and warm.stdout == ordinary.stdout and '"a"' in warm.stdout


def test_sigkill_wait4_and_rusage_as_for_a_child(prewarmed_processes, tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    os.kill(proc.pid, signal.SIGKILL)
    pid, status, usage = os.wait4(proc.pid, 0)  # fails unless the command is this process's own child
    assert pid == proc.pid and os.waitstatus_to_exitcode(status) == -signal.SIGKILL and usage.ru_maxrss > 10_000
    proc.stdout.close()


def test_parent_death_signal_still_ties_the_child_of_a_prewarmed_process(prewarmed_processes, tmp_path):
    """A prewarmed process starts its own child with flexbert's die_with_parent (as a sweep run in a subprocess
    does). The zygote cannot make that child the requester's own, so it starts the ordinary way, and SIGKILL of the
    parent still ends it."""
    child = tmp_path / "child.py"
    child.write_text("import time\ntime.sleep(600)\n")
    parent = tmp_path / "parent.py"
    parent.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        from flexbert.child_process import die_with_parent
        proc = subprocess.Popen([sys.executable, {str(child)!r}], preexec_fn=die_with_parent())
        print(proc.pid, type(proc).__name__, flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(parent)], stdout=subprocess.PIPE, text=True)
    child_pid, popen_class = proc.stdout.readline().split()
    assert popen_class == "PrewarmedPopen"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while process_alive(int(child_pid)) and time.time() < deadline:
        time.sleep(0.05)
    assert not process_alive(int(child_pid))
    proc.stdout.close()
    log = os.path.join(os.path.dirname(prewarmed_processes.path), "commands.log")
    assert [line.split()[0] for line in open(log) if str(child) in line] == ["ordinary"]


def test_an_import_time_variable_that_differs_starts_the_ordinary_way(prewarmed_processes, tmp_path):
    log = os.path.join(os.path.dirname(prewarmed_processes.path), "commands.log")
    env = dict(os.environ, HF_HUB_OFFLINE="0" if os.environ.get("HF_HUB_OFFLINE") == "1" else "1")
    done = subprocess.run([sys.executable, "-c", "pass"], env=env, timeout=120)  # -c: always ordinary
    assert done.returncode == 0
    done = subprocess.run([sys.executable, "-m", "json.tool", "--help"], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0
    assert open(log).read().splitlines()[-1].startswith("ordinary ") and "HF_HUB_OFFLINE" in open(log).read()



def test_a_zygote_that_is_gone_means_the_ordinary_start(prewarmed_processes, tmp_path, monkeypatch):
    dead = tmp_path / "zygote.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(dead))  # the file stays, nothing accepts: connecting is refused
    monkeypatch.setenv(prewarmed.ENV_VAR, str(dead))
    done = subprocess.run([sys.executable, "-m", "json.tool", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout
    assert (tmp_path / "commands.log").read_text().startswith("ordinary ")


def test_a_commands_own_children_report_status_poll_timeout_and_kill(prewarmed_processes, tmp_path):
    """As the composer launcher does with its ranks: a prewarmed command starts Python children, which stay the
    zygote's (not the command's) children; poll, wait with a timeout, kill and the exit status still behave as for
    ordinary children."""
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(int(sys.argv[1]))\n")
    (tmp_path / "sleeps.py").write_text("import time\ntime.sleep(600)\n")
    (tmp_path / "parent.py").write_text(textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "exits.py", "7"])
        print(type(child).__name__, child.wait())
        sleeper = subprocess.Popen([sys.executable, "sleeps.py"])
        time.sleep(0.3)
        print("running", sleeper.poll())
        try:
            sleeper.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            print("timed out")
        sleeper.kill()
        print("killed", sleeper.wait())
    """))
    warm, ordinary = _both_ways(prewarmed_processes, [sys.executable, "parent.py"], cwd=tmp_path)
    assert warm.returncode == ordinary.returncode == 0, warm.stderr
    assert warm.stdout == "PrewarmedPopen 7\nrunning None\ntimed out\nkilled -9\n"
    assert ordinary.stdout == warm.stdout.replace("PrewarmedPopen", "Popen")
    log = os.path.join(os.path.dirname(prewarmed_processes.path), "commands.log")
    children = [line.split()[0] for line in open(log) if "exits.py" in line or "sleeps.py" in line]
    assert children == ["prewarmed", "prewarmed"]
