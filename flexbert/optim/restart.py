"""Phase transitions: load the previous phase's full state, keep its moments, use the new lr.

Phases 2 and 3 start from the previous phase's checkpoint with everything restored (weights, Adam moments and
the optimizer's step count, which keeps the debiasing continuous), then
1. reset time: `trainer.fit(reset_time=True)` sets `state.timestamp` to zero before Event.FIT_START, so the new
   schedule (whose T is the new max_duration) starts at t = 0;
2. with `restart_override: true`, replace the hyperparameters the checkpoint brought back by the new phase's.

Why 2 is needed, from Composer 0.32's code: `Trainer.__init__` compiles each ComposerScheduler into a torch
`LambdaLR` (which stores `initial_lr` in every param group and `base_lrs` in itself), then `load_checkpoint` ->
`State.load_optim_state` -> torch's `set_optimizer_state_dict`, whose `_split_optim_state_dict` copies every
key of the saved param groups (lr, initial_lr, weight_decay, optimi's max_lr, ...) over ours, and
`State.load_state_dict` restores `LambdaLR.state_dict()` including the old `base_lrs`. The first batch would
then train at the old phase's last lr, every later lr would be the old peak times the new schedule, and
decoupled weight decay would divide by the old peak.

`RestartOverride` is a Composer Callback:
- it snapshots the override keys of every param group of the freshly built optimizer (in its constructor when
  given the optimizer, else at Event.INIT, which runs before schedulers are compiled and before loading);
- at Event.AFTER_LOAD (right after `load_checkpoint` in `Trainer.__init__`) it writes them back, sets
  `initial_lr` and every LambdaLR's `base_lrs` to the new peak lr; moments and step counts are untouched;
- at Event.FIT_START (after `fit` reset the time) it recomputes each group's lr from the schedule at the current
  time, so the first batch already uses base_lr * alpha(0) instead of the checkpoint's stale lr.
Parameter groups are matched by position; torch's loader keeps our group order and checks the sizes.

Trainer usage:
    optimizer = build_optimizer(cfg.optimizer, model)
    callbacks = [RestartOverride(optimizer)] if cfg.restart_override else []
    trainer = Trainer(..., optimizers=optimizer, load_path=..., callbacks=callbacks)
    trainer.fit(reset_time=cfg.reset_time)
Only pass reset_time / restart_override when loading the previous phase; an autoresume of the current phase
must not reset time (re-applying the override there is harmless: it writes the same values).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["OVERRIDE_KEYS", "RestartOverride", "apply_hyperparameters", "refresh_scheduled_lr"]

# Hyperparameters the new phase's config decides. Not: step (debiasing continues), setup, kahan_sum, foreach, triton.
OVERRIDE_KEYS = ("lr", "weight_decay", "max_lr", "decouple_lr", "betas", "beta1", "beta2", "eps")


def snapshot_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Per param group, the override keys it has; `lr` is the peak (`initial_lr` once a scheduler stored it)."""
    snapshot = []
    for group in optimizer.param_groups:
        values = {k: group[k] for k in OVERRIDE_KEYS if k in group}
        values["lr"] = group.get("initial_lr", group["lr"])
        snapshot.append(values)
    return snapshot


def apply_hyperparameters(state: State, snapshot: list[dict[str, Any]]) -> None:
    """Write the snapshot into the (loaded) optimizer and the peak lr into every scheduler's base_lrs."""
    optimizer = state.optimizers[0]
    if len(optimizer.param_groups) != len(snapshot):
        raise ValueError(
            f"restart_override: the optimizer has {len(optimizer.param_groups)} param groups after loading, the "
            f"new config built {len(snapshot)}; build the optimizer the same way as the previous phase "
            f"(same `optimizer.filter_bias_norm_wd`)"
        )
    for group, values in zip(optimizer.param_groups, snapshot):
        group.update(values)
        group["initial_lr"] = values["lr"]
        for p in group["params"]:  # optimi caches eps**2 per tensor for the clipping RMS
            eps_sq = optimizer.state.get(p, {}).get("eps_sq")
            if eps_sq is not None and "eps" in group:
                eps_sq.fill_(group["eps"] ** 2)
    peaks = [group["initial_lr"] for group in optimizer.param_groups]
    for scheduler in state.schedulers:
        if not isinstance(scheduler, LambdaLR):
            warnings.warn(
                f"restart_override: {type(scheduler).__name__} is not a compiled Composer scheduler; only its "
                f"base_lrs were reset",
                UserWarning,
            )
        scheduler.base_lrs = list(peaks)


def refresh_scheduled_lr(state: State) -> None:
    """Set each group's lr to base_lr * alpha(now) for Composer-compiled schedulers (their lambdas read `state`)."""
    optimizer = state.optimizers[0]
    for scheduler in state.schedulers:
        if not isinstance(scheduler, LambdaLR):
            continue
        lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs  # what get_last_lr() and lr monitors report


class RestartOverride(Callback):
    """Re-applies the new phase's optimizer hyperparameters after Composer loads a previous phase's checkpoint.

    Args:
        optimizer: the freshly built optimizer of the new phase; its param groups are snapshotted now. When
            None, the snapshot is taken at Event.INIT from `state.optimizers[0]`.
    """

    def __init__(self, optimizer: Optional[torch.optim.Optimizer] = None):
        self.snapshot = snapshot_hyperparameters(optimizer) if optimizer is not None else None

    def init(self, state: State, logger: Logger) -> None:
        if self.snapshot is None:
            self.snapshot = snapshot_hyperparameters(state.optimizers[0])

    def after_load(self, state: State, logger: Logger) -> None:
        assert self.snapshot is not None, "RestartOverride: no snapshot (Event.INIT did not run)"
        apply_hyperparameters(state, self.snapshot)
        refresh_scheduled_lr(state)

    def fit_start(self, state: State, logger: Logger) -> None:
        refresh_scheduled_lr(state)
