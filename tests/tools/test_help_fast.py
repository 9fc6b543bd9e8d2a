"""`--help` of every command answers at once: nothing heavy (torch, transformers, Composer) is imported before the
arguments are parsed. The import check is independent of the machine's load; the wall time is measured too."""

import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

COMMANDS = ["main.py", "flexbert.convert", "flexbert.eval", "flexbert.sweep", "flexbert.list_registries",
            "flexbert.train.curves",
            "data_prep.prepare", "data_prep.build_demo_corpus", "data_prep.build_demo_tasks",
            "data_prep.build_retrieval_tasks", "data_prep.tokenize_to_mds", "data_prep.train_tokenizer",
            "benchmarks.fault_injection", "benchmarks/attention.py", "benchmarks/dataloader.py", "benchmarks/train_step.py",
            "benchmarks.gpu_smoke", "benchmarks.gpu_kit"]

# Runs a command's entry point with --help the way `python -m` / `python main.py` would, then lists what it loaded.
PROBE = """
import runpy, sys
target = sys.argv[1]
sys.argv = [target, "--help"]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print("LOADED", *[m for m in ("torch", "transformers", "composer", "streaming") if m in sys.modules])
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_nothing_heavy(command):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
    loaded = done.stdout.strip().splitlines()[-1].split()[1:]
    assert loaded == [], f"{command} --help imported {loaded}"
    # 2 s on an idle machine; the bound is loose for a shared one, and a torch import alone takes longer
    assert wall < 10, f"{command} --help took {wall:.1f} s"
