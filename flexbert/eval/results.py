"""Per-(task, seed) result files and the summary tables: results.json, results.csv, results.md.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a half-written table
and a finished (task, seed) result is either there whole or not at all. The standard deviation is the sample
standard deviation over seeds (n - 1); with one seed it is left empty.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Optional


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def result_path(out_dir: Path, task: str, seed: int) -> Path:
    return out_dir / "runs" / task / f"seed{seed}" / "result.json"


class ResultFileError(ValueError):
    """A result file that exists but cannot be used; the message names it and the fix."""


def read_result(out_dir: Path, task: str, seed: int) -> Optional[dict[str, Any]]:
    """The finished result of (task, seed), or None when it has none. Result files are written whole (temporary
    name, then rename), so a damaged one was changed by something else: it is named, not silently retrained."""
    path = result_path(out_dir, task, seed)
    fix = f"delete it (or move it away) and rerun to recompute {task} seed {seed}"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = f"not JSON ({err.msg}, line {err.lineno})" if isinstance(err, json.JSONDecodeError) else str(err)
        raise ResultFileError(f"{path}: damaged result file: {reason}; {fix}") from None
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise ResultFileError(f"{path}: damaged result file: it holds no `metrics` mapping of scores; {fix}")
    return result


def write_result(out_dir: Path, result: dict[str, Any]) -> None:
    atomic_write_text(result_path(out_dir, result["task"], result["seed"]), json.dumps(result, indent=1))


def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """{task: {metric: {"values": {seed: v}, "mean": m, "std": s}}} in the order the results come."""
    out: dict[str, Any] = {}
    for result in results:
        for metric, value in result["metrics"].items():
            entry = out.setdefault(result["task"], {}).setdefault(metric, {"values": {}})
            entry["values"][str(result["seed"])] = value
    for metrics in out.values():
        for entry in metrics.values():
            entry["mean"], entry["std"] = mean_std(list(entry["values"].values()))
    return out


def _fmt(value: Optional[float]) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def describe_start(start: dict[str, Any]) -> str:
    """One phrase: which model the scores start from, by path and content."""
    if not start.get("path"):
        return "random initialization (architecture from model_config)"
    where = f"`{start['path']}` (sha256 {str(start.get('sha256'))[:16]})"
    return f"random initialization with the architecture of {where}" if start.get("random_init") else where


def write_reports(out_dir: Path, name: str, results: list[dict[str, Any]], missing: list[str], start: dict[str, Any],
                  stale: list[str] = (), models: dict[str, str] = None) -> dict[str, Any]:
    """results.json (summary, every run, the starting point), results.csv (one row per task, metric and seed or
    mean/std, with the starting point of each row) and results.md."""
    summary = summarize(results)
    models = models or {}
    atomic_write_text(out_dir / "results.json", json.dumps({"name": name, "start": start, "summary": summary,
                                                            "runs": results, "missing": missing, "stale": list(stale),
                                                            "models": models}, indent=1))
    start_of = {(r["task"], str(r["seed"])): r.get("start") or {} for r in results}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "metric", "seed", "value", "start_path", "start_sha256", "random_init"])
    for task, metrics in summary.items():
        for metric, entry in metrics.items():
            for seed, value in entry["values"].items():
                row_start = start_of.get((task, seed), {})
                writer.writerow([task, metric, seed, _fmt(value), row_start.get("path") or "", row_start.get("sha256") or "",
                                 row_start.get("random_init", "")])
            for label in ("mean", "std"):
                writer.writerow([task, metric, label, _fmt(entry[label]), start.get("path") or "", start.get("sha256") or "",
                                 start.get("random_init")])
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    lines = [f"# {name}", "", f"Starting point: {describe_start(start)}", "",
             "| task | metric | seeds | values | mean | std |", "|---|---|---|---|---|---|"]
    for task, metrics in summary.items():
        for metric, entry in metrics.items():
            seeds = ", ".join(entry["values"])
            values = ", ".join(_fmt(v) for v in entry["values"].values())
            lines.append(f"| {task} | {metric} | {seeds} | {values} | {_fmt(entry['mean'])} | {_fmt(entry['std'])} |")
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}"]
    if stale:
        lines += ["", f"Not in the table (computed from another starting point or other settings; rerun to recompute): "
                      f"{', '.join(stale)}"]
    if models:
        lines += ["", "Fine-tuned models (Hugging Face folders): "
                      + ", ".join(f"{task}: `{folder}`" for task, folder in models.items())]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    return summary
