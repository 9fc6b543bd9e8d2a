"""`train(cfg)`: validate the whole run, build every object, hand them to Composer's Trainer, fit.

Phases (recipe section 4): a phase that starts from the previous one's checkpoint sets `load_path`,
`reset_time: true` (its schedule starts at zero) and `restart_override: true` (its lr / weight decay replace the
checkpoint's). When `autoresume` finds a checkpoint of the *current* run in `save_folder`, Composer resumes from
it instead, and neither the time reset nor the override applies -- a crashed phase 2 continues, it does not
restart.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from flexbert.registry import closest
from flexbert.train.run_config import RunConfigError, check_batch_sizes, load_run_config, require


def _world_size() -> int:
    from composer.utils import dist

    return dist.get_world_size()


def _global_rank() -> int:
    from composer.utils import dist

    return dist.get_global_rank()


DURATION_KEYS = ("max_duration", "eval_interval", "save_interval", "console_log_interval")


def _check_trainer_values(cfg: Mapping[str, Any]) -> None:
    """Values Composer would reject deep inside Trainer() without naming the key: durations and precision."""
    from composer.core import Precision, Time

    for key in DURATION_KEYS:
        value = cfg.get(key)
        if isinstance(value, str):
            try:
                Time.from_timestring(value)
            except ValueError:
                raise RunConfigError(f"`{key}`: {value!r} is not a duration; use e.g. 1000ba, 10_000_000tok, 1ep "
                                     "or 0.5dur") from None
    valid = [p.value for p in Precision]
    if cfg.get("precision") and cfg["precision"] not in valid:
        raise RunConfigError(f"`precision`: {cfg['precision']!r}{closest(str(cfg['precision']), valid)}; "
                             f"valid: {', '.join(valid)}")


def _precision(cfg: Mapping[str, Any]) -> str:
    precision = cfg.get("precision") or "fp32"
    if precision.startswith("amp_") and not torch.cuda.is_available():
        warnings.warn(f"precision {precision} needs a GPU; running in fp32 on CPU")
        return "fp32"
    return precision


def _save_folder(cfg: Mapping[str, Any]) -> Optional[str]:
    folder = cfg.get("save_folder")
    if folder and cfg.get("run_name"):
        folder = folder.replace("{run_name}", str(cfg["run_name"]))
    return folder


def _will_autoresume(cfg: Mapping[str, Any], save_folder: Optional[str]) -> bool:
    """Whether Composer's autoresume will load a checkpoint of this run (after `repair_latest` on rank 0)."""
    from flexbert.train.checkpoint_safety import find_resume_checkpoint

    return bool(cfg.get("autoresume") and find_resume_checkpoint(save_folder) is not None)


def _eval_sizes(cfg: Mapping[str, Any], device_eval: int) -> tuple[int, int]:
    micro = int(cfg.get("device_eval_microbatch_size") or min(device_eval, int(cfg["device_train_microbatch_size"])))
    return max(micro, device_eval - device_eval % micro), micro


def build_trainer(cfg: Mapping[str, Any]):
    """Every object of the run, wired into a Composer Trainer (not yet fitted)."""
    from composer import Trainer
    from composer.core import Evaluator

    from flexbert.checkpoint import check_checkpoint_fits, prepare_load_path, read_checkpoint_model_config
    from flexbert.data.loader import LoaderStateCallback
    from flexbert.folder_lock import hold_folder
    from flexbert.optim.restart import RestartOverride
    from flexbert.safe_unpickle import install_composer_guard
    from flexbert.train.builders import (
        build_algorithms,
        build_loader,
        build_model,
        build_optimization,
        build_tokenizer,
    )
    from flexbert.train.callbacks import NonFiniteLossGuard, build_callbacks
    from flexbert.train.checkpoint_safety import find_resume_checkpoint, install_atomic_checkpoint_writes, repair_latest
    from flexbert.train.loggers import build_loggers
    from flexbert.train.parallelism import prepare_model
    from flexbert.train.resume_checks import check_intact, check_resume, check_training_state
    from flexbert.train.rng_resume import ResumeRngStates

    require(cfg, "max_duration", "train_loader")
    _check_trainer_values(cfg)
    device_train, device_eval = check_batch_sizes(cfg, _world_size())
    save_folder = _save_folder(cfg)
    if save_folder and "://" not in save_folder and _global_rank() == 0:  # rank 0 alone writes the folder
        hold_folder(save_folder, "training run", cfg.get("run_name"))  # a second run into it fails naming this one
    install_atomic_checkpoint_writes()  # a checkpoint's name never holds a partial file (see checkpoint_safety)
    if cfg.get("autoresume") and _global_rank() == 0:
        repair_latest(save_folder)  # a kill while `latest` was being re-pointed must not restart the run at 0
    resuming = _will_autoresume(cfg, save_folder)
    phase_start = bool(cfg.get("load_path")) and not resuming

    install_composer_guard()  # every checkpoint Composer opens (load_path, autoresume) passes the safe loader first
    from composer.utils import reproducibility

    # Same seed on every rank, so weights are identical before DDP (which also broadcasts rank 0's) and a run is
    # reproducible; Composer reseeds per rank for the training loop.
    reproducibility.seed_all(int(cfg["seed"]))
    tokenizer = build_tokenizer(cfg)
    load_path = prepare_load_path(cfg.get("load_path")) if cfg.get("load_path") else None
    checkpoint_config = read_checkpoint_model_config(load_path) if load_path and not resuming else None
    composer_model = build_model(cfg, tokenizer, checkpoint_config)
    if load_path and not resuming:  # list every missing / unexpected / mis-shaped key before Composer loads
        if "://" not in load_path and Path(load_path).is_file():
            check_intact(load_path)
        check_checkpoint_fits(load_path, composer_model, strict=bool(cfg.get("load_strict_model_weights", True)))
        if not cfg.get("load_weights_only") and "://" not in load_path and Path(load_path).is_file():
            check_training_state(load_path)  # optimizer / scheduler entries torch will read
    if resuming:  # the same list for the run's own checkpoint; say which changed run-file values it overrides
        check_resume(str(find_resume_checkpoint(save_folder)), composer_model, cfg.get("optimizer"), _global_rank() == 0)
    if cfg.get("init_from_checkpoint"):
        from flexbert.checkpoint import init_from_checkpoint

        init_from_checkpoint(composer_model.model, cfg["init_from_checkpoint"])
    optimizer, scheduler = build_optimization(cfg, composer_model)

    train_spec = build_loader(cfg, tokenizer, "train_loader", device_train, int(cfg["device_train_microbatch_size"]))
    evaluators = []
    if cfg.get("eval_loader"):
        eval_batch, eval_micro = _eval_sizes(cfg, device_eval)
        eval_spec = build_loader(cfg, tokenizer, "eval_loader", eval_batch, eval_micro)
        evaluators.append(Evaluator(label="eval", dataloader=eval_spec, metric_names=["LanguageCrossEntropy", "MaskedAccuracy"]))

    callbacks = build_callbacks(cfg.get("callbacks"))
    if (cfg.get("optimizer") or {}).get("log_grad_norm") and "log_grad_norm" not in (cfg.get("callbacks") or {}):
        from flexbert.optim.grad_norm import LogGradNorm

        callbacks.append(LogGradNorm())
    # Loader state rides in the checkpoint; a new phase (time reset) starts its data from the beginning.
    callbacks.append(LoaderStateCallback(train_spec, strict=not phase_start))
    if cfg.get("stop_on_nonfinite_loss", True):
        callbacks.append(NonFiniteLossGuard(max_skips=cfg.get("max_nonfinite_skips", 0)))
    if cfg.get("restart_override") and phase_start:
        callbacks.append(RestartOverride(optimizer))
    resume_rng = ResumeRngStates()  # dropout etc. continue exactly where the checkpoint left them
    callbacks.append(resume_rng)
    metrics_path = Path(save_folder) / "metrics.jsonl" if save_folder else None
    loggers = build_loggers(cfg.get("loggers"), metrics_path)

    ignore_keys = ["state/callbacks/LoaderStateCallback"] if phase_start else None
    prepare_model(composer_model.model, cfg)  # FSDP units / checkpointed blocks, compile (see its docstring)
    parallelism = {"fsdp": dict(cfg["fsdp_config"])} if cfg.get("fsdp_config") else None
    trainer = Trainer(
        run_name=cfg.get("run_name"),
        seed=int(cfg["seed"]),
        model=composer_model,
        train_dataloader=train_spec,
        eval_dataloader=evaluators or None,
        eval_interval=cfg.get("eval_interval", "1ep"),
        eval_subset_num_batches=int(cfg.get("eval_subset_num_batches", -1)),
        max_duration=cfg["max_duration"],
        optimizers=optimizer,
        schedulers=scheduler,
        step_schedulers_every_batch=True,
        device_train_microbatch_size=int(cfg["device_train_microbatch_size"]),
        precision=_precision(cfg),
        algorithms=build_algorithms(cfg.get("algorithms")),
        callbacks=callbacks,
        loggers=loggers,
        progress_bar=bool(cfg.get("progress_bar", False)),
        log_to_console=bool(cfg.get("log_to_console", True)),
        console_log_interval=cfg.get("console_log_interval", "1ba"),
        save_folder=save_folder,
        save_interval=cfg.get("save_interval", "1000ba"),
        save_num_checkpoints_to_keep=int(cfg.get("save_num_checkpoints_to_keep", -1)),
        save_overwrite=bool(cfg.get("save_overwrite", False)),
        save_weights_only=bool(cfg.get("save_weights_only", False)),
        load_path=load_path,
        load_weights_only=bool(cfg.get("load_weights_only", False)),
        load_strict_model_weights=bool(cfg.get("load_strict_model_weights", True)),
        load_ignore_keys=ignore_keys,
        autoresume=bool(cfg.get("autoresume", False)),
        spin_dataloaders=False,
        parallelism_config=parallelism,
        compile_config=cfg.get("compile_config"),
        dist_timeout=float(cfg.get("dist_timeout", 600.0)),
        python_log_level=cfg.get("python_log_level"),
    )
    resume_rng.take_from(trainer)
    reset_time = bool(cfg.get("reset_time")) and phase_start
    return trainer, reset_time


def _already_finished(trainer, reset_time: bool) -> bool:
    """Autoresume found a checkpoint at max_duration: the run was killed after its last checkpoint, it is done.
    (Composer's fit would raise 'No training would occur'.)"""
    state = trainer.state
    return (not reset_time and state.max_duration is not None
            and state.max_duration <= state.timestamp.get(state.max_duration.unit))


def train(cfg: Mapping[str, Any]):
    trainer, reset_time = build_trainer(cfg)
    if not _already_finished(trainer, reset_time):
        trainer.fit(reset_time=reset_time)
    return trainer


def _lost_peer(err: BaseException) -> bool:
    """A collective or rendezvous failed because another rank exited -- that rank prints the real error."""
    import torch.distributed as tdist

    text = str(err)
    return _world_size() > 1 and (isinstance(err, getattr(tdist, "DistError", ()))
                                  or "Connection closed by peer" in text or "Connection reset by peer" in text)


def _peer_error_line(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"error: rank {_global_rank()} stopped because another rank failed (see that rank's error): {first}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python main.py RUN.yaml [key.sub=value ...]` / `composer main.py ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n")[0] + "\n\nusage: composer main.py RUN.yaml [key.sub=value ...]")
        return 0 if argv else 2
    from flexbert.checkpoint import CheckpointError
    from flexbert.config import FlexBertConfigError
    from flexbert.errors import DataError
    from flexbert.folder_lock import FolderBusyError
    from flexbert.train.checkpoint_safety import CheckpointSaveError

    # Everything before fit is validation and building: its errors are configuration or input problems, shown as
    # one clear line. Errors during fit keep their traceback, except the ones that already say what happened.
    setup_errors = (RunConfigError, FlexBertConfigError, CheckpointError, FolderBusyError, FileNotFoundError, KeyError,
                    ValueError, TypeError)
    try:
        cfg = load_run_config(argv[0], argv[1:])
        if cfg.get("python_log_level"):
            logging.basicConfig(level=str(cfg["python_log_level"]).upper())
        trainer, reset_time = build_trainer(cfg)
    except setup_errors as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        print(_peer_error_line(err), file=sys.stderr)
        return 2
    if _already_finished(trainer, reset_time):
        print(f"nothing to do: the checkpoint autoresume loaded is already at max_duration {trainer.state.max_duration}")
        trainer.close()
        return 0
    try:
        trainer.fit(reset_time=reset_time)
    except (FloatingPointError, DataError, CheckpointSaveError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        print(_peer_error_line(err), file=sys.stderr)
        return 1
    return 0
