"""`validate_run`: everything a run checks before it reads data or allocates weights, in one function that the
real start, `python main.py RUN.yaml --dry-run` and the sweep's pre-flight all call -- so a file that passes the
dry-run starts.

Checked, in order: required keys; durations; batch sizes against the world size; precision and device; the
tokenizer; the model config (built on the meta device: shapes and parameter count, no memory); `load_path`,
`model.pretrained_checkpoint` and `init_from_checkpoint` targets (exist, readable by the safe loader, fit the
model); loader sections and their data folders; optimizer and schedule; callbacks, algorithms and loggers.
The result is a `RunPlan`: what the run will do, for the dry-run's summary and for `build_trainer`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from flexbert.train.run_config import RunConfig, RunConfigError, check_batch_sizes, parse_duration, require


@dataclass
class RunPlan:
    """What a validated run will do."""

    cfg: RunConfig
    tokenizer: Any
    params: int
    device_train_batch: int  # sequences per rank per step
    device_eval_batch: int
    world_size: int
    resuming: bool  # autoresume will load this run's own checkpoint
    phase_start: bool  # load_path given and not resuming: a new phase from another run's checkpoint
    load_path: Optional[str]
    checkpoint_config: Optional[dict]  # architecture embedded in load_path (phase start only)
    precision: str
    save_folder: Optional[str]
    seq_len_warmup: Any = None  # the training loader's sequence-length schedule (algorithms.seq_warmup)

    def summary(self) -> str:
        cfg = self.cfg
        tokens_per_step = cfg.global_train_batch_size * cfg.max_seq_len
        lines = [
            f"run file     {cfg.source}",
            f"run name     {cfg.run_name}",
            f"model        {self.params / 1e6:.2f}M parameters",
            f"batch        {cfg.global_train_batch_size} sequences x {cfg.max_seq_len} tokens = "
            f"{tokens_per_step:,} token slots per step ({self.device_train_batch} per rank, world size {self.world_size})",
            f"duration     {cfg.max_duration} ({_steps(cfg, tokens_per_step)})",
            f"precision    {self.precision}",
        ]
        warmup = self.seq_len_warmup
        if warmup is not None:
            end = min(warmup.max_length, cfg.max_seq_len)
            lines.append(f"seq warmup   sequences of at most {min(warmup.min_length, end)} -> {end} tokens over the first "
                         f"{warmup.warmup_span:,}{warmup.unit} ({'cut' if warmup.truncate else 'continued'} beyond)")
        if self.resuming:
            lines.append(f"start        autoresume from {self.save_folder}")
        elif self.phase_start:
            reset = "schedule and data from zero" if cfg.resets_time else "time continues"
            override = ", lr / weight decay from this file" if cfg.restart_override else ""
            lines.append(f"start        from {self.load_path} ({reset}{override})")
        elif cfg.model.pretrained_checkpoint:
            lines.append(f"start        weights of {cfg.model.pretrained_checkpoint}")
        elif cfg.init_from_checkpoint:
            lines.append(f"start        grown from {cfg.init_from_checkpoint.checkpoint_path()}")
        else:
            lines.append("start        random initialization")
        lines.append(f"saves to     {self.save_folder or '(no checkpoints)'}"
                     + (f" every {cfg.save_interval}" if self.save_folder else ""))
        return "\n".join(lines)


def _steps(cfg: RunConfig, tokens_per_step: int) -> str:
    from composer.core import TimeUnit

    time = parse_duration("max_duration", cfg.max_duration)
    if time.unit == TimeUnit.BATCH:
        return f"{time.value:,} steps"
    if time.unit == TimeUnit.TOKEN:
        return f"about {time.value / tokens_per_step:,.0f} steps at full batch"
    if time.unit == TimeUnit.SAMPLE:
        return f"about {time.value / cfg.global_train_batch_size:,.0f} steps"
    return str(time.unit.value)


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


def _check_durations(cfg: RunConfig) -> None:
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


def _meta_model(cfg: RunConfig, tokenizer, checkpoint_config):
    from flexbert.train.builders import build_model

    with torch.device("meta"):
        return build_model(cfg, tokenizer, checkpoint_config)


def validate_run(cfg: RunConfig, world_size: int = 1, rank: int = 0) -> RunPlan:
    """Check the whole run without reading data or allocating weights; raise one clear error or return the plan."""
    from flexbert.checkpoints.loading import (
        check_checkpoint_fits,
        check_init_from_checkpoint,
        check_pretrained_checkpoint,
        prepare_load_path,
        read_checkpoint_model_config,
    )
    from flexbert.optim.builders import build_scheduler
    from flexbert.train.builders import build_algorithms, build_seq_len_warmup, build_tokenizer
    from flexbert.train.callbacks import build_callbacks
    from flexbert.checkpoints.crash_safe import check_some_checkpoint_intact, find_resume_checkpoint
    from flexbert.train.loggers import build_loggers
    from flexbert.checkpoints.resume_checks import check_intact, check_training_state, missing_training_state
    from flexbert.train.run_outputs import check_save_folder

    require(cfg, "max_duration", "train_loader", "optimizer", "scheduler", "global_train_batch_size",
            "device_train_microbatch_size")
    _check_durations(cfg)
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
    resuming = bool(cfg.autoresume and find_resume_checkpoint(save_folder) is not None)
    if cfg.autoresume and not resuming:
        check_some_checkpoint_intact(save_folder)
    check_save_folder(save_folder, cfg.to_dict(), resuming, cfg.save_overwrite)  # never replace another run silently
    phase_start = bool(cfg.load_path) and not resuming
    tokenizer = build_tokenizer(cfg)
    load_path = prepare_load_path(cfg.load_path) if cfg.load_path else None
    checkpoint_config = read_checkpoint_model_config(load_path) if phase_start else None
    composer_model = _meta_model(cfg, tokenizer, checkpoint_config)
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
    build_scheduler(cfg.scheduler, warn_unused=rank == 0)
    build_callbacks(cfg.callbacks)
    build_algorithms(cfg.algorithms, pretraining=True)
    seq_len_warmup = build_seq_len_warmup(cfg, warn=rank == 0)
    build_loggers(cfg.loggers, None)
    return RunPlan(cfg=cfg, tokenizer=tokenizer, params=params, device_train_batch=device_train,
                   device_eval_batch=device_eval, world_size=world_size, resuming=resuming, phase_start=phase_start,
                   load_path=load_path, checkpoint_config=checkpoint_config, precision=precision,
                   save_folder=save_folder, seq_len_warmup=seq_len_warmup)
