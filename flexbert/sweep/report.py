"""results.csv, results.md and loss_curves.png of a sweep, rebuilt from the runs' metrics.jsonl and the sweep state.

Per variant:
- final train loss: mean of `loss/train/total` over the last `FINAL_STEPS` logged steps (one step is noisy);
- eval loss / masked accuracy: `metrics/eval/LanguageCrossEntropy` / `MaskedAccuracy` of the last evaluation, at
  the eval loader's masking rate (15% in the recipes);
- tokens/s: the median of the `throughput/tokens_per_sec` values of Composer's SpeedMonitor (each a window
  average, eval excluded); the median, because one slow window (a checkpoint, a busy machine) should not decide;
- peak RSS: of the run's process (its largest process under a multi-process launcher), from wait4;
- peak GPU memory: the largest `memory/peak_reserved_mem` (else `peak_allocated_mem`) of Composer's
  MemoryMonitor, when the run has `callbacks.memory_monitor`;
- wall time: of the run's subprocesses, summed over resumed attempts.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional

from flexbert.sweep.process import error_headline
from flexbert.sweep.runner import PlannedRun, display_path, plan_runs
from flexbert.sweep.spec import SweepSpec, render_overrides, render_value, short_keys
from flexbert.sweep.state import SweepState

FINAL_STEPS = 5
TRAIN_LOSS = "loss/train/total"
EVAL_LOSS = "metrics/eval/LanguageCrossEntropy"
EVAL_ACC = "metrics/eval/MaskedAccuracy"
TOKENS_PER_SEC = "throughput/tokens_per_sec"
GPU_MEMORY = ("memory/peak_reserved_mem", "memory/peak_allocated_mem")

COLUMNS = ["variant", "status", "overrides", "params", "final_train_loss", "eval_loss", "eval_masked_accuracy",
           "tokens_per_sec", "peak_rss_mb", "peak_gpu_mem_gb", "wall_s", "tokens", "error"]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; a torn last line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def curves(records: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(tokens, train loss) and (tokens, eval loss) points, in logging order."""
    train = [(r["token"], r[TRAIN_LOSS]) for r in records if r.get(TRAIN_LOSS) is not None]
    evals = [(r["token"], r[EVAL_LOSS]) for r in records if r.get(EVAL_LOSS) is not None]
    return train, evals


def _last(records: list[dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in records if r.get(key) is not None]
    return values[-1] if values else None


def _median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def _peak_gpu(records: list[dict[str, Any]]) -> Optional[float]:
    for key in GPU_MEMORY:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            return max(values)
    return None


def summarize(run: PlannedRun, entry: dict[str, Any]) -> dict[str, Any]:
    records = read_metrics(run.folder / "metrics.jsonl")
    losses = [r[TRAIN_LOSS] for r in records if r.get(TRAIN_LOSS) is not None]
    status = entry.get("status", "pending")
    return {
        "variant": run.name,
        "status": status,
        "overrides": "; ".join(render_overrides(run.variant.overrides)),
        "params": entry.get("params"),
        "final_train_loss": sum(losses[-FINAL_STEPS:]) / len(losses[-FINAL_STEPS:]) if losses else None,
        "eval_loss": _last(records, EVAL_LOSS),
        "eval_masked_accuracy": _last(records, EVAL_ACC),
        "tokens_per_sec": _median([r[TOKENS_PER_SEC] for r in records if r.get(TOKENS_PER_SEC) is not None]),
        "peak_rss_mb": entry.get("peak_rss_mb"),
        "peak_gpu_mem_gb": _peak_gpu(records),
        "wall_s": entry.get("wall_s"),
        "tokens": max((r["token"] for r in records), default=None),
        "error": error_headline(entry.get("error") or "") if status in ("failed", "invalid") else
                 f"eval: {error_headline(entry.get('eval_error') or '')}" if entry.get("eval_status") == "failed" else "",
    }


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _params(n: Optional[int]) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def _eval_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The downstream columns (`eval_<task>` ..., `eval_rank`) when the sweep has an `eval:` section."""
    return [k for k in (rows[0] if rows else {}) if k.startswith("eval_") and k not in COLUMNS]


def markdown_table(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    shorts = short_keys(spec.varied_keys)
    show_gpu = any(r["peak_gpu_mem_gb"] is not None for r in rows)
    evals = _eval_keys(rows)
    header = ["variant", "overrides", "params", f"train loss (last {FINAL_STEPS})", "eval loss", "eval masked acc",
              "tokens/s", "peak RSS (MB)"] + (["peak GPU mem (GB)"] if show_gpu else []) + \
             [k.removeprefix("eval_") if k != "eval_rank" else "downstream rank" for k in evals] + ["wall (s)", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for variant, row in zip(spec.variants, rows):
        overrides = ", ".join(f"{shorts.get(k, k)}={render_value(v)}" for k, v in variant.overrides.items()) or "(base)"
        cells = [row["variant"], overrides, _params(row["params"]), _fmt(row["final_train_loss"], 3),
                 _fmt(row["eval_loss"], 3), _fmt(row["eval_masked_accuracy"], 3), _fmt(row["tokens_per_sec"], 0),
                 _fmt(row["peak_rss_mb"], 0)] + ([_fmt(row["peak_gpu_mem_gb"], 2)] if show_gpu else []) + \
                [_fmt(row[k], 2 if k == "eval_rank" else 4) for k in evals] + [_fmt(row["wall_s"], 0), row["status"]]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def write_markdown(spec: SweepSpec, rows: list[dict[str, Any]], path: Path) -> None:
    parts = [f"# Sweep `{spec.name}`", ""]
    if spec.description:
        parts += [spec.description.strip(), ""]
    common = ", ".join(f"`{o}`" for o in render_overrides(spec.common)) or "none"
    parts += [f"Base run: `{display_path(spec.base)}`; common overrides: {common}.", "",
              markdown_table(spec, rows), "",
              "Train loss at the run's training masking rate; eval loss and masked accuracy at the eval loader's "
              "(15% in the recipes), from the last evaluation. Curves: `loss_curves.png`.", ""]
    described = [v for v in spec.variants if v.description]
    if described:
        parts += ["Variants:", ""] + [f"- `{v.name}`: {v.description.strip()}" for v in described] + [""]
    failed = [r for r in rows if r["status"] in ("failed", "invalid") or r["error"]]
    if failed:
        parts += ["Failures:", ""] + [f"- `{r['variant']}` ({r['status']}): {r['error']}" for r in failed] + [""]
    path.write_text("\n".join(parts), encoding="utf-8")


def plot_curves(spec: SweepSpec, runs: list[PlannedRun], path: Path, rows: Optional[list[dict[str, Any]]] = None) -> None:
    """Loss curves; with downstream scores, a second panel of each task's score per variant."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    tasks = [k for k in _eval_keys(rows or []) if k != "eval_rank"]
    if tasks:
        fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 5))
        width = 0.8 / max(1, len(runs))
        for i, (run, row) in enumerate(zip(runs, rows)):
            values = [row[k] if row[k] is not None else float("nan") for k in tasks]
            bars.bar([t + i * width for t in range(len(tasks))], values, width, color=f"C{i % 10}", label=run.name)
        bars.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], [k.removeprefix("eval_") for k in tasks])
        bars.set_ylabel("fine-tuned score (first metric, mean over seeds)")
        bars.set_title("downstream tasks")
        bars.legend(fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        train, evals = curves(read_metrics(run.folder / "metrics.jsonl"))
        if not train and not evals:
            continue
        color = f"C{i % 10}"
        if train:
            ax.plot([t for t, _ in train], [v for _, v in train], color=color, lw=1.2, label=f"{run.name} (train)")
        if evals:
            ax.plot([t for t, _ in evals], [v for _, v in evals], color=color, ls="none", marker="o", ms=6,
                    markeredgecolor="black", label=f"{run.name} (eval)")
    ax.set_xlabel("tokens")
    ax.set_ylabel("MLM loss (train: training mask rate; eval: 15%)")
    ax.set_title(f"sweep {spec.name}")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(spec: SweepSpec, out: Path, state: Optional[SweepState] = None) -> list[dict[str, Any]]:
    """Write OUT/results.csv, OUT/results.md and OUT/loss_curves.png; returns the rows."""
    from flexbert.sweep.evaluation import add_eval_scores, eval_columns, eval_tasks

    state = state or SweepState(out, spec.name)
    runs = plan_runs(spec, out)
    rows = [summarize(run, state.get(run.name)) for run in runs]
    tasks = eval_tasks(spec, out)
    if tasks:
        add_eval_scores(spec, runs, rows, tasks)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv", COLUMNS + (eval_columns(tasks) if tasks else []))
    write_markdown(spec, rows, out / "results.md")
    plot_curves(spec, runs, out / "loss_curves.png", rows)
    return rows
