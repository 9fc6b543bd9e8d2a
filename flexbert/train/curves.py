"""Training curves of one run from its `metrics.jsonl`: the numbers, and a PNG of train / eval loss and eval
masked accuracy against the step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TRAIN_LOSS = "loss/train/total"
EVAL_LOSS = "metrics/eval/LanguageCrossEntropy"
EVAL_ACCURACY = "metrics/eval/MaskedAccuracy"


@dataclass
class Curves:
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (step, eval loss, eval masked accuracy)


def read_curves(metrics_file: str | Path) -> Curves:
    """Train loss at every logged step and the evaluations (loss and masked accuracy) of the `eval` evaluator."""
    curves = Curves()
    for line in Path(metrics_file).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if TRAIN_LOSS in record:
            curves.train.append((record["batch"], record[TRAIN_LOSS]))
        if EVAL_LOSS in record and EVAL_ACCURACY in record:
            curves.evals.append((record["batch"], record[EVAL_LOSS], record[EVAL_ACCURACY]))
    return curves


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(curves: Curves, path: str | Path, title: str = "") -> Path:
    """Left: train loss (each step, and a trailing mean over 5% of the steps) and eval loss; right: eval masked
    accuracy. Written as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    if curves.train:
        steps, losses = zip(*curves.train)
        loss_ax.plot(steps, losses, color="C0", lw=0.6, alpha=0.35, label="train (each step)")
        loss_ax.plot(steps, _smooth(list(losses), max(1, len(losses) // 20)), color="C0", lw=1.6, label="train (mean)")
    if curves.evals:
        steps, losses, accuracies = zip(*curves.evals)
        loss_ax.plot(steps, losses, color="C1", marker="o", lw=1.2, label="eval")
        acc_ax.plot(steps, accuracies, color="C2", marker="o", lw=1.2)
    loss_ax.set(xlabel="step", ylabel="MLM cross-entropy", title="loss (train: training masking; eval: 15%)")
    acc_ax.set(xlabel="step", ylabel="masked-token accuracy", title="eval masked accuracy (15% masking)")
    acc_ax.set_ylim(bottom=0)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    if loss_ax.has_data():
        loss_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """`python -m flexbert.train.curves RUN_FOLDER`: draw RUN_FOLDER/curves.png from its metrics.jsonl."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(prog="python -m flexbert.train.curves",
                                     description="Draw RUN_FOLDER/curves.png from the run's metrics.jsonl.")
    parser.add_argument("run_folder", type=Path, help="a run's save_folder (holding metrics.jsonl)")
    args = parser.parse_args(argv)
    metrics = args.run_folder / "metrics.jsonl"
    if not metrics.is_file():
        print(f"error: {metrics}: no such file; give the save_folder of a run that logged at least one step",
              file=sys.stderr)
        return 2
    curves = read_curves(metrics)
    out = args.run_folder / "curves.png"
    partial = args.run_folder / "curves.tmp.png"  # written, then renamed: a reader never sees half a picture
    plot_curves(curves, partial, args.run_folder.name)
    os.replace(partial, out)
    print(f"wrote {out} ({len(curves.train)} training steps, {len(curves.evals)} evaluations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
