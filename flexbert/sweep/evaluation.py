"""Downstream scores of a sweep's variants: each finished pretraining run is fine-tuned on the `eval:` tasks.

For each variant, once its pretraining is done: `python -m flexbert.eval EVAL.yaml
starting_checkpoint_load_path=OUT/runs/<name>/latest-rank0.pt base_run_name=<name> --out OUT/runs/<name>/eval`
(a subprocess, log in OUT/runs/<name>/eval_log.txt). The evaluation resumes on its own (finished (task, seed)
pairs are skipped), so a sweep that is run again simply runs it again until it is done.

Scores: a task's score is the mean over seeds of its first metric; a variant's overall rank is the mean of its
ranks over the tasks (1 = best score; ties share the mean rank), lower is better.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from flexbert.sweep.process import error_headline, error_tail, execute
from flexbert.sweep.spec import SweepError
from flexbert.yaml_file import write_yaml

EVAL_FILE = "eval.yaml"


def eval_file(spec, out: Path) -> Optional[Path]:
    """The evaluation file of the sweep (an inline section is written to OUT/eval.yaml), or None."""
    if spec.eval is None:
        return None
    if isinstance(spec.eval, Path):
        return spec.eval
    out.mkdir(parents=True, exist_ok=True)
    path = out / EVAL_FILE
    write_yaml(path, spec.eval)
    return path


def validate_eval(spec, out: Path) -> list[str]:
    """Check the evaluation file and read its task data before any pretraining starts; returns the task names."""
    from flexbert.errors import DataError
    from flexbert.eval.runner import check_tasks
    from flexbert.eval.spec import load_eval_file
    from flexbert.schema import ConfigError

    path = eval_file(spec, out)
    if path is None:
        return []
    try:
        evaluation = load_eval_file(path, ["base_run_name=check"], str(out), require_start=False)
        check_tasks(evaluation.tasks)
    except (ConfigError, DataError) as err:
        raise SweepError(f"{spec.path}: eval: {err}") from None
    return [task.name for task in evaluation.tasks]


def eval_tasks(spec, out: Path) -> list[str]:
    """The task names of the sweep's evaluation file, in file order ([] without `eval:`)."""
    from flexbert.eval.spec import load_eval_file

    path = eval_file(spec, out)
    if path is None:
        return []
    return [task.name for task in load_eval_file(path, ["base_run_name=check"], str(out), require_start=False).tasks]


def eval_command(spec, run, out: Path) -> list[str]:
    return [sys.executable, "-m", "flexbert.eval", str(eval_file(spec, out)),
            f"starting_checkpoint_load_path={run.folder / 'latest-rank0.pt'}", f"base_run_name={run.name}",
            "--out", str(run.folder / "eval")]


def run_eval(spec, run, state, out: Path, label: str) -> str:
    """Fine-tune and score one pretrained variant; returns the evaluation status (done / failed)."""
    log_path = run.folder / "eval_log.txt"
    offset = log_path.stat().st_size if log_path.exists() else 0
    print(f"{label} {run.name}: fine-tuning on the eval tasks (log: {log_path})", flush=True)
    start = time.time()
    code, _, _ = execute(eval_command(spec, run, out), log_path)
    if code == 0:
        state.update(run.name, eval_status="done", eval_wall_s=time.time() - start, eval_error=None)
        return "done"
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        error = error_tail(log.read())
    state.update(run.name, eval_status="failed", eval_error=error)
    print(f"{label} {run.name}: evaluation FAILED (exit {code}): {error_headline(error)}", flush=True)
    return "failed"


def task_scores(run) -> dict[str, float]:
    """{task: mean over seeds of its first metric} from the variant's eval/results.json ({} before it exists)."""
    path = run.folder / "eval" / "results.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        return {task: next(iter(metrics.values()))["mean"] for task, metrics in summary.items() if metrics}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        raise SweepError(f"{path}: damaged evaluation results; delete it (or move it away) and rerun the sweep: "
                         "the evaluation rewrites it, reusing its finished (task, seed) results") from None


def mean_ranks(scores: list[dict[str, float]], tasks: list[str]) -> list[Optional[float]]:
    """Per variant, the mean over tasks of its rank (1 = highest score, ties averaged); None without all scores."""
    ranks: list[list[float]] = [[] for _ in scores]
    for task in tasks:
        values = [s.get(task) for s in scores]
        scored = [v for v in values if v is not None]
        for i, value in enumerate(values):
            if value is not None:
                better = sum(v > value for v in scored)
                ties = sum(v == value for v in scored)
                ranks[i].append(better + (ties + 1) / 2)
    return [sum(r) / len(r) if len(r) == len(tasks) and tasks else None for r in ranks]


def eval_columns(tasks: list[str]) -> list[str]:
    return [f"eval_{task}" for task in tasks] + ["eval_rank"]


def add_eval_scores(spec, runs, rows: list[dict[str, Any]], tasks: list[str]) -> None:
    scores = [task_scores(run) for run in runs]
    for row, score, rank in zip(rows, scores, mean_ranks(scores, tasks)):
        for task in tasks:
            row[f"eval_{task}"] = score.get(task)
        row["eval_rank"] = rank
