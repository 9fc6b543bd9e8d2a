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


def read_result(out_dir: Path, task: str, seed: int) -> Optional[dict[str, Any]]:
    path = result_path(out_dir, task, seed)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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


def write_reports(out_dir: Path, name: str, results: list[dict[str, Any]], missing: list[str]) -> dict[str, Any]:
    summary = summarize(results)
    atomic_write_text(out_dir / "results.json", json.dumps({"name": name, "summary": summary, "runs": results,
                                                            "missing": missing}, indent=1))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "metric", "seed", "value"])
    for task, metrics in summary.items():
        for metric, entry in metrics.items():
            for seed, value in entry["values"].items():
                writer.writerow([task, metric, seed, _fmt(value)])
            writer.writerow([task, metric, "mean", _fmt(entry["mean"])])
            writer.writerow([task, metric, "std", _fmt(entry["std"])])
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    lines = [f"# {name}", "", "| task | metric | seeds | values | mean | std |", "|---|---|---|---|---|---|"]
    for task, metrics in summary.items():
        for metric, entry in metrics.items():
            seeds = ", ".join(entry["values"])
            values = ", ".join(_fmt(v) for v in entry["values"].values())
            lines.append(f"| {task} | {metric} | {seeds} | {values} | {_fmt(entry['mean'])} | {_fmt(entry['std'])} |")
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}"]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    return summary
