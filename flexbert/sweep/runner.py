"""Turn a sweep into commands, check them, and run them one after another as subprocesses, resumably.

Each variant runs as `LAUNCHER main.py BASE <common overrides> <variant overrides>
run_name=<name> save_folder=OUT/runs/<name>` (+ `loggers.wandb.group=<sweep>` when the run logs to wandb), so
every run starts from the same base file with the same seed and data order unless the sweep changes them. A
subprocess per run: a crash or an OOM kill ends that run, not the sweep, and multi-process launchers
(`composer -n 8`) work unchanged. Its stdout and stderr go to OUT/runs/<name>/log.txt.

Resuming (state.py): a `done` run is skipped; a run that was `running` or `interrupted` when the sweep stopped
(or a `failed` one, with --retry-failed) is started again with `autoresume=true`, so Composer continues from
OUT/runs/<name>/latest-rank0.pt (or starts over when no checkpoint was written yet). A run whose folder exists but whose overrides changed since
it started is an error: its checkpoints and metrics belong to another config.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flexbert.folder_lock import FolderBusyError, hold_folder
from flexbert.sweep.evaluation import run_eval, validate_eval
from flexbert.sweep.process import INTERRUPTS, error_headline, error_tail, execute
from flexbert.sweep.spec import SweepError, SweepSpec, Variant, render_overrides, render_value
from flexbert.sweep.state import RESUMABLE, SweepState
from flexbert.sweep.validate import Validation, launcher_world_size, validate_variant

DEFAULT_LAUNCHER = "python"


@dataclass
class PlannedRun:
    variant: Variant
    folder: Path  # OUT/runs/<name>
    fingerprint: list[str]  # common + variant overrides as key=value: what defines the run
    managed: list[str]  # overrides the sweep adds: run_name, save_folder, wandb group
    validation: Optional[Validation] = None

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def overrides(self) -> list[str]:
        return self.fingerprint + self.managed


def _entry_script() -> str:
    """main.py of the current directory (the repo root, where run files' relative data paths point), else the repo's."""
    if Path("main.py").is_file():
        return "main.py"
    return str(Path(__file__).resolve().parents[2] / "main.py")


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def plan_runs(spec: SweepSpec, out: Path) -> list[PlannedRun]:
    runs = []
    for variant in spec.variants:
        folder = out / "runs" / variant.name
        fingerprint = render_overrides(spec.common) + render_overrides(variant.overrides)
        managed = [f"run_name={render_value(variant.name)}", f"save_folder={render_value(str(folder))}"]
        runs.append(PlannedRun(variant, folder, fingerprint, managed))
    return runs


def validate_runs(spec: SweepSpec, runs: list[PlannedRun], launcher: str) -> None:
    """Validate each run's config; add the wandb group where the run logs to wandb and sets no group itself."""
    try:
        world_size = launcher_world_size(launcher)
    except ValueError as err:
        raise SweepError(str(err)) from None
    for run in runs:
        run.validation = validate_variant(spec.base, run.overrides, world_size)
        cfg = run.validation.cfg
        wandb = cfg.loggers.get("wandb") if cfg is not None else None
        if run.validation.error is None and isinstance(wandb, dict) and not wandb.get("group"):
            run.managed.append(f"loggers.wandb.group={render_value(spec.name)}")


def command(spec: SweepSpec, run: PlannedRun, launcher: str, resume: bool) -> list[str]:
    """The run's command line as the launcher would get it (`python` means the current interpreter when run here)."""
    tokens = shlex.split(launcher)
    if not any(t.endswith(".py") for t in tokens):
        tokens.append(_entry_script())
    extra = ["autoresume=true"] if resume else []
    return tokens + [display_path(spec.base)] + run.overrides + extra


def check_fingerprints(runs: list[PlannedRun], state: SweepState) -> None:
    """A run folder started with other overrides cannot be resumed or reported as this variant."""
    stale = []
    for run in runs:
        entry = state.get(run.name)
        if not entry:
            continue
        if not run.folder.exists():
            state.forget(run.name)  # deleted by the user, or never launched: start it fresh
        elif entry.get("overrides") != run.fingerprint:
            before, now = entry.get("overrides") or [], run.fingerprint
            gone, added = [o for o in before if o not in now], [o for o in now if o not in before]
            stale.append(f"  {run.name}: started with {gone or '(same set, other order)'}, now {added or before}")
    if stale:
        raise SweepError(
            "these runs were started with different overrides than the sweep file now gives:\n" + "\n".join(stale)
            + "\nuse another --out, or delete their folders under runs/ to run them again"
        )


def should_resume(run: PlannedRun, state: SweepState) -> bool:
    entry = state.get(run.name)
    return entry.get("status") in RESUMABLE or (run.folder / "latest-rank0.pt").exists()


# ------------------------------------------------------------------------------------------ execution


def run_one(spec: SweepSpec, run: PlannedRun, state: SweepState, launcher: str, label: str) -> str:
    """Run (or resume) one variant; returns its final status."""
    resume = should_resume(run, state)
    cmd = command(spec, run, launcher, resume)
    log_path = run.folder / "log.txt"
    offset = log_path.stat().st_size if log_path.exists() else 0
    entry = state.get(run.name)
    attempts = int(entry.get("attempts", 0)) + 1
    state.update(run.name, status="running", attempts=attempts, command=shlex.join(cmd), overrides=run.fingerprint,
                 params=run.validation.params if run.validation else entry.get("params"), error=None)
    print(f"{label} {run.name}: {'resuming' if resume else 'running'} (log: {log_path})", flush=True)
    try:
        code, wall, rss = execute(cmd, log_path)
    except INTERRUPTS:
        state.update(run.name, status="interrupted")
        raise
    wall_total = float(entry.get("wall_s") or 0.0) + wall  # a resumed run's time adds up over attempts
    rss = max(rss, float(entry.get("peak_rss_mb") or 0.0))
    if code == 0:
        state.update(run.name, status="done", returncode=0, wall_s=wall_total, peak_rss_mb=rss)
        print(f"{label} {run.name}: done in {wall:.0f}s", flush=True)
        return "done"
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        error = error_tail(log.read())
    state.update(run.name, status="failed", returncode=code, wall_s=wall_total, peak_rss_mb=rss, error=error)
    print(f"{label} {run.name}: FAILED (exit {code}): {error_headline(error)}", flush=True)
    return "failed"


def run_sweep(spec: SweepSpec, out: Path, launcher: str = DEFAULT_LAUNCHER, retry_failed: bool = False) -> SweepState:
    """Validate every variant, then run the unfinished ones in order. Returns the final state."""
    try:  # one sweep per folder: a second one would launch every variant again beside the first
        hold_folder(out, "sweep", spec.name)
    except FolderBusyError as err:
        raise SweepError(str(err)) from None
    except OSError as err:  # read-only, not a folder, no permission
        raise SweepError(f"{out}: cannot write the sweep's output folder ({err.strerror or err}); choose a writable "
                         "folder with --out") from None
    state = SweepState(out, spec.name)
    runs = plan_runs(spec, out)
    check_fingerprints(runs, state)
    todo = [r for r in runs if state.get(r.name).get("status") != "done"]
    validate_runs(spec, todo, launcher)
    evaluate = bool(validate_eval(spec, out))
    for i, run in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}]"
        status = state.get(run.name).get("status")
        if status == "done":
            print(f"{label} {run.name}: done earlier, skipped")
            # a deleted eval/results.json is rebuilt (the evaluation reuses its finished (task, seed) results)
            if evaluate and (state.get(run.name).get("eval_status") != "done"
                             or not (run.folder / "eval" / "results.json").is_file()):
                run_eval(spec, run, state, out, label)
            continue
        if run.validation.error:
            state.update(run.name, status="invalid", overrides=run.fingerprint, error=run.validation.error, params=None)
            print(f"{label} {run.name}: INVALID, not run: {run.validation.error}")
            continue
        if status == "failed" and not retry_failed:
            print(f"{label} {run.name}: failed earlier, skipped (--retry-failed runs it again)")
            continue
        if run_one(spec, run, state, launcher, label) == "done" and evaluate:
            run_eval(spec, run, state, out, label)
    return state
