"""Builders for the schema's `optimizer` and `scheduler` sections: `build_optimizer(cfg, model)`,
`build_scheduler(cfg)`, their typed configs and the `OPTIMIZERS` / `SCHEDULERS` registries.

Spec: shared/reference/flexbert-yaml-schema.md (`optimizer`, `scheduler`) and recipe sections 4-6. Names are looked
up in registries (`python -m flexbert.registry` lists them); an unknown name or key fails naming the closest valid
one. Scheduler keys the chosen schedule does not use (the reference's YAMLs carry `alpha_f` / `t_decay` under
every schedule, and its builder dropped them) are accepted with a warning rather than silently.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import torch
from composer.core import Time
from composer.optim import (
    ComposerScheduler,
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    LinearWithWarmupScheduler,
)

from flexbert.config import FlexBertConfigError
from flexbert.optim.param_groups import filter_bias_norm_wd
from flexbert.optim.schedulers import OneMinusSqrtScheduler, WarmupStableDecayScheduler
from flexbert.optim.stable_adamw import StableAdamW
from flexbert.registry import Registry, closest

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "OptimizerConfig",
    "SchedulerConfig",
    "SchedulerEntry",
    "build_optimizer",
    "build_scheduler",
]

OPTIMIZERS: Registry = Registry("optimizer", "optimizer.name")
SCHEDULERS: Registry = Registry("scheduler", "scheduler.name")


def _check_keys(section: str, cfg: Mapping[str, Any], cls: type, required: tuple[str, ...]) -> dict[str, Any]:
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in cfg:
        if key not in valid:
            raise FlexBertConfigError(
                f"unknown key `{section}.{key}`{closest(key, valid)}; valid keys: {', '.join(valid)}"
            )
    for key in required:
        if key not in cfg:
            raise FlexBertConfigError(f"`{section}.{key}` is required")
    return dict(cfg)


# ----------------------------------------------------------------------------------------------- optimizers


@dataclass
class OptimizerConfig:
    """The schema's `optimizer` section. Defaults follow recipe section 4 where the reference had none."""

    name: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.0
    filter_bias_norm_wd: bool = False  # the reference's default; the ModernBERT YAMLs set it to true
    log_grad_norm: bool = False  # read by the trainer: add the `log_grad_norm` callback

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "OptimizerConfig":
        values = _check_keys("optimizer", cfg, cls, required=("name", "lr"))
        if "betas" in values:
            betas = tuple(_number("optimizer.betas", b) for b in values["betas"])
            if len(betas) != 2:
                raise FlexBertConfigError(f"`optimizer.betas` needs two values (b1, b2), got {list(betas)}")
            values["betas"] = betas
        for key in ("lr", "eps", "weight_decay"):
            if key in values:
                values[key] = _number(f"optimizer.{key}", values[key])
        return cls(**values)


def _number(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FlexBertConfigError(f"`{key}` must be a number, got {value!r}") from None


def _named_params(model: torch.nn.Module) -> list[dict[str, Any]]:
    """One group with every trainable parameter, names kept under torch's `param_names` key."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}]


@OPTIMIZERS.register("decoupled_stableadamw", "StableAdamW, weight decay scaled by lr_t / peak lr (the recipe's)")
def _decoupled_stableadamw(params: list, c: OptimizerConfig) -> torch.optim.Optimizer:
    return StableAdamW(
        params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, decouple_lr=True, max_lr=c.lr
    )


@OPTIMIZERS.register("stableadamw", "StableAdamW, weight decay scaled by lr_t (AdamW-style)")
def _stableadamw(params: list, c: OptimizerConfig) -> torch.optim.Optimizer:
    return StableAdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, decouple_lr=False)


@OPTIMIZERS.register("decoupled_adamw", "composer.optim.DecoupledAdamW (decay follows the lr schedule, not lr)")
def _decoupled_adamw(params: list, c: OptimizerConfig) -> torch.optim.Optimizer:
    return DecoupledAdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)


@OPTIMIZERS.register("adamw", "torch.optim.AdamW")
def _adamw(params: list, c: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)


def build_optimizer(cfg: Mapping[str, Any] | OptimizerConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by `cfg["name"]` over `model`'s trainable parameters (names kept in `param_names`)."""
    c = cfg if isinstance(cfg, OptimizerConfig) else OptimizerConfig.from_dict(cfg)
    factory = OPTIMIZERS.get(c.name)
    params = filter_bias_norm_wd(model, c.weight_decay) if c.filter_bias_norm_wd else _named_params(model)
    return factory(params, c)


# ----------------------------------------------------------------------------------------------- schedulers

Duration = Union[str, Time]


@dataclass
class SchedulerConfig:
    """The schema's `scheduler` section plus the knobs of Composer's own warmup schedulers."""

    name: str
    t_warmup: Duration = "0dur"
    t_decay: Duration = "0.1dur"  # the reference's default for warmup_stable_decay
    t_max: Duration = "1dur"  # T; default max_duration
    alpha_f: float = 0.0
    alpha_i: float = 1.0  # linear_decay_with_warmup: level after warmup
    alpha: float = 1.0  # constant_with_warmup: level after warmup
    scale_warmup: bool = False  # Composer schedulers: scale the warmup by the scale-schedule ratio too

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "SchedulerConfig":
        values = _check_keys("scheduler", cfg, cls, required=("name",))
        for key in ("t_warmup", "t_decay", "t_max"):
            if key in values and not isinstance(values[key], Time):
                try:
                    Time.from_timestring(str(values[key]))
                except ValueError:
                    raise FlexBertConfigError(
                        f"`scheduler.{key}: {values[key]!r}` is not a Composer duration; write a number and a unit, "
                        f"e.g. '3_000_000_000tok', '4000ba', '0.1dur'"
                    ) from None
                values[key] = str(values[key])
        for key in ("alpha_f", "alpha_i", "alpha"):
            if key in values:
                values[key] = float(values[key])
        return cls(**values)


@dataclass(frozen=True)
class SchedulerEntry:
    """A schedule's factory and the config keys it reads (besides `name`)."""

    factory: Callable[[SchedulerConfig], ComposerScheduler]
    keys: frozenset[str]


def _register_schedule(name: str, description: str, keys: tuple[str, ...]):
    def decorator(factory: Callable[[SchedulerConfig], ComposerScheduler]):
        SCHEDULERS.add(name, SchedulerEntry(factory, frozenset(keys)), description)
        return factory

    return decorator


@_register_schedule(
    "warmup_stable_decay", "linear warmup, constant, linear decay to alpha_f over the last t_decay (0 = none)",
    ("t_warmup", "t_decay", "t_max", "alpha_f"),
)
def _wsd(c: SchedulerConfig) -> ComposerScheduler:
    return WarmupStableDecayScheduler(t_warmup=c.t_warmup, t_decay=c.t_decay, t_max=c.t_max, alpha_f=c.alpha_f)


@_register_schedule(
    "one_minus_sqrt", "optional warmup, constant, then 1 - sqrt decay to alpha_f over the last t_decay",
    ("t_warmup", "t_decay", "t_max", "alpha_f"),
)
def _one_minus_sqrt(c: SchedulerConfig) -> ComposerScheduler:
    return OneMinusSqrtScheduler(t_decay=c.t_decay, t_max=c.t_max, alpha_f=c.alpha_f, t_warmup=c.t_warmup)


@_register_schedule(
    "constant_with_warmup", "composer ConstantWithWarmupScheduler: linear warmup, then constant alpha",
    ("t_warmup", "t_max", "alpha", "scale_warmup"),
)
def _constant(c: SchedulerConfig) -> ComposerScheduler:
    return ConstantWithWarmupScheduler(t_warmup=c.t_warmup, alpha=c.alpha, t_max=c.t_max, scale_warmup=c.scale_warmup)


@_register_schedule(
    "cosine_with_warmup", "composer CosineAnnealingWithWarmupScheduler: warmup, cosine to alpha_f at t_max",
    ("t_warmup", "t_max", "alpha_f", "scale_warmup"),
)
def _cosine(c: SchedulerConfig) -> ComposerScheduler:
    return CosineAnnealingWithWarmupScheduler(
        t_warmup=c.t_warmup, t_max=c.t_max, alpha_f=c.alpha_f, scale_warmup=c.scale_warmup
    )


@_register_schedule(
    "linear_decay_with_warmup", "composer LinearWithWarmupScheduler: warmup, linear alpha_i -> alpha_f at t_max",
    ("t_warmup", "t_max", "alpha_i", "alpha_f", "scale_warmup"),
)
def _linear(c: SchedulerConfig) -> ComposerScheduler:
    return LinearWithWarmupScheduler(
        t_warmup=c.t_warmup, alpha_i=c.alpha_i, alpha_f=c.alpha_f, t_max=c.t_max, scale_warmup=c.scale_warmup
    )


def build_scheduler(cfg: Mapping[str, Any] | SchedulerConfig) -> ComposerScheduler:
    """The Composer scheduler named by `cfg["name"]`; pass it to `composer.Trainer(schedulers=...)`."""
    if isinstance(cfg, SchedulerConfig):
        c, given = cfg, set()
    else:
        c, given = SchedulerConfig.from_dict(cfg), set(cfg) - {"name"}
    entry: SchedulerEntry = SCHEDULERS.get(c.name)
    unused = sorted(given - entry.keys)
    if unused:
        warnings.warn(
            f"scheduler '{c.name}' does not use {', '.join(f'`scheduler.{k}`' for k in unused)}: ignored "
            f"(it reads {', '.join(sorted(entry.keys))})",
            UserWarning,
            stacklevel=2,
        )
    return entry.factory(c)
