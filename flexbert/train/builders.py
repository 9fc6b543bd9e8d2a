"""One small builder per object of a run: tokenizer, model, loaders, optimizer and schedule, callbacks, loggers.

Each takes the resolved run config (`load_run_config`) and returns a ready object; `trainer.train` wires them
into Composer's Trainer. Nothing here knows about distribution or precision: Composer applies those.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from flexbert.config import MODEL_CONFIG_DEFAULTS, FlexBertConfig
from flexbert.train.run_config import RunConfigError, check_model_section, require


def build_tokenizer(cfg: Mapping[str, Any]):
    from transformers import AutoTokenizer

    model = cfg.get("model") or {}
    name = cfg.get("tokenizer_name") or model.get("tokenizer_name")
    if not name:
        raise RunConfigError(f"{cfg.get('_source')}: `tokenizer_name` is required (a local folder or a Hub name)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:
        hint = "" if os.path.isdir(str(name)) else " (not a local folder; Hub names need network access)"
        raise RunConfigError(f"tokenizer_name '{name}' cannot be loaded{hint}: {err}") from None
    for token in ("pad_token_id", "mask_token_id"):
        if getattr(tokenizer, token) is None:
            raise RunConfigError(f"tokenizer '{name}' has no {token.replace('_id', '')}: MLM pretraining needs one")
    return tokenizer


def model_config_from(cfg: Mapping[str, Any], tokenizer=None, checkpoint_config: Optional[Mapping] = None) -> FlexBertConfig:
    """`model.model_config` (or the checkpoint's embedded config) as a validated FlexBertConfig.

    `pad_token_id` comes from the tokenizer; a YAML value that disagrees is an error rather than a silent choice.
    """
    model = check_model_section(cfg)
    given = dict(model.get("model_config") or {})
    if checkpoint_config is not None:
        from flexbert.checkpoint import merge_checkpoint_model_config

        given = merge_checkpoint_model_config(given, checkpoint_config)
    if tokenizer is not None:
        pad = int(tokenizer.pad_token_id)
        if given.get("pad_token_id") not in (None, pad):
            raise RunConfigError(
                f"model_config.pad_token_id is {given['pad_token_id']} but the tokenizer's pad id is {pad}: remove the key "
                "(it is taken from the tokenizer)"
            )
        given["pad_token_id"] = pad
        vocab = given.get("vocab_size", MODEL_CONFIG_DEFAULTS["vocab_size"])
        if vocab < len(tokenizer):
            raise RunConfigError(
                f"model_config.vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)} tokens): token ids "
                f"would fall outside the embedding; use at least {len(tokenizer)} (rounded up to a multiple of 64)"
            )
    return FlexBertConfig(**given)


def build_model(cfg: Mapping[str, Any], tokenizer, checkpoint_config: Optional[Mapping] = None):
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.train.composer_model import FlexBertComposerModel

    config = model_config_from(cfg, tokenizer, checkpoint_config)
    model = FlexBertForMaskedLM(config)  # on one device, eager: flexbert.train.parallelism prepares it for the run
    disable = bool((cfg.get("model") or {}).get("disable_train_metrics", False))
    return FlexBertComposerModel(model, tokenizer=tokenizer, disable_train_metrics=disable)


def _loader_section(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    section = dict(cfg.get(key) or {})
    dataset = dict(section.get("dataset") or {})
    # The schema's top-level data keys are the defaults of each loader's dataset.
    dataset.setdefault("local", cfg.get("data_local"))
    if cfg.get("data_remote"):
        dataset.setdefault("remote", cfg.get("data_remote"))
    dataset.setdefault("split", "train" if key == "train_loader" else "validation")
    section["dataset"] = {k: v for k, v in dataset.items() if v is not None}
    return section


def check_data_folder(section: Mapping[str, Any], key: str) -> None:
    dataset = section.get("dataset") or {}
    local, split = dataset.get("local"), dataset.get("split")
    if dataset.get("remote"):
        return  # streamed: the local folder is a cache
    if not local:
        raise RunConfigError(f"`{key}.dataset.local` (or top-level data_local) is required: the MDS folder")
    folder = Path(local)
    if not folder.is_dir():
        raise RunConfigError(f"{key}: data folder '{folder}' does not exist (set data_local or {key}.dataset.local)")
    if split and not (folder / split).is_dir() and not (folder / "index.json").is_file():
        existing = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise RunConfigError(f"{key}: split '{split}' not found in '{folder}' (it has: {', '.join(existing) or 'no splits'})")


def build_loader(cfg: Mapping[str, Any], tokenizer, key: str, device_batch: int, microbatch: int):
    from flexbert.data.loader import build_packed_dataloader

    section = _loader_section(cfg, key)
    check_data_folder(section, key)
    mode = "train" if key == "train_loader" else "eval"
    mlm = cfg.get("mlm_probability") if mode == "train" else None
    return build_packed_dataloader(
        section,
        tokenizer,
        device_batch_size=device_batch,
        microbatch_size=microbatch,
        max_seq_len=int(cfg["max_seq_len"]),
        seed=int(cfg["seed"]),
        count_padding_tokens=bool(cfg.get("count_padding_tokens")),
        mlm_probability=(section.get("dataset") or {}).get("mlm_probability", mlm),
        mode=mode,
        where=key,
    )


def build_optimization(cfg: Mapping[str, Any], model) -> tuple[torch.optim.Optimizer, Any]:
    from flexbert.optim.builders import build_optimizer, build_scheduler

    require(cfg, "optimizer", "scheduler")
    return build_optimizer(cfg["optimizer"], model), build_scheduler(cfg["scheduler"])


def build_algorithms(section: Mapping[str, Any] | None) -> list:
    """Composer algorithms by their snake_case names (`gradient_clipping`, `ema`, ...)."""
    import inspect

    from composer import algorithms
    from composer.core import Algorithm

    from flexbert.registry import closest

    available = {}
    for name, obj in vars(algorithms).items():
        if inspect.isclass(obj) and issubclass(obj, Algorithm) and obj is not Algorithm:
            snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
            available[snake] = obj
    out = []
    for name, kwargs in (section or {}).items():
        if name not in available:
            raise RunConfigError(f"unknown algorithm `algorithms.{name}`{closest(name, available)}")
        out.append(available[name](**dict(kwargs or {})))
    return out
