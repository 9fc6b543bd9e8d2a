"""Composer schedulers missing from Composer: `WarmupStableDecayScheduler` and `OneMinusSqrtScheduler`.

Both return the multiplier alpha(t) of the peak lr. t is the trainer's elapsed time, T = `t_max` (default
`1dur`, i.e. max_duration), and every duration may be given in any Composer unit (`tok`, `ba`, `sp`, `ep`,
`dur`); `composer.optim.scheduler._convert_time` turns `dur` into max_duration's unit and `ep` into batches,
exactly as Composer's own schedulers do.

    warmup(t)          = t / t_warmup while t < t_warmup, else 1           (t measured in t_warmup's unit)
    warmup_stable_decay: 1 until T - t_decay, then linear 1 -> alpha_f at T, alpha_f after T
    one_minus_sqrt:      1 until T - t_decay, then alpha_f + (1 - alpha_f) * (1 - sqrt((t - (T - t_decay)) / t_decay))
    alpha(t)           = warmup(t) * decay(t)

Without overlap (t_warmup <= T - t_decay) the product is exactly the piecewise schedule (one factor
is 1 wherever the other is not); a warmup that runs into the decay window stays continuous instead of jumping.
`t_decay = 0` means no decay. The warmup is measured in its own unit, so
`t_warmup: 3_000_000_000tok` works with `max_duration: 10000ba`; the decay compares t_decay with T, so those two
must share a unit after conversion (a ValueError says so otherwise). After T the multiplier stays at alpha_f.

The scale-schedule ratio `ssr` stretches T and t_decay, not the warmup (Composer's `scale_warmup=False`).
Composer's `ConstantWithWarmupScheduler`, `CosineAnnealingWithWarmupScheduler` and `LinearWithWarmupScheduler`
already implement the other three schema schedules; `builders.py` registers them.
"""

from __future__ import annotations

import math
from typing import Union

from composer.core import State, Time
from composer.optim.scheduler import ComposerScheduler, _convert_time

__all__ = ["OneMinusSqrtScheduler", "WarmupStableDecayScheduler", "warmup_factor"]

Duration = Union[str, Time]


def warmup_factor(state: State, t_warmup: Duration) -> float:
    """Linear warmup 0 -> 1 over t_warmup, measured in t_warmup's (converted) unit; 1 when t_warmup is 0."""
    warmup = _convert_time(t_warmup, state)
    if warmup.value == 0:
        return 1.0
    elapsed = state.timestamp.get(warmup.unit).value
    return min(1.0, elapsed / warmup.value)


def decay_progress(state: State, t_decay: Duration, t_max: Duration, ssr: float) -> float | None:
    """Fraction in [0, 1] of the decay window [T - t_decay, T] that has elapsed; None when t_decay is 0."""
    decay = _convert_time(t_decay, state, ssr=ssr)
    total = _convert_time(t_max, state, ssr=ssr)
    if decay.value == 0:
        return None
    if decay.unit != total.unit:
        raise ValueError(
            f"scheduler.t_decay ({decay}) and T = t_max or max_duration ({total}) must use the same unit after "
            f"conversion; give t_decay in '{total.unit.value}' or as a fraction of max_duration such as '0.1dur'"
        )
    if decay.value > total.value:
        raise ValueError(f"scheduler.t_decay ({decay}) is longer than the schedule T ({total})")
    elapsed = state.timestamp.get(total.unit).value
    start = total.value - decay.value
    return min(1.0, max(0.0, (elapsed - start) / decay.value))


class WarmupStableDecayScheduler(ComposerScheduler):
    """Trapezoid: linear warmup to 1, constant, linear decay to `alpha_f` over the last `t_decay` of T."""

    def __init__(
        self,
        t_warmup: Duration = "0dur",
        t_decay: Duration = "0.1dur",
        t_max: Duration = "1dur",
        alpha_f: float = 0.0,
    ):
        self.t_warmup = t_warmup
        self.t_decay = t_decay
        self.t_max = t_max
        self.alpha_f = alpha_f

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        progress = decay_progress(state, self.t_decay, self.t_max, ssr)
        decay = 1.0 if progress is None else 1.0 + (self.alpha_f - 1.0) * progress
        return warmup_factor(state, self.t_warmup) * decay


class OneMinusSqrtScheduler(ComposerScheduler):
    """Optional linear warmup, constant, then `alpha_f + (1 - alpha_f) * (1 - sqrt(progress))` over `t_decay`."""

    def __init__(
        self,
        t_decay: Duration = "0.1dur",
        t_max: Duration = "1dur",
        alpha_f: float = 0.0,
        t_warmup: Duration = "0dur",
    ):
        self.t_decay = t_decay
        self.t_max = t_max
        self.alpha_f = alpha_f
        self.t_warmup = t_warmup

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        progress = decay_progress(state, self.t_decay, self.t_max, ssr)
        decay = 1.0 if progress is None else self.alpha_f + (1.0 - self.alpha_f) * (1.0 - math.sqrt(progress))
        return warmup_factor(state, self.t_warmup) * decay
