"""OUT/sweep_state.json: what happened to each run of a sweep, rewritten atomically after every change.

One entry per run name: status, the overrides it was started with (its fingerprint), attempts, the last
command, return code, wall time, peak RSS, the parameter count and, for a failed run, the last lines of its log.

Statuses: `pending` (not started), `running` (started; if the sweep process died, the run is resumed),
`interrupted` (stopped by Ctrl-C; resumed), `done` (exit code 0; skipped from then on), `failed` (non-zero
exit; skipped unless --retry-failed), `invalid` (failed validation; never launched).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flexbert.sweep.spec import SweepError

STATE_FILE = "sweep_state.json"
FINISHED = ("done", "failed", "invalid")
RESUMABLE = ("running", "interrupted", "failed")  # a re-run of these passes autoresume=true


class SweepState:
    def __init__(self, out: Path, sweep_name: str):
        self.path = Path(out) / STATE_FILE
        self.data: dict[str, Any] = {"sweep": sweep_name, "runs": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
                if not isinstance(self.data, dict) or not isinstance(self.data.setdefault("runs", {}), dict):
                    raise ValueError("not a mapping with a `runs` mapping")
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                raise SweepError(f"{self.path}: damaged sweep state ({err}); restore it, or delete it (with the "
                                 f"runs/ folder) to start the sweep over") from None

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.data["runs"]

    def get(self, name: str) -> dict[str, Any]:
        return self.runs.get(name, {})

    def update(self, name: str, **values: Any) -> dict[str, Any]:
        entry = self.runs.setdefault(name, {"status": "pending", "attempts": 0})
        entry.update(values)
        self.save()
        return entry

    def forget(self, name: str) -> None:
        if self.runs.pop(name, None) is not None:
            self.save()

    def save(self) -> None:
        # Write-then-rename: a sweep killed mid-write leaves the previous state, never a torn file.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
