"""Callbacks by schema name (`callbacks: {name: {kwargs}}`): Composer's own where they exist, small ones here.

`python -m flexbert.registry` lists them. Every callback's kwargs are checked against its constructor, so a
typo fails before training with the closest valid argument.
"""

from __future__ import annotations

import gc
import inspect
import math
from typing import Any, Mapping

from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import Callback, State
from composer.loggers import Logger

from flexbert.optim.grad_norm import LogGradNorm
from flexbert.registry import Registry, closest

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


class NonFiniteLossGuard(Callback):
    """Stops training at the first non-finite loss, naming the step; checkpoints already written stay intact
    (Composer saves at BATCH_CHECKPOINT, after this check, so the bad step is never saved)."""

    def after_loss(self, state: State, logger: Logger) -> None:
        loss = state.loss
        values = loss.values() if isinstance(loss, Mapping) else [loss]
        for value in values:
            if not math.isfinite(float(value)):
                # The timestamp counts completed steps: this one is the next (its metrics.jsonl `batch`).
                step = int(state.timestamp.batch) + 1
                raise FloatingPointError(
                    f"non-finite loss ({float(value)}) at step {step} (after {step - 1} completed steps, "
                    f"{int(state.timestamp.token)} tokens): training stopped; the last saved checkpoint is intact. "
                    "Lower the learning rate or check the data of this step."
                )


def build_callbacks(section: Mapping[str, Any] | None) -> list[Callback]:
    callbacks = []
    for name, kwargs in (section or {}).items():
        cls = CALLBACKS.get(name)
        kwargs = dict(kwargs or {})
        accepted = inspect.signature(cls.__init__).parameters
        for key in kwargs:
            if key not in accepted:
                valid = [p for p in accepted if p != "self"]
                raise KeyError(f"unknown key `callbacks.{name}.{key}`{closest(key, valid)}; valid: {', '.join(valid)}")
        callbacks.append(cls(**kwargs))
    return callbacks
