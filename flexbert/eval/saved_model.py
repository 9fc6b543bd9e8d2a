"""Fine-tuned models kept as Hugging Face folders (`save_model: all | best_seed` in the evaluation file).

A folder holds the ModernBertForSequenceClassification config (id2label = the task's label names), the weights,
the tokenizer, and `flexbert_eval.json` (task, seed, metrics, starting point, fingerprint): transformers'
`pipeline("text-classification", model=FOLDER)` loads it. A fine-tuned retrieval task's folder is a
sentence-transformers one instead (embedder_folder.py); zero-shot retrieval trains nothing and keeps no folder. `all` keeps OUT/runs/<task>/seed<N>/model for every
seed; `best_seed` keeps OUT/models/<task>, the seed with the best first metric, once every seed of the task is
finished, and removes the other seeds' folders. Only folders carrying `flexbert_eval.json` are ever replaced or
removed: those this tool wrote.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

RECORD = "flexbert_eval.json"


def seed_model_folder(out_dir: Path, task: str, seed: int) -> Path:
    return out_dir / "runs" / task / f"seed{seed}" / "model"


def best_model_folder(out_dir: Path, task: str) -> Path:
    return out_dir / "models" / task


def read_record(folder: Path) -> Optional[dict[str, Any]]:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _remove_ours(folder: Path) -> None:
    if folder.is_dir() and not folder.is_symlink() and (folder / RECORD).is_file():
        shutil.rmtree(folder)


def publish_folder(write: Callable[[Path], None], folder: Path, record: dict[str, Any]) -> Path:
    """`write(tmp)` fills a temporary folder, the record is added, then it is renamed over an earlier one of ours:
    an interrupted save leaves the earlier folder intact."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    (tmp / RECORD).write_text(json.dumps(record, indent=1))
    _remove_ours(folder)
    os.replace(tmp, folder)
    return folder


def save_model_folder(model, tokenizer, folder: Path, record: dict[str, Any]) -> Path:
    """A classification model and its tokenizer as a Hugging Face folder."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return publish_folder(write, folder, record)


def _score(result: dict[str, Any], metric: str) -> float:
    value = result["metrics"].get(metric, float("nan"))
    return -math.inf if value is None or math.isnan(value) else float(value)


def keep_best_seed(out_dir: Path, task, results: dict[int, dict[str, Any]]) -> Optional[Path]:
    """With every seed of `task` finished (results by seed), move the best seed's folder to OUT/models/<task> and
    remove the others'; None when a seed's folder is missing (it is retrained on the next run)."""
    folders = {seed: seed_model_folder(out_dir, task.name, seed) for seed in task.seeds}
    if any(read_record(folder) is None for folder in folders.values()):
        return None
    metric = task.metrics[0]
    best = max(task.seeds, key=lambda seed: _score(results[seed], metric))  # every metric here: higher is better
    target = best_model_folder(out_dir, task.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    record = read_record(folders[best])
    record["chosen_by"] = {"metric": metric, "scores": {str(s): results[s]["metrics"].get(metric) for s in task.seeds},
                           "seed_fingerprints": {str(s): results[s].get("fingerprint") for s in task.seeds}}
    (folders[best] / RECORD).write_text(json.dumps(record, indent=1))
    _remove_ours(target)
    os.replace(folders[best], target)
    for folder in folders.values():
        _remove_ours(folder)
    return target


def best_seed_is_current(out_dir: Path, task, fingerprints: dict[int, str]) -> bool:
    """OUT/models/<task> was chosen from exactly the current results of every seed."""
    record = read_record(best_model_folder(out_dir, task.name)) or {}
    chosen = (record.get("chosen_by") or {}).get("seed_fingerprints") or {}
    return chosen == {str(seed): fingerprint for seed, fingerprint in fingerprints.items()}
