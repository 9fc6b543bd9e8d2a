"""One run per save folder, one sweep per output folder; a killed holder leaves no stale lock.

The live holder is a separate process that took the folder through `hold_folder` (what the trainer and the sweep
runner do at start-up) and then waits, as a run in progress would.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmarks import fault_injection as fi
from flexbert.train.trainer import main

ROOT = Path(__file__).resolve().parents[1]

HOLD = textwrap.dedent("""
    import sys, time
    from flexbert.folder_lock import hold_folder
    hold_folder(sys.argv[1], sys.argv[2], sys.argv[3])
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def holder():
    procs = []

    def start(folder: Path, what: str, name: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), what, name], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_run_into_a_held_save_folder_fails_at_once_naming_the_holder(tiny_corpus, tmp_path, holder, capsys):
    folder = tmp_path / "run"
    argv = [str(ROOT / "yamls/demo.yaml"), *fi.run_overrides(tiny_corpus, folder, 2, 2)]
    first = holder(folder, "training run", "first-run")
    partial = folder / f".partial-{first.pid}-ep0-ba2-rank0.pt"  # the live run's checkpoint being written
    partial.write_bytes(b"PK\x03\x04 half a checkpoint")

    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "'first-run'" in lines[0], err
    assert partial.exists(), "the second run's autoresume cleanup deleted the live run's partial checkpoint"
    assert not (folder / "metrics.jsonl").exists()

    first.send_signal(signal.SIGKILL)  # the holder dies without any cleanup: the lock must not stay behind
    first.wait()
    assert main(argv) == 0
    assert [r["batch"] for r in fi.metrics_lines(folder)] == [1, 2]


def test_a_process_may_retake_its_own_folder(tmp_path):
    from flexbert.folder_lock import hold_folder, release_folder

    hold_folder(tmp_path / "f", "training run", "a")
    hold_folder(tmp_path / "f", "training run", "b")  # re-entrant within the holder
    assert '"name": "b"' in (tmp_path / "f" / ".lock").read_text()
    release_folder(tmp_path / "f")


def test_second_sweep_into_a_held_out_folder_fails_naming_the_holder(tmp_path, holder, capsys):
    from flexbert.sweep.__main__ import main as sweep_main

    out = tmp_path / "sweep"
    first = holder(out, "sweep", "blocks_demo")
    code = sweep_main([str(ROOT / "yamls/ablations/blocks_demo.yaml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"pid {first.pid}" in err and "sweep 'blocks_demo'" in err, err
    assert not (out / "runs").exists() and not (out / "sweep_state.json").exists()


def test_a_run_refused_at_validation_leaves_no_lock(tiny_corpus, tmp_path, capsys):
    folder = tmp_path / "run"
    argv = [str(ROOT / "yamls/demo.yaml"), *fi.run_overrides(tiny_corpus, folder, 2, 2), "precision=fp64"]
    assert main(argv) == 2
    assert "precision" in capsys.readouterr().err
    assert not (folder / ".lock").exists() and not folder.exists()
