"""`python -m flexbert.sweep SWEEP.yaml [--out DIR] [--dry-run] [--launcher CMD] [--report] [--retry-failed]`.

Runs every variant of the sweep file one after another (each as `LAUNCHER main.py BASE overrides...`), skipping
finished runs and resuming interrupted ones, then writes OUT/results.md, OUT/results.csv and OUT/loss_curves.png.
Exit status: 0 when every run is done, 1 when some failed or are invalid, 2 for a bad sweep file, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from flexbert.sweep.report import markdown_table, write_report
from flexbert.sweep.process import INTERRUPTS
from flexbert.sweep.runner import (DEFAULT_LAUNCHER, command, display_path, plan_runs, run_sweep, should_resume,
                                   validate_runs)
from flexbert.schema import ConfigError
from flexbert.sweep.spec import SweepError, load_sweep
from flexbert.sweep.state import SweepState


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexbert.sweep", description=__doc__.split("\n\n")[1])
    parser.add_argument("sweep", help="sweep YAML (see flexbert/sweep/spec.py for its keys)")
    parser.add_argument("--out", help="output folder [sweeps/<sweep name>]")
    parser.add_argument("--dry-run", action="store_true", help="validate every variant and print the commands; run nothing")
    parser.add_argument("--launcher", default=DEFAULT_LAUNCHER,
                        help=f"command prefix before main.py, e.g. 'composer -n 8' [{DEFAULT_LAUNCHER}]")
    parser.add_argument("--report", action="store_true", help="only rebuild results.md/.csv and loss_curves.png")
    parser.add_argument("--retry-failed", action="store_true", help="run failed variants again (resuming their checkpoints)")
    return parser


def dry_run(spec, out: Path, launcher: str, retry_failed: bool) -> int:
    """Validate every variant and print the exact command of each run a real invocation would start now."""
    state = SweepState(out, spec.name)
    runs = plan_runs(spec, out)
    validate_runs(spec, runs, launcher)
    invalid = 0
    print(f"# sweep {spec.name}: {len(runs)} runs from {display_path(spec.base)}, output in {out}")
    for run in runs:
        status = state.get(run.name).get("status", "new")
        if run.validation.error:
            invalid += 1
            print(f"# {run.name}: INVALID: {run.validation.error}")
            continue
        print(f"# {run.name}: valid, {run.validation.params / 1e6:.2f}M parameters, status {status}")
        if status == "done" or (status == "failed" and not retry_failed):
            print(f"#   skipped: {status} earlier" + ("" if status == "done" else " (--retry-failed runs it again)"))
            continue
        print(shlex.join(command(spec, run, launcher, should_resume(run, state))))
    print(f"# {len(runs) - invalid} valid, {invalid} invalid")
    return 1 if invalid else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.dry_run and args.report:
        print("error: --dry-run and --report exclude each other", file=sys.stderr)
        return 2
    try:
        spec = load_sweep(args.sweep)
        out = Path(args.out) if args.out else Path("sweeps") / spec.name
        if args.dry_run:
            return dry_run(spec, out, args.launcher, args.retry_failed)
        if args.report:
            if not (out / "sweep_state.json").is_file():
                raise SweepError(f"{out}: no sweep_state.json: nothing was run there yet")
            rows = write_report(spec, out)
        else:
            start = time.time()
            try:
                state = run_sweep(spec, out, args.launcher, args.retry_failed)
            except INTERRUPTS as stop:
                write_report(spec, out)
                print("\ninterrupted: run the same command again to resume (finished runs are kept)", file=sys.stderr)
                return stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
            rows = write_report(spec, out, state)
            print(f"sweep took {time.time() - start:.0f}s")
    except ConfigError as err:  # SweepError, and any other problem of a file the sweep reads
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(spec, rows))
    print(f"\nresults: {out / 'results.md'}, {out / 'results.csv'}, {out / 'loss_curves.png'}")
    return 0 if all(r["status"] == "done" and not r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
