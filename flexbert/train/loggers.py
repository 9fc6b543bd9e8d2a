"""Logger destinations: Composer's console and Weights & Biases, plus `metrics.jsonl` for scripts and sweeps, and a
one-line-per-evaluation console summary (`eval_summary`).

`metrics.jsonl` holds one JSON object per logged step: `{"batch": N, "token": T, "sample": S, <metric>: value}`.
Train and eval metrics of a step share its line. Lines are flushed as written: a crash loses at most the line being
written.

Every step appears exactly once after any kill and resume. Composer writes a checkpoint (a non-logger callback) before
loggers see the same event, so a kill can land after checkpoint N is on disk but before step N's line is: the line
therefore travels in the checkpoint (this logger's `state_dict` is the record of the step being saved, evaluation
included). A resumed run drops the lines of batches after the checkpoint it resumed from (the killed attempt went
further than its last checkpoint) and writes the checkpoint's own line when the file lacks it -- at fit start, or at
close when the checkpoint was already the last step and nothing trains.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from composer.core import State
from composer.loggers import Logger, LoggerDestination, WandBLogger
from composer.utils import dist

from flexbert.registry import Registry
from flexbert.schema import ConfigError, check_kwargs

LOGGERS: Registry = Registry("logger", "loggers")


class MetricsJsonl(LoggerDestination):
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = None
        self._state: Optional[State] = None
        self._pending: dict[str, Any] = {}
        self._last: Optional[tuple[int, dict]] = None  # (file offset, record) of the last line written
        self._checkpoint_record: Optional[dict] = None  # the line of the step a loaded checkpoint was saved at
        self._repaired = False

    def init(self, state: State, logger: Logger) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        """The line of the step being checkpointed, as `_flush` is about to write it (see the module docstring)."""
        if self._state is None:
            return {}
        ts = self._state.timestamp
        record = {"batch": int(ts.batch), "token": int(ts.token), "sample": int(ts.sample)}
        if self._last is not None and self._last[1]["batch"] == record["batch"]:
            record = {**self._last[1], **record}
        return {"step_record": {**record, **self._pending}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._checkpoint_record = state.get("step_record")

    def _repair(self, resumed_at: int) -> None:
        """Keep the lines up to the resumed step and add that step's line from the checkpoint if it was lost."""
        self._repaired = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if _batch_of(line) is not None and _batch_of(line) <= resumed_at]
        record = self._checkpoint_record
        if record is not None and record.get("batch") == resumed_at and resumed_at not in map(_batch_of, kept):
            kept.append(json.dumps(record))
        if kept != lines:
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        self._repair(int(state.timestamp.batch))
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
        if self._file is None and not self._repaired and self._checkpoint_record and dist.get_global_rank() == 0:
            self._repair(int(state.timestamp.batch))  # resumed at max_duration: fit never started
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
           mode: Optional[str] = None, init_kwargs: Optional[dict] = None,
           run_config: Optional[Mapping[str, Any]] = None) -> WandBLogger:
    """`run_config` (the whole resolved run file) becomes the W&B run's config, so runs compare by any key."""
    try:
        import wandb  # noqa: F401  (Composer's own message for a missing package is a traceback)
    except ImportError:
        raise ConfigError("loggers.wandb: the wandb package is not installed; `pip install wandb`, or run without "
                          "W&B by adding `loggers.wandb=null` to the command (or removing `loggers.wandb` from the "
                          "run or evaluation file)") from None
    init_kwargs = dict(init_kwargs or {})
    if run_config is not None:
        init_kwargs["config"] = {**dict(run_config), **dict(init_kwargs.get("config") or {})}
    # WANDB_MODE is passed on explicitly: wandb reads the environment once per process, so a process that already
    # used wandb would otherwise ignore a WANDB_MODE set since. No account configured: log offline (wandb sync
    # later) rather than failing or prompting.
    mode = mode or os.environ.get("WANDB_MODE") or None
    if mode is None and not os.environ.get("WANDB_API_KEY"):
        mode = "offline"
    if mode:
        init_kwargs["mode"] = mode
    offline = (mode or os.environ.get("WANDB_MODE")) in ("offline", "disabled", "dryrun")
    return _WandBLogger(project=project, entity=entity, name=name, group=group, tags=tags,
                        log_artifacts=log_artifacts, init_kwargs=init_kwargs, offline=offline)


LOGGERS.add("wandb", _wandb, "Weights & Biases (offline when no account is configured)")

# Console names of the MLM evaluation metrics; any other metric keeps its own name.
_SUMMARY_NAMES = {"LanguageCrossEntropy": "loss", "MaskedAccuracy": "masked accuracy"}


class EvalSummary(LoggerDestination):
    """One console line per evaluation: the step, the mean training loss of the steps since the previous
    evaluation, and each evaluation metric -- instead of every metric at every console interval. Printed through
    tqdm, above Composer's progress bar when it shows. The losses since the previous evaluation are saved with
    each checkpoint, so a resumed run's line averages the steps before the kill too."""

    def __init__(self, train_key: str = "loss/train/total"):
        self.train_key = train_key
        self._train: list[float] = []
        self._eval: dict[str, float] = {}
        self._state: Optional[State] = None

    def init(self, state: State, logger: Logger) -> None:
        self._state = state

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1 else value
            if not isinstance(value, (int, float)):
                continue
            if key == self.train_key:
                self._train.append(float(value))
            elif key.startswith("metrics/") and not key.startswith("metrics/train/"):
                label, name = key.removeprefix("metrics/").split("/", 1)
                self._eval[f"{label} {_SUMMARY_NAMES.get(name, name)}"] = float(value)

    def state_dict(self) -> dict[str, Any]:
        # The losses since the last evaluation travel in the checkpoint: a resumed run's next line averages the
        # same steps as the uninterrupted run's.
        return {"train_losses": list(self._train)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._train = [float(v) for v in state.get("train_losses", [])]

    def line(self) -> str:
        state = self._state
        step = f"step {int(state.timestamp.batch)}" if state is not None else "step ?"
        if state is not None and state.max_duration is not None:
            step += f"/{state.max_duration.value}" if state.max_duration.unit.name == "BATCH" else ""
        parts = [step]
        if self._train:
            parts.append(f"train loss {sum(self._train) / len(self._train):.3f}")
        parts += [f"{name} {value:.3f}" for name, value in self._eval.items()]
        return " | ".join(parts)

    def eval_end(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0 or not self._eval:
            return
        from tqdm.auto import tqdm

        tqdm.write(self.line(), file=sys.stdout)
        sys.stdout.flush()
        self._train, self._eval = [], {}


LOGGERS.add("eval_summary", EvalSummary, "one console line per evaluation: step, mean train loss since the last, eval metrics")


def build_loggers(section: Mapping[str, Any] | None, metrics_path: Optional[Path],
                  run_config: Optional[Mapping[str, Any]] = None) -> list[LoggerDestination]:
    """The schema's `loggers` plus metrics.jsonl; the console logger is the Trainer's own (`log_to_console`).
    A logger set to null (`loggers.wandb=null`) is off. `run_config` is handed to loggers that record a config."""
    out: list[LoggerDestination] = []
    for name, kwargs in (section or {}).items():
        if kwargs is None:
            continue
        factory = LOGGERS.get(name)
        kwargs = dict(kwargs)
        check_kwargs(factory, kwargs, f"loggers.{name}")
        if run_config is not None and name == "wandb":
            kwargs["run_config"] = run_config
        out.append(factory(**kwargs))
    if metrics_path is not None:
        out.append(MetricsJsonl(metrics_path))
    return out
