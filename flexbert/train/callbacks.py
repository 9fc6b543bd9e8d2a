"""Callbacks by schema name (`callbacks: {name: {kwargs}}`): Composer's own where they exist, small ones here.

`python -m flexbert.list_registries` lists them. Every callback's kwargs are checked against its constructor, so a
typo fails before training with the closest valid argument.
"""

from __future__ import annotations

import gc
import logging
import math
import warnings
from typing import Any, Mapping

import torch
from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from flexbert.optim.grad_norm import LogGradNorm
from flexbert.registry import Registry
from flexbert.schema import ConfigError, check_kwargs

log = logging.getLogger(__name__)

CALLBACKS: Registry = Registry("callback", "callbacks")

CALLBACKS.add("speed_monitor", SpeedMonitor, "Composer SpeedMonitor: tokens/s, samples/s, model FLOP/s and MFU")
CALLBACKS.add("lr_monitor", LRMonitor, "Composer LRMonitor: learning rate of every param group")
CALLBACKS.add("memory_monitor", MemoryMonitor, "Composer MemoryMonitor: accelerator memory (GPU only)")
CALLBACKS.add("optimizer_monitor", OptimizerMonitor, "Composer OptimizerMonitor: per-layer grad/param/moment norms")
CALLBACKS.add("runtime_estimator", RuntimeEstimator, "Composer RuntimeEstimator: time to completion")
CALLBACKS.add("log_grad_norm", LogGradNorm, "total gradient L2 norm before the optimizer step, one host sync")


@CALLBACKS.register("scheduled_gc", "run Python's garbage collector every N batches instead of at random times")
class ScheduledGarbageCollector(Callback):
    """Automatic gc pauses hit ranks at different moments and stall collectives; collect in step instead."""

    def __init__(self, batch_interval: int = 1000, eval_keep_disabled: bool = False):
        if batch_interval < 1:
            raise ValueError(f"scheduled_gc.batch_interval must be >= 1, got {batch_interval}")
        self.batch_interval = batch_interval
        self.eval_keep_disabled = eval_keep_disabled
        self._was_enabled = True

    def fit_start(self, state: State, logger: Logger) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._was_enabled:
            gc.enable()

    def batch_end(self, state: State, logger: Logger) -> None:
        if state.timestamp.batch.value % self.batch_interval == 0:
            gc.collect(1)


@CALLBACKS.register("packing_efficiency", "fraction of token slots holding real tokens in the packed train batches")
class PackingEfficiency(Callback):
    def __init__(self, log_interval: int = 100):
        if log_interval < 1:
            raise ValueError(f"packing_efficiency.log_interval must be >= 1, got {log_interval}")
        self.log_interval = log_interval
        self._real = 0
        self._slots = 0

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        if "cu_seqlens" not in batch:
            return
        cu = batch["cu_seqlens"]
        last = cu.max(dim=-1).values if cu.dim() == 2 else cu.max()
        self._real += int(last.sum())
        self._slots += batch["input_ids"].numel()

    def batch_end(self, state: State, logger: Logger) -> None:
        if state.timestamp.batch.value % self.log_interval == 0 and self._slots:
            logger.log_metrics({"packing_efficiency": self._real / self._slots})
            self._real = self._slots = 0


class EmptyEvalWarning(Callback):
    """An evaluation that saw no batch reports NaN metrics; say why, once per evaluator, instead of logging NaN
    without a word."""

    def __init__(self):
        self._warned: set[str] = set()

    def eval_end(self, state, logger):
        label = state.dataloader_label or "eval"
        if int(state.eval_timestamp.batch) == 0 and label not in self._warned:
            self._warned.add(label)
            warnings.warn(
                f"evaluation '{label}' saw no batch, so its metrics are NaN: its split holds fewer rows than one "
                f"eval batch (device_eval_batch_size), or eval_subset_num_batches is 0; lower device_eval_batch_size "
                f"or set eval_loader.drop_last: false")


class NonFiniteLossGuard(Callback):
    """What a non-finite loss does (`stop_on_nonfinite_loss`, `max_nonfinite_skips`).

    max_skips = 0: training stops at the first non-finite loss, naming the step; checkpoints already written stay
    intact (Composer saves at BATCH_CHECKPOINT, after this check, so the bad step is never saved).
    max_skips = N > 0: a batch whose loss is non-finite in any microbatch on any rank is skipped: its gradients are
    dropped on every rank, so the optimizer changes nothing (weights, moments, step counter); the data and the lr
    schedule move on. Skips are counted (`nonfinite_loss/skipped_batches`, kept in checkpoints) and the
    (N+1)-th stops the run as above -- a run that keeps producing non-finite losses is broken, not unlucky.
    """

    def __init__(self, max_skips: int = 0):
        if not isinstance(max_skips, int) or isinstance(max_skips, bool) or max_skips < 0:
            raise ValueError(f"`max_nonfinite_skips` must be an integer >= 0, got {max_skips!r}")
        self.max_skips = max_skips
        self.skipped = 0
        self._bad_loss = None  # this batch's first non-finite loss value seen on this rank
        self._skip_batch = False

    def batch_start(self, state: State, logger: Logger) -> None:
        self._bad_loss, self._skip_batch = None, False

    def after_loss(self, state: State, logger: Logger) -> None:
        loss = state.loss
        for value in loss.values() if isinstance(loss, Mapping) else [loss]:
            if not math.isfinite(float(value)) and self._bad_loss is None:
                self._bad_loss = float(value)
        if self._bad_loss is not None and self.max_skips == 0:
            self._stop(state)

    def after_backward(self, state: State, logger: Logger) -> None:
        if self.max_skips == 0:
            return
        if not self._skip_batch:  # every rank must agree, or the replicas would drift apart
            flag = state.device.tensor_to_device(torch.tensor([int(self._bad_loss is not None)]))
            dist.all_reduce(flag, reduce_operation="MAX")
            self._skip_batch = bool(flag.item())
            if self._skip_batch and self.skipped >= self.max_skips:
                self._stop(state)  # on every rank at once
        if self._skip_batch:  # after the bad microbatch's backward and after every later one of this batch
            for param in state.model.parameters():
                param.grad = None

    def batch_end(self, state: State, logger: Logger) -> None:
        if self._skip_batch:
            self.skipped += 1
            step = int(state.timestamp.batch)  # batch_end: the skipped step is already counted
            where = f"loss {self._bad_loss}" if self._bad_loss is not None else "on another rank"
            log.warning(f"non-finite {where} at step {step}: batch skipped ({self.skipped} of at most "
                        f"{self.max_skips})")
            logger.log_metrics({"nonfinite_loss/skipped_batches": self.skipped})

    def _stop(self, state: State) -> None:
        step = int(state.timestamp.batch) + 1  # the timestamp counts completed steps; this one is the next
        skipped = f" after skipping {self.skipped} non-finite batches (max_nonfinite_skips)" if self.skipped else ""
        what = "non-finite loss " + (f"({self._bad_loss})" if self._bad_loss is not None else "on another rank")
        raise FloatingPointError(
            f"{what} at step {step} (after {step - 1} completed steps, "
            f"{int(state.timestamp.token)} tokens){skipped}: training stopped; the last saved checkpoint is intact. "
            "Lower the learning rate or check the data of this step."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))


def build_callbacks(section: Mapping[str, Any] | None) -> list[Callback]:
    callbacks = []
    for name, kwargs in (section or {}).items():
        cls = CALLBACKS.get(name)
        kwargs = dict(kwargs or {})
        check_kwargs(cls.__init__, kwargs, f"callbacks.{name}")
        for key, value in kwargs.items():
            # Composer's monitors take an interval of 0 and then divide by it mid-run (or never log).
            if key.endswith("interval") and isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise ConfigError(f"`callbacks.{name}.{key}: {value}` must be a positive number of batches, e.g. 10")
        callbacks.append(cls(**kwargs))
    return callbacks
