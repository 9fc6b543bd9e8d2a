"""The run file: defaults <- YAML <- command-line overrides, resolved and validated before anything heavy starts.

Top-level keys follow the FlexBERT schema (`shared/reference/flexbert-yaml-schema.md`). A key the schema does
not know is an error naming the closest valid key -- except "free variables": top-level keys that the file
references through `${...}` interpolation (`pretrain_data_local`, `pretrain_run_name`, ...), which researchers
use to share values between sections. Sections are validated by the builders that own them (model_config by
FlexBertConfig, loaders by flexbert.data, optimizer/scheduler by flexbert.optim) -- all of which run in
`validate_run`, still before any data is read or any weight allocated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flexbert.registry import closest


class RunConfigError(ValueError):
    """A run file problem; the message names the key (and file) and the fix."""


# key -> default (None: not set). Values here are what an empty run file means.
RUN_DEFAULTS: dict[str, Any] = {
    "data_local": None,
    "data_remote": None,
    "max_seq_len": 1024,
    "tokenizer_name": None,
    "mlm_probability": 0.3,
    "count_padding_tokens": False,
    "run_name": None,
    "model": None,
    "train_loader": None,
    "eval_loader": None,
    "scheduler": None,
    "optimizer": None,
    "max_duration": None,
    "eval_interval": "1ep",
    "eval_subset_num_batches": -1,
    "eval_first": False,
    "global_train_batch_size": None,
    "global_eval_batch_size": None,
    "device_train_microbatch_size": None,
    "device_eval_batch_size": None,
    "device_eval_microbatch_size": None,
    "seed": 17,
    "precision": "amp_bf16",
    "progress_bar": False,
    "log_to_console": True,
    "console_log_interval": "1ba",
    "callbacks": {},
    "algorithms": {},
    "loggers": {},
    "save_interval": "1000ba",
    "save_num_checkpoints_to_keep": -1,
    "save_folder": None,
    "save_overwrite": False,
    "save_weights_only": False,
    "load_path": None,
    "load_weights_only": False,
    "load_strict_model_weights": True,
    "autoresume": False,
    "reset_time": False,
    "restart_override": False,
    "init_from_checkpoint": None,
    "fsdp_config": None,
    "compile_config": None,
    "dist_timeout": 600.0,
    "python_log_level": None,
    "stop_on_nonfinite_loss": True,
    "max_nonfinite_skips": 0,  # > 0: skip (and count) up to this many batches with a non-finite loss, then stop
}

MODEL_KEYS = ("name", "pretrained_model_name", "tokenizer_name", "disable_train_metrics", "recompute_metric_loss",
              "pretrained_checkpoint", "model_config")


def _referenced_variables(raw: Any) -> set[str]:
    """Top-level names used as `${name}` or `${name.sub}` anywhere in the (unresolved) config."""
    text = OmegaConf.to_yaml(raw, resolve=False) if OmegaConf.is_config(raw) else str(raw)
    return {m.group(1) for m in re.finditer(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)", text)}


def load_run_config(path: str | Path | None, overrides: Sequence[str] = (), base: Mapping | None = None) -> dict[str, Any]:
    """Merge defaults <- YAML file <- `key.sub=value` overrides; resolve interpolations; check top-level keys."""
    sources = [OmegaConf.create(RUN_DEFAULTS)]
    where = "run config"
    if base is not None:
        sources.append(OmegaConf.create(dict(base)))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RunConfigError(f"{path}: no such run file")
        try:
            sources.append(OmegaConf.load(path))
        except Exception as err:  # yaml syntax errors carry line numbers in their message
            raise RunConfigError(f"{path}: cannot parse YAML: {err}") from None
        where = str(path)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise RunConfigError(f"command-line override `{bad[0]}` must look like key.sub=value")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise RunConfigError(f"command-line overrides: {err}") from None
    sources.append(cli)
    merged = OmegaConf.merge(*sources)
    free = _referenced_variables(merged)
    for key in merged.keys():
        if key not in RUN_DEFAULTS and key not in free:
            origin = "command line" if key in cli else where
            raise RunConfigError(
                f"{origin}: unknown top-level key `{key}`{closest(key, RUN_DEFAULTS)}. "
                f"(A free variable is allowed only if the file references it as ${{{key}}}.)"
            )
    try:
        resolved = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise RunConfigError(f"{where}: cannot resolve interpolation: {err}") from None
    resolved["_source"] = where
    return resolved


def require(cfg: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if cfg.get(key) is None:
            raise RunConfigError(f"{cfg.get('_source', 'run config')}: `{key}` is required")


def check_model_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
    model = cfg.get("model") or {}
    for key in model:
        if key not in MODEL_KEYS:
            raise RunConfigError(f"{cfg.get('_source')}: unknown key `model.{key}`{closest(key, MODEL_KEYS)}")
    if model.get("name", "flex_bert") != "flex_bert":
        raise RunConfigError(f"`model.name` must be flex_bert, got {model.get('name')!r}")
    return model


def check_batch_sizes(cfg: Mapping[str, Any], world_size: int) -> tuple[int, int]:
    """(device_train_batch_size, device_eval_batch_size) in sequences; global sizes must divide by the world size."""
    require(cfg, "global_train_batch_size", "device_train_microbatch_size")
    glob = int(cfg["global_train_batch_size"])
    micro = int(cfg["device_train_microbatch_size"])
    if glob % world_size:
        raise RunConfigError(
            f"global_train_batch_size {glob} does not divide by the world size {world_size}: "
            f"use a multiple of {world_size * micro} (world size x device_train_microbatch_size)"
        )
    device_train = glob // world_size
    if device_train % micro:
        raise RunConfigError(
            f"global_train_batch_size {glob} / world size {world_size} = {device_train} sequences per device is not a "
            f"multiple of device_train_microbatch_size {micro} (a packed row holds one microbatch): "
            f"use a multiple of {world_size * micro}"
        )
    device_eval = cfg.get("device_eval_batch_size")
    if cfg.get("global_eval_batch_size") is not None:
        geval = int(cfg["global_eval_batch_size"])
        if geval % world_size:
            raise RunConfigError(f"global_eval_batch_size {geval} does not divide by the world size {world_size}")
        device_eval = geval // world_size
    return device_train, int(device_eval or micro)
