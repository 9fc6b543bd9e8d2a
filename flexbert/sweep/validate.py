"""Check one variant's run config without training, and count its parameters.

Spec: issue 7 (`--dry-run` and the check before a sweep runs). Runs the same code a run runs before it reads data:
`load_run_config` (top-level keys, interpolation), batch-size divisibility for the launcher's world size,
`FlexBertConfig` (every model key and value), the optimizer / scheduler configs, the loader configs, callbacks,
algorithms and loggers. Not checked: the data folders (they may exist only where the runs execute) and
anything that needs the data or a device. The tokenizer is loaded when it is a local folder (cheap), so
vocab_size and pad id are checked against it; a Hub name is not fetched.
"""

from __future__ import annotations

import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from flexbert.train.run_config import RunConfigError

_TOKENIZERS: dict[str, Any] = {}  # tokenizer folder -> loaded tokenizer, shared by the variants of a sweep


@dataclass
class Validation:
    cfg: Optional[dict[str, Any]]  # the resolved run config (None when it could not be loaded)
    params: Optional[int]  # FlexBertForMaskedLM parameters, tied weights once
    error: Optional[str]  # None when valid


def launcher_world_size(launcher: str) -> int:
    """Processes a launcher starts: composer's `-n/--nproc N` (or `--world_size N` across nodes); 1 otherwise."""
    tokens = shlex.split(launcher)
    pairs = list(zip(tokens, tokens[1:])) + [tuple(t.split("=", 1)) for t in tokens if t.startswith("--") and "=" in t]
    found = {flag: value for flag, value in pairs if flag in ("-n", "--nproc", "--world_size")}
    value = found.get("--world_size") or found.get("--nproc") or found.get("-n") or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--launcher '{launcher}': the process count must be a positive integer, got '{value}'")
    return int(value)


def _tokenizer(cfg: dict[str, Any]):
    from flexbert.train.builders import build_tokenizer

    name = cfg.get("tokenizer_name") or (cfg.get("model") or {}).get("tokenizer_name")
    if not name or not Path(str(name)).is_dir():
        return None
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = build_tokenizer(cfg)
    return _TOKENIZERS[name]


def count_parameters(config) -> int:
    """Parameters of FlexBertForMaskedLM(config), built on the meta device: shapes only, no memory, no init cost."""
    import torch

    from flexbert.model.modeling import FlexBertForMaskedLM

    if config.pad_token_id is None:  # no tokenizer at hand: any valid id gives the same shapes
        config.pad_token_id = 0
    with torch.device("meta"):
        model = FlexBertForMaskedLM(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def _check_time(cfg: dict[str, Any], key: str) -> None:
    from composer.core import Time

    value = cfg.get(key)
    if isinstance(value, str):
        try:
            Time.from_timestring(value)
        except ValueError:
            raise RunConfigError(f"`{key}: {value}` is not a Composer duration (e.g. 60ba, 1_000_000tok, 1ep)") from None


def _check(cfg: dict[str, Any], world_size: int) -> int:
    from flexbert.data.loader import LoaderConfig
    from flexbert.optim.builders import OPTIMIZERS, OptimizerConfig, build_scheduler
    from flexbert.train.builders import _loader_section, build_algorithms, model_config_from
    from flexbert.train.callbacks import build_callbacks
    from flexbert.train.loggers import build_loggers
    from flexbert.train.run_config import check_batch_sizes, require

    require(cfg, "max_duration", "train_loader", "optimizer", "scheduler")
    for key in ("max_duration", "eval_interval", "save_interval"):
        _check_time(cfg, key)
    check_batch_sizes(cfg, world_size)
    params = count_parameters(model_config_from(cfg, _tokenizer(cfg)))
    OPTIMIZERS.get(OptimizerConfig.from_dict(cfg["optimizer"]).name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused-key warnings are shown once, by the run itself
        build_scheduler(cfg["scheduler"])
    for key in ("train_loader", "eval_loader"):
        if cfg.get(key):
            LoaderConfig.from_dict(_loader_section(cfg, key), key)
    build_callbacks(cfg.get("callbacks"))
    build_algorithms(cfg.get("algorithms"))
    build_loggers(cfg.get("loggers"), None)
    return params


def validate_variant(base: Path, overrides: Sequence[str], world_size: int = 1) -> Validation:
    """Load `base` with `overrides` exactly as main.py would and check every section; errors become a message."""
    from flexbert.train.run_config import load_run_config

    cfg = None
    try:
        cfg = load_run_config(base, list(overrides))
        return Validation(cfg, _check(cfg, world_size), None)
    except Exception as err:  # whatever stops the check would stop the run: report it, do not end the sweep
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return Validation(cfg, None, f"{type(err).__name__}: {message}")
