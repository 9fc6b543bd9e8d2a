"""What `main.py` says at the edges of a run: where a resumed run continues from, and a closing summary (final
metrics, checkpoint, curves picture, the command that exports a Hugging Face folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from flexbert.checkpoints.crash_safe import LATEST

# metrics.jsonl key -> console name
_FINAL = {"loss/train/total": "train loss", "metrics/eval/LanguageCrossEntropy": "eval loss",
          "metrics/eval/MaskedAccuracy": "eval masked accuracy"}


def resume_line(checkpoint, step: int, how: str) -> str:
    return f"resumed from {checkpoint} at step {step} ({how})"


def final_metrics(metrics_file: Path) -> dict[str, float]:
    """The last logged value of each summary metric."""
    found: dict[str, float] = {}
    if not metrics_file.is_file():
        return found
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        found.update({name: record[key] for key, name in _FINAL.items() if isinstance(record.get(key), (int, float))})
    return found


def closing_lines(save_folder: Optional[str], step: int, tokenizer: Optional[str]) -> list[str]:
    metrics = final_metrics(Path(save_folder) / "metrics.jsonl") if save_folder else {}
    lines = [f"done at step {step}" + "".join(f" | {name} {value:.3f}" for name, value in metrics.items())]
    if not save_folder or "://" in save_folder:
        return lines + (["no save_folder: no checkpoint was written"] if not save_folder else [f"checkpoints: {save_folder}"])
    folder = Path(save_folder)
    latest = folder / LATEST
    if latest.exists():
        lines.append(f"checkpoint: {latest} (-> {latest.resolve().name}); metrics: {folder / 'metrics.jsonl'}")
        tokenizer_arg = f" --tokenizer {tokenizer}" if tokenizer else ""
        lines.append(f"export: python -m flexbert.convert composer-to-hf {latest} {folder / 'hf'}{tokenizer_arg}")
    if (folder / "curves.png").exists():
        lines.append(f"curves: {folder / 'curves.png'}")
    elif (folder / "metrics.jsonl").is_file():  # drawn on request: matplotlib's import is not paid by every run
        lines.append(f"curves: python -m flexbert.train.curves {folder}  (draws {folder / 'curves.png'})")
    return lines
