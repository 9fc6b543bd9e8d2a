"""Builders for the schema's `optimizer` and `scheduler` sections: `build_optimizer(cfg, model)`,
`build_scheduler(cfg)`, their typed configs and the `OPTIMIZERS` / `SCHEDULERS` registries.

Names are looked up in registries (`python -m flexbert.list_registries` lists them); an unknown name or key fails naming
the closest valid one. Scheduler keys the chosen schedule does not use (the reference framework's run files carry
`alpha_f` / `t_decay` under every schedule) are accepted with a warning rather than silently.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

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
from flexbert.duration import parse_duration
from flexbert.optim.param_groups import filter_bias_norm_wd
from flexbert.optim.schedulers import OneMinusSqrtScheduler, WarmupStableDecayScheduler
from flexbert.optim.stable_adamw import StableAdamW
from flexbert import schema
from flexbert.registry import Registry

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


# ----------------------------------------------------------------------------------------------- optimizers


@dataclass
class OptimizerConfig:
    """The schema's `optimizer` section. Defaults are the reference framework's, else ModernBERT's."""

    name: str = schema.field(doc="optimizer (`python -m flexbert.list_registries`)")
    lr: float = schema.field(doc="peak learning rate")
    betas: tuple[float, float] = schema.field((0.9, 0.98), doc="Adam (b1, b2)")
    eps: float = schema.field(1e-6, doc="Adam epsilon")
    weight_decay: float = schema.field(0.0, doc="weight decay (decoupled optimizers: scaled by lr_t / peak lr)")
    filter_bias_norm_wd: bool = schema.field(False, doc="no weight decay on biases and norm weights")
    log_grad_norm: bool = schema.field(False, doc="log the gradient norm each step (adds the log_grad_norm callback)")

    def __post_init__(self):
        if len(self.betas) != 2:
            raise FlexBertConfigError(f"`betas` needs two values (b1, b2), got {list(self.betas)}")
        self.betas = tuple(float(b) for b in self.betas)
        if not self.lr > 0:
            raise FlexBertConfigError(f"`lr` must be positive, got {self.lr}")
        OPTIMIZERS.get(self.name)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "OptimizerConfig":
        return schema.read_section(cls, cfg, "optimizer", FlexBertConfigError)


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

@dataclass
class SchedulerConfig:
    """The schema's `scheduler` section plus the knobs of Composer's own warmup schedulers."""

    name: str = schema.field(doc="schedule (`python -m flexbert.list_registries`)")
    t_warmup: Any = schema.field("0dur", doc="linear warmup length")
    t_decay: Any = schema.field("0.1dur", doc="warmup_stable_decay / one_minus_sqrt: decay length at the end")
    t_max: Any = schema.field("1dur", doc="schedule length T (default: max_duration)")
    alpha_f: float = schema.field(0.0, doc="final lr multiplier")
    alpha_i: float = schema.field(1.0, doc="linear_decay_with_warmup: lr multiplier after warmup")
    alpha: float = schema.field(1.0, doc="constant_with_warmup: lr multiplier after warmup")
    scale_warmup: bool = schema.field(False, doc="Composer schedulers: scale the warmup by the scale-schedule ratio too")

    def __post_init__(self):
        for key in ("t_warmup", "t_decay", "t_max"):
            value = getattr(self, key)
            if isinstance(value, Time):
                continue
            parse_duration(key, value, FlexBertConfigError)
            setattr(self, key, value.replace("_", ""))
        if parse_duration("t_warmup", self.t_warmup).value == 0:
            self.t_warmup = "0dur"  # no warmup in any unit: then its unit can never disagree with t_max's
        SCHEDULERS.get(self.name)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "SchedulerConfig":
        return schema.read_section(cls, cfg, "scheduler", FlexBertConfigError)

    def set_keys(self) -> set[str]:
        """Keys whose value differs from the default (what a run file evidently meant to set)."""
        return {f.name for f in dataclasses.fields(self) if f.name != "name" and getattr(self, f.name) != f.default}


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


def build_scheduler(cfg: Mapping[str, Any] | SchedulerConfig, warn_unused: bool = True) -> ComposerScheduler:
    """The Composer scheduler named by `cfg["name"]`; pass it to `composer.Trainer(schedulers=...)`."""
    c = cfg if isinstance(cfg, SchedulerConfig) else SchedulerConfig.from_dict(cfg)
    entry: SchedulerEntry = SCHEDULERS.get(c.name)
    unused = sorted(c.set_keys() - entry.keys)
    if unused and warn_unused:
        warnings.warn(
            f"scheduler '{c.name}' does not use {', '.join(f'`scheduler.{k}`' for k in unused)}: ignored "
            f"(it reads {', '.join(sorted(entry.keys))})",
            UserWarning,
            stacklevel=2,
        )
    return entry.factory(c)
