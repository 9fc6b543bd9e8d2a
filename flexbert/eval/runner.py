"""Run every (task, seed) of an evaluation file, skipping the finished ones, then write the summary.

Every task's data is read and checked, and the callbacks, algorithms and loggers built, before the first run starts,
so a bad task file or a missing logger package fails in seconds. Then the output folder is locked for this process
(a second evaluation into it fails at once naming the holder). A finished pair is reused only if its recorded
fingerprint (fingerprint.py: the starting checkpoint's content, the data files' content, every setting) equals the
one computed now; an interrupted pair (no result file) runs again from the start. With `parallel`, each task runs in
its own process (`python -m flexbert.eval FILE --task NAME`), one per GPU at a time (one at a time without GPUs),
under the parent's lock.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Optional, Sequence

from flexbert.eval.fingerprint import starting_point, task_fingerprint
from flexbert.eval.results import describe_start, read_result, write_reports, write_result
from flexbert.eval.saved_model import (best_model_folder, best_seed_is_current, keep_best_seed, read_record,
                                       seed_model_folder)
from flexbert.eval.spec import EvalConfigError

log = logging.getLogger(__name__)

# Set by a parallel evaluation for its per-task processes: the pid of the parent that holds the output folder.
LOCK_HOLDER_ENV = "FLEXBERT_EVAL_LOCK_HOLDER"


def _model_missing(spec, task, seed: int, fingerprints: dict[int, str]) -> bool:
    if task.type == "retrieval" and not task.trainer:  # zero-shot scoring trains nothing, so keeps no model
        return False
    if spec.save_model == "all":
        return read_record(seed_model_folder(spec.out_dir, task.name, seed)) is None
    if spec.save_model == "best_seed":
        return (not best_seed_is_current(spec.out_dir, task, fingerprints)
                and read_record(seed_model_folder(spec.out_dir, task.name, seed)) is None)
    return False


def pending(spec, tasks, start=None) -> list[tuple]:
    """(task, seed, why) of every pair to train; why is None for a pair never finished."""
    start = start or starting_point(spec)
    out = []
    for task in tasks:
        fingerprints = {seed: task_fingerprint(spec, task, seed, start) for seed in task.seeds}
        for seed in task.seeds:
            done = read_result(spec.out_dir, task.name, seed)
            if done is None:
                out.append((task, seed, None))
            elif done.get("fingerprint") != fingerprints[seed]:
                changed = (done.get("start") or {}).get("sha256") != start["sha256"]
                out.append((task, seed, "the starting checkpoint's content changed" if changed
                            else "its settings or data changed"))
            elif _model_missing(spec, task, seed, fingerprints):
                out.append((task, seed, "its fine-tuned model was not saved"))
    return out


def check_tasks(tasks) -> None:
    """Read every task's data and build its metrics: a bad file or metric name fails before any training."""
    from flexbert.eval.finetune import read_task
    from flexbert.eval.metrics import build_metrics
    from flexbert.eval.retrieval_finetune import read_pairs
    from flexbert.eval.retrieval_task import read_retrieval_task

    for task in tasks:
        if task.type == "retrieval":  # its metric names were checked when the file was read
            read_retrieval_task(task)
            if task.data.get("train"):
                read_pairs(task)
            continue
        data = read_task(task)
        build_metrics(task.metrics, task.data["problem_type"], data.num_labels, f"task {task.name}")


def check_sections(spec) -> None:
    """Build the callbacks, algorithms and loggers once: a bad name or argument, or a logger whose package is
    missing, fails before any training, as pretraining's validation does."""
    from flexbert.train.builders import build_algorithms
    from flexbert.train.callbacks import build_callbacks
    from flexbert.train.loggers import build_loggers

    build_callbacks(spec.callbacks)
    build_algorithms(spec.algorithms)
    build_loggers(spec.loggers, None)


def _is_rank_zero() -> bool:
    from composer.utils import dist

    return dist.get_global_rank() == 0


def hold_output(spec) -> None:
    """Own the output folder for this process (rank zero; not a parallel evaluation's per-task process, whose
    parent holds it)."""
    from flexbert.folder_lock import FolderBusyError, hold_folder

    if not _is_rank_zero() or os.environ.get(LOCK_HOLDER_ENV) == str(os.getppid()):
        return
    try:
        hold_folder(spec.out_dir, "evaluation", spec.base_run_name)
    except FolderBusyError as err:
        raise EvalConfigError(str(err)) from None
    except OSError as err:
        raise EvalConfigError(f"{spec.out_dir}: cannot write the output folder ({err.strerror or err}); "
                              "choose a writable folder with --out") from None


def _scores(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def run_tasks(spec, tasks, log_line=print) -> None:
    """Every unfinished (task, seed), one after another. Under a multi-process launcher every process trains
    (data-parallel) and the first one writes the results."""
    from flexbert.eval.finetune import finetune
    from flexbert.eval.retrieval_finetune import finetune_retrieval
    from flexbert.eval.retrieval_task import score_retrieval

    start = starting_point(spec)
    todo = pending(spec, tasks, start)
    skipped = sum(len(t.seeds) for t in tasks) - len(todo)
    log_line(f"starting point: {describe_start(start)}")
    for note in spec.notes:
        log_line(f"note: {note}")
    if skipped:
        log_line(f"{skipped} finished (task, seed) pair(s) skipped")
    for task, seed, why in todo:
        retrieval = task.type == "retrieval"
        action = "scoring (zero-shot retrieval)" if retrieval and not task.trainer else "fine-tuning"
        log_line(f"{action} {task.name} seed {seed}" + (f" again: {why}" if why else ""))
        fingerprint = task_fingerprint(spec, task, seed, start)
        run_dir = spec.out_dir / "runs" / task.name / f"seed{seed}"
        record = {"start": start, "fingerprint": fingerprint}
        trains = task.trainer or not retrieval
        save_to = seed_model_folder(spec.out_dir, task.name, seed) if trains and spec.save_model != "none" else None
        if retrieval and not task.trainer:
            result = score_retrieval(spec, task, seed, run_dir)
        elif retrieval:  # the fine-tuned embedder is kept as a sentence-transformers folder
            result = finetune_retrieval(spec, task, seed, run_dir, save_to, record)
        else:
            result = finetune(spec, task, seed, run_dir, save_to, record)
        result.update(record)
        if _is_rank_zero():
            write_result(spec.out_dir, result)
        done = (f"{result['num_queries']} queries, {result['num_documents']} documents, " if retrieval else "")
        done += f"{result['steps']} steps"
        log_line(f"  {task.name} seed {seed}: {_scores(result['metrics'])} ({done}, {result['wall_s']}s)")
    if spec.save_model == "best_seed" and _is_rank_zero():
        for task in (t for t in tasks if t.type != "retrieval" or t.trainer):  # zero-shot tasks keep no model
            results = {seed: read_result(spec.out_dir, task.name, seed) for seed in task.seeds}
            fingerprints = {seed: task_fingerprint(spec, task, seed, start) for seed in task.seeds}
            if best_seed_is_current(spec.out_dir, task, fingerprints):
                continue
            if all(results[s] and results[s].get("fingerprint") == fingerprints[s] for s in task.seeds):
                folder = keep_best_seed(spec.out_dir, task, results)
                if folder is not None:
                    log_line(f"  {task.name}: best seed's model in {folder}")


def run_parallel(spec, tasks, eval_file: str, overrides: Sequence[str], log_line=print) -> list[str]:
    """One process per task; returns the tasks whose process failed."""
    import torch

    from flexbert.child_process import die_with_parent

    slots = max(1, torch.cuda.device_count())
    start = starting_point(spec)
    waiting = [t for t in tasks if pending(spec, [t], start)]
    running: list[tuple] = []
    failed = []
    free_gpus = list(range(slots))
    while waiting or running:
        while waiting and free_gpus:
            task, gpu = waiting.pop(0), free_gpus.pop(0)
            env = dict(os.environ, **{LOCK_HOLDER_ENV: str(os.getpid())})
            if torch.cuda.device_count():
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            command = [sys.executable, "-m", "flexbert.eval", eval_file, *overrides, "--task", task.name,
                       "--out", str(spec.out_dir), "--no-report"]
            log_line(f"started {task.name}" + (f" on GPU {gpu}" if torch.cuda.device_count() else ""))
            running.append((task, gpu, subprocess.Popen(command, env=env, preexec_fn=die_with_parent())))
        task, gpu, process = running.pop(0)
        if process.wait() != 0:
            failed.append(task.name)
        free_gpus.append(gpu)
    return failed


def _models(spec) -> dict[str, str]:
    """{task or task/seed: folder} of the fine-tuned models kept in the output folder."""
    found = {}
    for task in spec.tasks:
        if read_record(best_model_folder(spec.out_dir, task.name)) is not None:
            found[task.name] = str(best_model_folder(spec.out_dir, task.name))
        for seed in task.seeds:
            if read_record(seed_model_folder(spec.out_dir, task.name, seed)) is not None:
                found[f"{task.name}/seed{seed}"] = str(seed_model_folder(spec.out_dir, task.name, seed))
    return found


def report(spec) -> dict:
    """Rebuild results.* from the finished results computed from the current starting point and settings."""
    start = starting_point(spec)
    results, missing, stale = [], [], []
    for task in spec.tasks:
        for seed in task.seeds:
            result = read_result(spec.out_dir, task.name, seed)
            if result is None:
                missing.append(f"{task.name}/seed{seed}")
            elif result.get("fingerprint") != task_fingerprint(spec, task, seed, start):
                stale.append(f"{task.name}/seed{seed}")
            else:
                results.append(result)
    return write_reports(spec.out_dir, spec.base_run_name, results, missing, start, stale, _models(spec))


def output_files(spec) -> str:
    return ", ".join(str(spec.out_dir / name) for name in ("results.md", "results.csv", "results.json"))


def run(spec, eval_file: str, overrides: Sequence[str] = (), only: Optional[str] = None, parallel: Optional[bool] = None,
        write_report: bool = True, log_line=print) -> int:
    tasks = [spec.task(only)] if only else spec.tasks
    check_tasks(tasks)
    check_sections(spec)
    hold_output(spec)
    failed: list[str] = []
    if (spec.parallel if parallel is None else parallel) and not only and len(tasks) > 1:
        failed = run_parallel(spec, tasks, eval_file, overrides, log_line)
    else:
        run_tasks(spec, tasks, log_line)
    if write_report and _is_rank_zero():
        report(spec)
        models = _models(spec)
        log_line(f"results: {output_files(spec)}" + (f"; models: {', '.join(models.values())}" if models else ""))
    if failed:
        log_line(f"error: task process(es) failed: {', '.join(failed)}")
        return 1
    return 0
