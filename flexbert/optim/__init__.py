"""Optimizers, parameter groups, learning-rate schedules and phase restarts.

- `StableAdamW` (stable_adamw.py): optimi's StableAdamW under the checkpoint-compatible name.
- `filter_bias_norm_wd` (param_groups.py): no weight decay on biases, norms and 1-D tensors.
- `WarmupStableDecayScheduler`, `OneMinusSqrtScheduler` (schedulers.py): Composer schedulers.
- `build_optimizer`, `build_scheduler` and the `OPTIMIZERS` / `SCHEDULERS` registries (builders.py).
- `LogGradNorm`, `grad_norms`, `total_grad_norm` (grad_norm.py): gradient norms with one host sync.
- `RestartOverride` (restart.py): new lr / weight decay after loading the previous phase's checkpoint.
"""

from flexbert.optim.builders import (
    OPTIMIZERS,
    SCHEDULERS,
    OptimizerConfig,
    SchedulerConfig,
    build_optimizer,
    build_scheduler,
)
from flexbert.optim.grad_norm import LogGradNorm, grad_norms, total_grad_norm
from flexbert.optim.param_groups import filter_bias_norm_wd, is_no_decay
from flexbert.optim.restart import RestartOverride
from flexbert.optim.schedulers import OneMinusSqrtScheduler, WarmupStableDecayScheduler
from flexbert.optim.stable_adamw import StableAdamW

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "LogGradNorm",
    "OneMinusSqrtScheduler",
    "OptimizerConfig",
    "RestartOverride",
    "SchedulerConfig",
    "StableAdamW",
    "WarmupStableDecayScheduler",
    "build_optimizer",
    "build_scheduler",
    "filter_bias_norm_wd",
    "grad_norms",
    "is_no_decay",
    "total_grad_norm",
]
