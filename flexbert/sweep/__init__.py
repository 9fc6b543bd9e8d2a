"""Ablation sweeps: run variants of one run file in sequence, resumably, and tabulate and plot the results.

Usage: `python -m flexbert.sweep SWEEP.yaml [--out DIR] [--dry-run] [--launcher "composer -n 8"] [--report]`.

- spec.py      the sweep file (base run, common overrides, grid or named variants), run names
- validate.py  a variant's run config checked without training; parameter count on the meta device
- state.py     OUT/sweep_state.json (status per run, written atomically)
- runner.py    commands, subprocess execution with logs, skip / resume / failure handling
- report.py    results.csv, results.md, loss_curves.png from the runs' metrics.jsonl
"""

from flexbert.sweep.report import write_report
from flexbert.sweep.runner import command, plan_runs, run_sweep, validate_runs
from flexbert.sweep.spec import SweepError, SweepSpec, Variant, load_sweep

__all__ = ["SweepError", "SweepSpec", "Variant", "command", "load_sweep", "plan_runs", "run_sweep", "validate_runs",
           "write_report"]
