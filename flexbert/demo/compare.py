"""The demo's last step: fine-tune a pretrained checkpoint and the same model from random initialization on the tasks
of an evaluation file, with the same settings and seeds, and tabulate both (mean +- sample std over seeds).

The gap is given in standard deviations: (mean pretrained - mean random) / sqrt((std_p^2 + std_r^2) / 2), the pooled
standard deviation of the two arms' seeds.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Optional, Sequence

ARMS = (("pretrained", "eval-pretrained", []), ("random init", "eval-random-init", ["model.use_pretrained=false"]))


def gap_in_stds(pretrained: dict, random_init: dict) -> Optional[float]:
    """(mean_p - mean_r) / pooled std; None where either arm has a single seed or both stds are zero."""
    if pretrained["std"] is None or random_init["std"] is None:
        return None
    pooled = math.sqrt((pretrained["std"] ** 2 + random_init["std"] ** 2) / 2)
    return None if pooled == 0 else (pretrained["mean"] - random_init["mean"]) / pooled


def format_table(summaries: dict[str, dict]) -> str:
    """Markdown table: one row per (task, metric) of the two arms' summaries ({task: {metric: {values, mean, std}}})."""
    pretrained, random_init = summaries["pretrained"], summaries["random init"]
    lines = ["| task | metric | seeds | pretrained | random init | difference | in stds |", "|---|---|---|---|---|---|---|"]
    for task, metrics in pretrained.items():
        for metric, p in metrics.items():
            r = random_init[task][metric]
            gap = gap_in_stds(p, r)
            lines.append(f"| {task} | {metric} | {len(p['values'])} | {_mean_std(p)} | {_mean_std(r)} | "
                         f"{p['mean'] - r['mean']:+.3f} | {'' if gap is None else f'{gap:+.1f}'} |")
    return "\n".join(lines)


def _mean_std(entry: dict) -> str:
    return f"{entry['mean']:.3f}" + ("" if entry["std"] is None else f" +- {entry['std']:.3f}")


def compare(eval_file: Path, checkpoint: Path, run_dir: Path, overrides: Sequence[str] = ()) -> str:
    """Fine-tune both arms into run_dir/eval-*/ (results of an earlier run of the demo are replaced: they scored an
    earlier checkpoint) and return the table."""
    from flexbert.eval.runner import report, run
    from flexbert.eval.spec import load_eval_file

    summaries = {}
    for arm, folder, arm_overrides in ARMS:
        out = run_dir / folder
        shutil.rmtree(out, ignore_errors=True)
        args = [f"starting_checkpoint_load_path={checkpoint}", *arm_overrides, *overrides]
        spec = load_eval_file(eval_file, args, str(out))
        print(f"-- {arm}", flush=True)
        if run(spec, str(eval_file), args, parallel=False) != 0:
            raise SystemExit(f"error: fine-tuning the {arm} model failed (see above)")
        summaries[arm] = report(spec)
    return format_table(summaries)
