"""data_prep deletes or recovers only what it provably wrote (data_prep/_io.py): an output may never replace one of
its inputs, and the `OUT.tmp-<pid>` / `OUT.old-<pid>` siblings of an interrupted run are recognised by the marker
file the tool wrote inside them, never by their name alone."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep import build_demo_corpus, build_demo_tasks
from tests.helpers import ROOT


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _source(folder: Path) -> Path:
    """A copy of the labelled CSV the demo task is built from, in a folder of the test's own."""
    folder.mkdir(parents=True)
    source = folder / "tweets.csv"
    source.write_bytes(build_demo_tasks.default_source().read_bytes())
    return source


@pytest.mark.parametrize("layout", ["out_is_source_folder", "out_contains_source_folder"])
def test_demo_tasks_never_replace_their_source(tmp_path, capsys, layout):
    source = _source(tmp_path / "data" / "labelled")
    out = source.parent if layout == "out_is_source_folder" else source.parent.parent
    before = _files(tmp_path)
    assert build_demo_tasks.main(["--source", str(source), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before


@pytest.mark.slow
def test_demo_corpus_never_replaces_the_sources_it_reads(tmp_path, capsys):
    stdlib = tmp_path / "lib"
    stdlib.mkdir()
    (stdlib / "mod.py").write_text('"""A module docstring that is long enough to be kept as a document."""\n')
    before = _files(tmp_path)
    assert build_demo_corpus.main(["--stdlib", str(stdlib), "--out", str(stdlib), "--overwrite", "--quiet"]) == 2
    assert f"--out {stdlib}" in capsys.readouterr().err and _files(tmp_path) == before


def test_folders_named_like_leftovers_but_not_ours_are_left_alone(tmp_path, capsys):
    out = tmp_path / "tasks"
    pid = _dead_pid()
    users = {}
    for kind in ("old", "tmp"):  # the user's own folders; OUT itself is missing, as after a killed swap
        users[kind] = tmp_path / f"tasks.{kind}-{pid}"
        users[kind].mkdir()
        (users[kind] / "thesis.tex").write_text(f"the user's {kind} work")
    before = {kind: _files(path) for kind, path in users.items()}
    assert build_demo_tasks.main(["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "recovered" not in err
    assert all(_files(path) == before[kind] for kind, path in users.items())
    assert str(users["old"]) in err and str(users["tmp"]) in err and err.count("alone: it is named like") == 2
    assert sorted(p.name for p in out.iterdir()) == [build_demo_tasks.TASK]


def test_an_interrupted_swap_is_still_recovered(tmp_path, capsys):
    """What a kill between the swap's two renames leaves, written by the tool itself: OUT is moved back."""
    out = tmp_path / "tasks"
    assert build_demo_tasks.main(["--out", str(out)]) == 0
    built = _files(out)
    kill = ("import os, signal, sys\nfrom pathlib import Path\nreal, calls = Path.rename, [0]\n"
            "def rename(self, target):\n    calls[0] += 1\n    if calls[0] == 2:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n    return real(self, target)\n"
            "Path.rename = rename\nfrom data_prep import build_demo_tasks\n"
            "sys.exit(build_demo_tasks.main(sys.argv[1:]))\n")
    argv = ["--out", str(out), "--overwrite", "--seed", "1"]
    proc = subprocess.run([sys.executable, "-c", kill, *argv], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == -9 and not out.exists(), proc.stderr
    assert build_demo_tasks.main(["--out", str(out)]) == 2  # no --overwrite: OUT is back
    assert "recovered" in capsys.readouterr().err and _files(out) == built
    assert not list(tmp_path.glob("tasks.*-*"))
