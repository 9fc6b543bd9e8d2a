"""`validate_run`: everything a run checks before it reads data, in one function that the real start,
`python main.py RUN.yaml --dry-run` and the sweep's pre-flight all call -- so a file that passes the dry-run starts.

Checked, in order: required keys; durations; batch sizes against the world size; precision and device; that no
other live run holds the save folder (without taking it: `build_trainer` does, once the run cannot be refused); the
tokenizer; the model config (the model is built once: on the meta device for a dry-run, with its weights for a
real start, see `flexbert.train.plan`); `load_path`,
`model.pretrained_checkpoint` and `init_from_checkpoint` targets (exist, readable by the safe loader, fit the
model); loader sections and their data folders; optimizer and schedule; callbacks, algorithms and loggers.
The result is the run's `RunPlan` (`flexbert.train.plan`): every default decided and every cheap object built
once, for the dry-run's summary and for `build_trainer`, which builds from it and decides nothing again.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Optional

import torch

from flexbert.train.plan import LoaderPlan, RunPlan
from flexbert.train.run_config import RunConfig, RunConfigError, check_batch_sizes, parse_duration, require


def resolve_precision(cfg: RunConfig) -> str:
    """The run's precision: see `effective_precision`."""
    return effective_precision(cfg.precision, cfg.device)


def effective_precision(precision: Optional[str], device: Optional[str] = None) -> str:
    """The precision a run uses: the given one (checked), amp_bf16 on a GPU, fp32 on CPU. An amp_* precision
    on a machine without a GPU runs in fp32, with a warning."""
    from composer.core import Precision

    from flexbert.registry import closest

    valid = [p.value for p in Precision]
    if precision is not None and precision not in valid:
        raise RunConfigError(f"`precision`: {precision!r}{closest(str(precision), valid)}; valid: {', '.join(valid)}")
    if device not in (None, "cpu", "gpu", "mps", "neuron", "tpu"):
        raise RunConfigError(f"`device`: {device!r}; valid: cpu, gpu")
    on_gpu = torch.cuda.is_available() and device in (None, "gpu")
    precision = precision or ("amp_bf16" if on_gpu else "fp32")
    if precision.startswith("amp_") and not on_gpu:
        warnings.warn(f"precision {precision} needs a GPU; running in fp32 on CPU")
        return "fp32"
    return precision


def _check_loaders(cfg: RunConfig, tokenizer, device_train: int, device_eval: int) -> None:
    from flexbert.data.warmup import BatchSizeWarmup
    from flexbert.train.builders import check_data_folder, check_shards_tokenizer

    micro = cfg.device_train_microbatch_size
    for key in ("train_loader", "eval_loader"):
        section = cfg.loader(key)
        if section is None:
            continue
        if section.dataset.max_seq_len is not None and section.dataset.max_seq_len != cfg.max_seq_len:
            raise RunConfigError(f"`{key}.dataset.max_seq_len` ({section.dataset.max_seq_len}) differs from "
                                 f"max_seq_len ({cfg.max_seq_len})")
        check_data_folder(cfg, key)
        check_shards_tokenizer(cfg, tokenizer, key)
    if not cfg.train_loader.packs:
        return
    try:
        BatchSizeWarmup.from_config(cfg.train_loader.batch_size_warmup_min_size,
                                    cfg.train_loader.batch_size_warmup_tokens,
                                    microbatch_size=micro, full_rows=device_train // micro)
    except ValueError as err:
        raise RunConfigError(f"train_loader: {err}") from None


# Composer's own warmup schedulers need t_warmup and t_max in one unit ('dur' counts as max_duration's unit).
_SAME_UNIT_SCHEDULES = ("constant_with_warmup", "cosine_with_warmup", "linear_decay_with_warmup")


def _check_durations(cfg: RunConfig):
    """max_duration as a Composer Time, checked against the schedule's units."""
    from composer.core import TimeUnit

    max_duration = parse_duration("max_duration", cfg.max_duration)
    if max_duration.unit == TimeUnit.EPOCH:
        raise RunConfigError(f"`max_duration: {cfg.max_duration}`: training loaders are endless (epochs roll over "
                             f"inside), so a run is measured in ba, tok or sp; e.g. max_duration: 1000ba")
    if max_duration.unit == TimeUnit.DURATION:
        raise RunConfigError(f"`max_duration: {cfg.max_duration}` cannot be a fraction of itself; use ba, tok or sp")
    if cfg.scheduler.name in _SAME_UNIT_SCHEDULES:
        def unit(key, value):
            time = parse_duration(f"scheduler.{key}", value)
            return max_duration.unit if time.unit == TimeUnit.DURATION else time.unit

        warmup, t_max = unit("t_warmup", cfg.scheduler.t_warmup), unit("t_max", cfg.scheduler.t_max)
        if warmup != t_max:
            raise RunConfigError(f"scheduler '{cfg.scheduler.name}': t_warmup ({cfg.scheduler.t_warmup}) and t_max "
                                 f"({cfg.scheduler.t_max}) must be in the same unit (max_duration is "
                                 f"{cfg.max_duration}); write both in {t_max.value} or as fractions (0.1dur)")
    return max_duration


def _check_trainer_arguments(cfg: RunConfig) -> None:
    """The settings Composer's Trainer takes as they are: checked here, before any data or weights, because the
    Trainer reports them only after both are built."""
    import dataclasses
    import logging
    import os

    from composer.utils.parallelism import FSDPConfig

    from flexbert.schema import check_keys, check_kwargs

    if cfg.compile_config is not None:
        check_kwargs(torch.compile, cfg.compile_config, "compile_config", RunConfigError)
    if cfg.fsdp_config is not None and os.environ.get("FSDP_VERSION", "1") != "2":  # version 2 maps keys itself
        # FSDPConfig takes any keyword and keeps it unused: a misspelt setting would be ignored without a word.
        check_keys(cfg.fsdp_config, [f.name for f in dataclasses.fields(FSDPConfig)], "fsdp_config", RunConfigError)
    if cfg.python_log_level is not None and not isinstance(logging.getLevelName(str(cfg.python_log_level).upper()), int):
        raise RunConfigError(f"`python_log_level: {cfg.python_log_level}`: use debug, info, warning, error or critical")
    if cfg.dist_timeout <= 0:
        raise RunConfigError(f"`dist_timeout: {cfg.dist_timeout}` must be a positive number of seconds, e.g. 600")


def eval_sizes(cfg: RunConfig, device_eval: int) -> tuple[int, int]:
    """(device eval batch, eval microbatch) in sequences: the batch rounded down to whole microbatches."""
    micro = cfg.device_eval_microbatch_size or min(device_eval, cfg.device_train_microbatch_size)
    return max(micro, device_eval - device_eval % micro), micro


def _loader_plan(cfg: RunConfig, key: str, device_batch: int, microbatch: int) -> LoaderPlan:
    """The section as the loader will read it: with its mask rate (load_run_config fills it for run files; a
    RunConfig made in code may leave it to the loader's default, decided here once)."""
    from flexbert.data.masking import default_mlm_probability

    section = cfg.loader(key)
    if section.dataset.mlm_probability is None:
        rate = default_mlm_probability("train" if key == "train_loader" else "eval")
        section = dataclasses.replace(section, dataset=dataclasses.replace(section.dataset, mlm_probability=rate))
    return LoaderPlan(section, device_batch, microbatch)


def _model(cfg: RunConfig, tokenizer, checkpoint_config, build_weights: bool):
    """The run's model: on the meta device (shapes and parameter count, no memory) or, for a real start, with its
    initial weights -- seeded with the run's seed, so every rank starts from the same weights (DDP also broadcasts
    rank 0's) and a run is reproducible; Composer reseeds per rank for the training loop."""
    from composer.utils import reproducibility

    from flexbert.train.builders import build_model

    if build_weights:
        reproducibility.seed_all(cfg.seed)
        return build_model(cfg, tokenizer, checkpoint_config)
    with torch.device("meta"):
        return build_model(cfg, tokenizer, checkpoint_config)


def validate_run(cfg: RunConfig, world_size: int = 1, rank: int = 0, build_weights: bool = False) -> RunPlan:
    """Check the whole run without reading data; raise one clear error or return the plan. Weights are allocated
    only with `build_weights` (a real start: the plan then holds the run's model, see `flexbert.train.plan`)."""
    from flexbert.checkpoints.loading import (
        check_checkpoint_fits,
        check_init_from_checkpoint,
        check_pretrained_checkpoint,
        prepare_load_path,
        read_checkpoint_model_config,
    )
    from flexbert.folder_lock import check_folder_free
    from flexbert.optim.builders import build_scheduler
    from flexbert.train.builders import build_algorithms, build_seq_len_warmup, build_tokenizer
    from flexbert.train.callbacks import build_callbacks
    from flexbert.checkpoints.crash_safe import check_some_checkpoint_intact, find_resume_checkpoint
    from flexbert.train.loggers import build_loggers
    from flexbert.checkpoints.resume_checks import check_intact, check_training_state, missing_training_state
    from flexbert.train.run_outputs import check_save_folder

    require(cfg, "max_duration", "train_loader", "optimizer", "scheduler", "global_train_batch_size",
            "device_train_microbatch_size")
    max_duration = _check_durations(cfg)
    _check_trainer_arguments(cfg)
    if cfg.resets_time and not cfg.load_path and rank == 0:
        key = "reset_time" if cfg.reset_time else "reset_time_once"
        warnings.warn(f"`{key}` has no effect without load_path: only a phase that starts from another run's "
                      f"checkpoint restarts the clock (autoresume continues it)")
    if cfg.model.gradient_checkpointing and cfg.fsdp_config:
        raise RunConfigError("model.gradient_checkpointing with fsdp_config: set fsdp_config.activation_checkpointing: "
                             "true instead (FSDP checkpoints the same layers)")
    device_train, device_eval = check_batch_sizes(cfg, world_size)
    precision = resolve_precision(cfg)
    save_folder = cfg.resolved_save_folder()
    if save_folder and "://" not in save_folder and rank == 0:  # the folder rank 0 will take once the run is valid
        check_folder_free(save_folder)  # another live run's files would mislead every check below
    resume_checkpoint = find_resume_checkpoint(save_folder) if cfg.autoresume else None
    resuming = resume_checkpoint is not None
    if cfg.autoresume and not resuming:
        check_some_checkpoint_intact(save_folder)
    check_save_folder(save_folder, cfg.to_dict(), resuming, cfg.save_overwrite)  # never replace another run silently
    phase_start = bool(cfg.load_path) and not resuming
    tokenizer = build_tokenizer(cfg)
    load_path = prepare_load_path(cfg.load_path) if cfg.load_path else None
    checkpoint_config = read_checkpoint_model_config(load_path) if phase_start else None
    composer_model = _model(cfg, tokenizer, checkpoint_config, build_weights)
    params = sum(p.numel() for p in composer_model.model.parameters())
    if phase_start:
        local_file = "://" not in load_path and Path(load_path).is_file()
        if local_file:
            check_intact(load_path)
        check_checkpoint_fits(load_path, composer_model, strict=cfg.load_strict_model_weights)
        if local_file and not cfg.load_weights_only:
            check_training_state(load_path)  # optimizer / scheduler entries torch will read
            warning = missing_training_state(load_path, autoresume=False)
            if warning and rank == 0:
                warnings.warn(warning)
    if cfg.model.pretrained_checkpoint:
        check_pretrained_checkpoint(cfg.model.pretrained_checkpoint, composer_model.model)
    if cfg.init_from_checkpoint is not None:
        check_init_from_checkpoint(cfg.init_from_checkpoint, composer_model.model.config.pad_token_id,
                                   str(Path(cfg.source).parent))
    _check_loaders(cfg, tokenizer, device_train, device_eval)
    train = _loader_plan(cfg, "train_loader", device_train, cfg.device_train_microbatch_size)
    eval_plan = _loader_plan(cfg, "eval_loader", *eval_sizes(cfg, device_eval)) if cfg.eval_loader else None
    scheduler = build_scheduler(cfg.scheduler, warn_unused=rank == 0)
    callbacks = build_callbacks(cfg.callbacks)
    algorithms = build_algorithms(cfg.algorithms, pretraining=True)
    seq_len_warmup = build_seq_len_warmup(cfg, max_duration, warn=rank == 0)
    metrics_path = Path(save_folder) / "metrics.jsonl" if save_folder else None
    loggers = build_loggers(cfg.loggers, metrics_path, run_config=cfg.to_dict())  # W&B records the whole run file
    return RunPlan(cfg=cfg, tokenizer=tokenizer, model_config=composer_model.model.config, params=params,
                   world_size=world_size, train=train, eval=eval_plan, max_duration=max_duration,
                   resuming=resuming, resume_checkpoint=str(resume_checkpoint) if resuming else None,
                   phase_start=phase_start, reset_time=cfg.resets_time and phase_start, load_path=load_path,
                   checkpoint_config=checkpoint_config, precision=precision, save_folder=save_folder,
                   scheduler=scheduler, callbacks=callbacks, algorithms=algorithms, loggers=loggers,
                   seq_len_warmup=seq_len_warmup, model=composer_model if build_weights else None)
