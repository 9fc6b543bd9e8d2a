"""Run every (task, seed) of an evaluation file, skipping the finished ones, then write the summary.

Every task's data is read and checked before the first run starts, so a bad task file fails in seconds. A
finished pair is reused only if its recorded settings fingerprint equals the file's current one; an interrupted
pair (no result file) runs again from the start. With `parallel`, each task runs in its own process
(`python -m flexbert.eval FILE --task NAME`), one per GPU at a time (one at a time without GPUs).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Optional, Sequence

from flexbert.eval.results import read_result, write_reports, write_result

log = logging.getLogger(__name__)


def pending(spec, tasks) -> list[tuple]:
    out = []
    for task in tasks:
        fingerprint = task.fingerprint(spec)
        for seed in task.seeds:
            done = read_result(spec.out_dir, task.name, seed)
            if done is None or done.get("fingerprint") != fingerprint:
                out.append((task, seed))
    return out


def check_tasks(tasks) -> None:
    """Read every task's data and build its metrics: a bad file or metric name fails before any training."""
    from flexbert.eval.finetune import read_task
    from flexbert.eval.metrics import build_metrics

    for task in tasks:
        data = read_task(task)
        build_metrics(task.metrics, task.data["problem_type"], data.num_labels, f"task {task.name}")


def _is_rank_zero() -> bool:
    from composer.utils import dist

    return dist.get_global_rank() == 0


def run_tasks(spec, tasks, log_line=print) -> None:
    """Every unfinished (task, seed), one after another. Under a multi-process launcher every process trains
    (data-parallel) and the first one writes the results."""
    from flexbert.eval.finetune import finetune

    todo = pending(spec, tasks)
    skipped = sum(len(t.seeds) for t in tasks) - len(todo)
    if skipped:
        log_line(f"{skipped} finished (task, seed) pair(s) skipped")
    for task, seed in todo:
        log_line(f"fine-tuning {task.name} seed {seed}")
        result = finetune(spec, task, seed, spec.out_dir / "runs" / task.name / f"seed{seed}")
        result["fingerprint"] = task.fingerprint(spec)
        if _is_rank_zero():
            write_result(spec.out_dir, result)
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        log_line(f"  {task.name} seed {seed}: {scores} ({result['steps']} steps, {result['wall_s']}s)")


def run_parallel(spec, tasks, eval_file: str, overrides: Sequence[str], log_line=print) -> list[str]:
    """One process per task; returns the tasks whose process failed."""
    import torch

    slots = max(1, torch.cuda.device_count())
    waiting = [t for t in tasks if any(True for _ in pending(spec, [t]))]
    running: list[tuple] = []
    failed = []
    free_gpus = list(range(slots))
    while waiting or running:
        while waiting and free_gpus:
            task, gpu = waiting.pop(0), free_gpus.pop(0)
            env = dict(os.environ)
            if torch.cuda.device_count():
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            command = [sys.executable, "-m", "flexbert.eval", eval_file, *overrides, "--task", task.name,
                       "--out", str(spec.out_dir), "--no-report"]
            log_line(f"started {task.name}" + (f" on GPU {gpu}" if torch.cuda.device_count() else ""))
            running.append((task, gpu, subprocess.Popen(command, env=env)))
        task, gpu, process = running.pop(0)
        if process.wait() != 0:
            failed.append(task.name)
        free_gpus.append(gpu)
    return failed


def report(spec) -> dict:
    results, missing = [], []
    for task in spec.tasks:
        for seed in task.seeds:
            result = read_result(spec.out_dir, task.name, seed)
            if result is None:
                missing.append(f"{task.name}/seed{seed}")
            else:
                results.append(result)
    return write_reports(spec.out_dir, spec.base_run_name, results, missing)


def run(spec, eval_file: str, overrides: Sequence[str] = (), only: Optional[str] = None, parallel: Optional[bool] = None,
        write_report: bool = True, log_line=print) -> int:
    tasks = [spec.task(only)] if only else spec.tasks
    check_tasks(tasks)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    if (spec.parallel if parallel is None else parallel) and not only and len(tasks) > 1:
        failed = run_parallel(spec, tasks, eval_file, overrides, log_line)
    else:
        run_tasks(spec, tasks, log_line)
    if write_report and _is_rank_zero():
        report(spec)
        log_line(f"results: {spec.out_dir}/results.md")
    if failed:
        log_line(f"error: task process(es) failed: {', '.join(failed)}")
        return 1
    return 0
