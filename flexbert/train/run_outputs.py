"""A save folder belongs to one run: its resolved run config is fingerprinted into `run_config.json`, and a new
start into a folder that holds another run's checkpoints stops, naming what differs, unless autoresume continues
that run or `save_overwrite: true` (Composer's key: replace existing checkpoints) replaces it -- then the previous
run's checkpoints and everything derived from them (metrics.jsonl, curves.png, hf/) are removed with it, so nothing
beside the new checkpoint describes the old model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

from flexbert.schema import ConfigError
from flexbert.checkpoints.crash_safe import LATEST, _checkpoints

RUN_CONFIG_FILE = "run_config.json"
DERIVED = ("metrics.jsonl", "curves.png", "hf")  # files a run (or the tools after it) derive from its checkpoints

# Keys that change how a run is watched or resumed, not what it trains.
NOT_IDENTITY = {"source", "variables", "autoresume", "save_overwrite", "progress_bar", "log_to_console",
                "console_log_interval", "python_log_level", "loggers", "dist_timeout"}


def identity(run_config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run_config.items() if k not in NOT_IDENTITY}


def fingerprint(run_config: Mapping[str, Any]) -> str:
    text = json.dumps(identity(run_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flat(sub, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = _flat(identity(old)), _flat(identity(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def previous_outputs(folder: Path) -> list[Path]:
    """Checkpoints and derived files of whatever run last wrote `folder`."""
    found = [path for _, _, path in _checkpoints(folder)]
    found += [folder / name for name in (LATEST, RUN_CONFIG_FILE, *DERIVED) if os.path.lexists(folder / name)]
    return found


def check_save_folder(folder: Optional[str], run_config: Mapping[str, Any], resuming: bool, overwrite: bool) -> None:
    """Refuse a fresh start into a folder holding checkpoints, unless `overwrite` (see the module docstring)."""
    if not folder or "://" in folder or resuming or overwrite or not Path(folder).is_dir():
        return
    folder_path = Path(folder)
    if not _checkpoints(folder_path) and not os.path.lexists(folder_path / LATEST):
        return
    record = folder_path / RUN_CONFIG_FILE
    stored = json.loads(record.read_text()).get("config", {}) if record.is_file() else None
    if stored is None:
        what = "checkpoints of a run whose config is not recorded"
    elif fingerprint(stored) != fingerprint(run_config):
        keys = differing_keys(stored, run_config)
        what = f"another run's checkpoints (its run config differs in {', '.join(keys[:4])}" + \
               (f" and {len(keys) - 4} more" if len(keys) > 4 else "") + ")"
    else:
        what = "this run's checkpoints from an earlier start"
    raise ConfigError(f"save_folder {folder} holds {what}; choose another run_name / save_folder, set "
                      f"autoresume=true to continue it, or save_overwrite=true to replace it (its checkpoints, "
                      f"metrics.jsonl, curves.png and hf/ are removed)")


def claim_save_folder(folder: Optional[str], run_config: Mapping[str, Any], resuming: bool,
                      keep: Optional[str] = None) -> list[Path]:
    """Rank 0 at a start: a fresh start removes the previous run's outputs (already allowed by
    `check_save_folder`; `keep` is a load_path that lies in the folder), then records this run's config.
    Returns the removed paths."""
    if not folder or "://" in folder:
        return []
    folder_path = Path(folder)
    folder_path.mkdir(parents=True, exist_ok=True)
    removed = []
    if not resuming:
        keep_real = os.path.realpath(keep) if keep else None
        for path in previous_outputs(folder_path):
            if keep_real and os.path.realpath(path) == keep_real:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    record = {"fingerprint": fingerprint(run_config), "config": dict(run_config)}
    tmp = folder_path / f"{RUN_CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, folder_path / RUN_CONFIG_FILE)
    return removed
