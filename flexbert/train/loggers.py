"""Logger destinations: Composer's console and Weights & Biases, plus `metrics.jsonl` for scripts and sweeps.

`metrics.jsonl` holds one JSON object per logged step: `{"batch": N, "token": T, "sample": S, <metric>: value}`.
Train and eval metrics of a step share its line. A resumed run first drops the lines of batches after the checkpoint it resumed from, so the file continues
without duplicated steps. Lines are flushed as written: a crash loses at most the line being written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from composer.core import State
from composer.loggers import Logger, LoggerDestination, WandBLogger
from composer.utils import dist

from flexbert.registry import Registry
from flexbert.schema import check_kwargs

LOGGERS: Registry = Registry("logger", "loggers")


class MetricsJsonl(LoggerDestination):
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = None
        self._state: Optional[State] = None
        self._pending: dict[str, Any] = {}
        self._last: Optional[tuple[int, dict]] = None  # (file offset, record) of the last line written

    def init(self, state: State, logger: Logger) -> None:
        self._state = state

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        resumed_at = int(state.timestamp.batch)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _batch_of(line) is not None and _batch_of(line) <= resumed_at]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if self._state is None or dist.get_global_rank() != 0:
            return
        for key, value in metrics.items():
            if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
                value = value.item()
            if isinstance(value, (int, float, str, bool)) or value is None:
                self._pending[key] = value

    def _flush(self) -> None:
        if not self._pending or self._file is None or self._state is None:
            self._pending = {}
            return
        ts = self._state.timestamp  # what a step logs before and after its counters advance goes in one line
        record = {"batch": int(ts.batch), "token": int(ts.token), "sample": int(ts.sample), **self._pending}
        if self._last is not None and self._last[1]["batch"] == record["batch"]:
            # more metrics for the step already written (e.g. at fit end): rewrite its line, merged
            offset, previous = self._last
            self._file.seek(offset)
            self._file.truncate()
            record = {**previous, **record}
        offset = self._file.tell()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._last = (offset, record)
        self._pending = {}

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        # After BATCH_END and the evaluation of this batch, before the checkpoint: one line per step.
        self._flush()

    def fit_end(self, state: State, logger: Logger) -> None:
        self._flush()

    def close(self, state: State, logger: Logger) -> None:
        self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _batch_of(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["batch"])
    except (ValueError, KeyError, TypeError):
        return None  # a torn last line from a crash is dropped


class _WandBLogger(WandBLogger):
    """Composer's W&B logger, except that it answers "not found" for files it never uploaded.

    Composer's autoresume asks every logger that can hold files for the run's latest checkpoint when the save
    folder has none (a fresh start), and the W&B logger then queries the server: offline, or without an account,
    that fails the run. This logger uploads checkpoints only with `log_artifacts: true` and online; otherwise
    nothing is on the server to ask for."""

    def __init__(self, *args, offline: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._holds_files = bool(kwargs.get("log_artifacts")) and not offline

    def can_upload_files(self) -> bool:
        return self._holds_files

    def download_file(self, remote_file_name: str, *args, **kwargs) -> None:
        if not self._holds_files:
            raise FileNotFoundError(f"{remote_file_name}: this W&B run uploads no files (log_artifacts off or offline)")
        super().download_file(remote_file_name, *args, **kwargs)


def _wandb(project: Optional[str] = None, entity: Optional[str] = None, name: Optional[str] = None,
           group: Optional[str] = None, tags: Optional[list] = None, log_artifacts: bool = False,
           mode: Optional[str] = None, init_kwargs: Optional[dict] = None) -> WandBLogger:
    init_kwargs = dict(init_kwargs or {})
    # No account configured: log offline (wandb sync later) rather than failing or prompting.
    if mode is None and not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        mode = "offline"
    if mode:
        init_kwargs["mode"] = mode
    offline = (mode or os.environ.get("WANDB_MODE")) in ("offline", "disabled", "dryrun")
    return _WandBLogger(project=project, entity=entity, name=name, group=group, tags=tags,
                        log_artifacts=log_artifacts, init_kwargs=init_kwargs, offline=offline)


LOGGERS.add("wandb", _wandb, "Weights & Biases (offline when no account is configured)")


def build_loggers(section: Mapping[str, Any] | None, metrics_path: Optional[Path]) -> list[LoggerDestination]:
    """The schema's `loggers` plus metrics.jsonl; the console logger is the Trainer's own (`log_to_console`)."""
    out: list[LoggerDestination] = []
    for name, kwargs in (section or {}).items():
        factory = LOGGERS.get(name)
        kwargs = dict(kwargs or {})
        check_kwargs(factory, kwargs, f"loggers.{name}")
        out.append(factory(**kwargs))
    if metrics_path is not None:
        out.append(MetricsJsonl(metrics_path))
    return out
