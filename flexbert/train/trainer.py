"""`train(cfg)`: validate the whole run, build every object, hand them to Composer's Trainer, fit.

Phases: a phase that starts from the previous one's checkpoint sets `load_path`,
`reset_time: true` (its schedule starts at zero) and `restart_override: true` (its lr / weight decay replace the
checkpoint's). When `autoresume` finds a checkpoint of the *current* run in `save_folder`, Composer resumes from
it instead, and neither the time reset nor the override applies -- a crashed phase 2 continues, it does not
restart.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # the run config pulls in torch; `main.py --help` answers without it
    from flexbert.train.run_config import RunConfig


def _world_size() -> int:
    from composer.utils import dist

    return dist.get_world_size()


def _global_rank() -> int:
    from composer.utils import dist

    return dist.get_global_rank()


def _hold_save_folder(folder: str, run_name: Optional[str]) -> None:
    from flexbert.folder_lock import hold_folder
    from flexbert.train.run_config import RunConfigError

    try:
        hold_folder(folder, "training run", run_name)
    except OSError as err:  # read-only file system, no permission, a file where the folder should be
        raise RunConfigError(f"save_folder '{folder}': cannot write there ({err.strerror or err}); choose a writable "
                             f"folder or fix its permissions") from None


def build_trainer(cfg: RunConfig):
    """Every object of the run, wired into a Composer Trainer (not yet fitted). Returns (trainer, reset_time)."""
    trainer, plan = start_run(cfg)
    return trainer, plan.reset_time


def start_run(cfg: RunConfig):
    """`build_trainer`, returning (trainer, the run's RunPlan).

    The run is resolved once (`validate_run` -> `RunPlan`, model included); what follows only constructs from the
    plan. The save folder is taken after everything that can refuse the run (validation, the resume checks,
    loading weights, building the loaders): a refused run leaves no lock and no files behind."""
    from composer import Trainer
    from composer.core import Evaluator

    from flexbert.checkpoints.loading import init_from_checkpoint, load_pretrained_checkpoint
    from flexbert.data.loader import LoaderStateCallback, SeqLenLogger
    from flexbert.optim.builders import build_optimizer
    from flexbert.optim.restart import RestartOverride
    from flexbert.checkpoints.safe_unpickle import install_composer_guard
    from flexbert.train.builders import build_loader
    from flexbert.train.callbacks import EmptyEvalWarning, NonFiniteLossGuard
    from flexbert.checkpoints.crash_safe import count_earlier_checkpoints, install_atomic_checkpoint_writes, repair_latest
    from flexbert.train.parallelism import prepare_model
    from flexbert.checkpoints.resume_checks import check_resume
    from flexbert.train.node_signal_files import install_node_unique_signal_files
    from flexbert.train.rng_resume import ResumeRngStates
    from flexbert.train.run_outputs import claim_save_folder
    from flexbert.train.validate import validate_run

    install_composer_guard()  # every checkpoint Composer opens (load_path, autoresume) passes the safe loader first
    install_atomic_checkpoint_writes()  # a checkpoint's name never holds a partial file (see checkpoints.crash_safe)
    install_node_unique_signal_files()  # nodes sharing a file system do not remove each other's signal files
    rank0 = _global_rank() == 0
    plan = validate_run(cfg, _world_size(), _global_rank(), build_weights=True)
    composer_model = plan.model
    if plan.resuming:  # the run's own checkpoint: every mismatch listed; say which changed run-file values it overrides
        check_resume(plan.resume_checkpoint, composer_model,
                     {"lr": cfg.optimizer.lr, "weight_decay": cfg.optimizer.weight_decay}, rank0)
    if cfg.model.pretrained_checkpoint and not plan.resuming:
        load_pretrained_checkpoint(cfg.model.pretrained_checkpoint, composer_model.model)
    if cfg.init_from_checkpoint is not None and not plan.resuming:
        init_from_checkpoint(composer_model.model, cfg.init_from_checkpoint, str(Path(cfg.source).parent))
    optimizer = build_optimizer(cfg.optimizer, composer_model)

    train_spec = build_loader(cfg, plan.tokenizer, "train_loader", plan.train.device_batch, plan.train.microbatch,
                              seq_len_warmup=plan.seq_len_warmup, section=plan.train.section)
    evaluators = []
    if plan.eval is not None:
        eval_spec = build_loader(cfg, plan.tokenizer, "eval_loader", plan.eval.device_batch, plan.eval.microbatch,
                                 section=plan.eval.section)
        evaluators.append(Evaluator(label="eval", dataloader=eval_spec, metric_names=["LanguageCrossEntropy", "MaskedAccuracy"]))

    callbacks = list(plan.callbacks)
    if evaluators:
        callbacks.append(EmptyEvalWarning())
    if cfg.optimizer.log_grad_norm and "log_grad_norm" not in cfg.callbacks:
        from flexbert.optim.grad_norm import LogGradNorm

        callbacks.append(LogGradNorm())
    # Loader state rides in the checkpoint; a new phase (time reset) starts its data from the beginning.
    callbacks.append(LoaderStateCallback(train_spec, strict=not plan.phase_start))
    if plan.seq_len_warmup is not None:
        callbacks.append(SeqLenLogger(plan.train.microbatch))
    if cfg.stop_on_nonfinite_loss:
        callbacks.append(NonFiniteLossGuard(max_skips=cfg.max_nonfinite_skips))
    if cfg.restart_override and plan.phase_start:
        callbacks.append(RestartOverride(optimizer))
    resume_rng = ResumeRngStates()  # dropout etc. continue exactly where the checkpoint left them
    callbacks.append(resume_rng)
    prepare_model(composer_model.model, cfg)  # FSDP units / checkpointed blocks, compile (see its docstring)

    # Nothing above wrote into the save folder; from here on the run owns it.
    save_folder = plan.save_folder
    if save_folder and "://" not in save_folder and rank0:  # rank 0 alone writes the folder
        _hold_save_folder(save_folder, cfg.run_name)  # a second run into it fails naming this one
    if cfg.autoresume and rank0:
        repair_latest(save_folder)  # a kill while `latest` was re-pointed must not restart at 0
    if rank0:  # a fresh start replaces the previous run's outputs (allowed by validate_run)
        removed = claim_save_folder(save_folder, cfg.to_dict(), plan.resuming, keep=plan.load_path)
        if removed:
            print(f"save_overwrite: removed the previous run's {', '.join(p.name for p in removed)} from {save_folder}")

    # A new phase starts its data and its console summary's loss average afresh.
    ignore_keys = ["state/callbacks/LoaderStateCallback", "state/callbacks/EvalSummary"] if plan.phase_start else None
    trainer = Trainer(
        run_name=cfg.run_name,
        seed=cfg.seed,
        model=composer_model,
        train_dataloader=train_spec,
        eval_dataloader=evaluators or None,
        eval_interval=cfg.eval_interval,
        eval_subset_num_batches=cfg.eval_subset_num_batches,
        train_subset_num_batches=cfg.train_subset_num_batches,
        max_duration=cfg.max_duration,
        optimizers=optimizer,
        schedulers=plan.scheduler,
        step_schedulers_every_batch=True,
        device=cfg.device,
        device_train_microbatch_size=plan.train.microbatch,
        precision=plan.precision,
        algorithms=plan.algorithms,
        callbacks=callbacks,
        loggers=plan.loggers,
        progress_bar=cfg.progress_bar,
        log_to_console=cfg.log_to_console,
        console_log_interval=cfg.console_log_interval,
        save_folder=save_folder,
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        save_weights_only=cfg.save_weights_only,
        load_path=plan.load_path,
        load_weights_only=cfg.load_weights_only,
        load_strict_model_weights=cfg.load_strict_model_weights,
        load_ignore_keys=ignore_keys,
        autoresume=cfg.autoresume,
        spin_dataloaders=False,
        parallelism_config={"fsdp": dict(cfg.fsdp_config)} if cfg.fsdp_config else None,
        compile_config=cfg.compile_config,
        dist_timeout=cfg.dist_timeout,
        python_log_level=cfg.python_log_level,
    )
    resume_rng.take_from(trainer)
    if plan.resuming:
        count_earlier_checkpoints(trainer)  # save_num_checkpoints_to_keep counts the killed attempts' checkpoints
    return trainer, plan


def _already_finished(trainer, reset_time: bool) -> bool:
    """Autoresume found a checkpoint at max_duration: the run was killed after its last checkpoint, it is done.
    (Composer's fit would raise 'No training would occur'.)"""
    state = trainer.state
    return (not reset_time and state.max_duration is not None
            and state.max_duration <= state.timestamp.get(state.max_duration.unit))


def fit(trainer, cfg: RunConfig, reset_time: bool) -> bool:
    """Train unless the run is already at max_duration; False when there was nothing to do."""
    if _already_finished(trainer, reset_time):
        return False
    if cfg.eval_first and int(trainer.state.timestamp.batch) == 0 and trainer.state.evaluators:
        trainer.eval()
    trainer.fit(reset_time=reset_time)
    return True


def train(cfg: RunConfig):
    """Build and fit the run described by `cfg` (a `load_run_config` result); returns the trainer."""
    trainer, reset_time = build_trainer(cfg)
    fit(trainer, cfg, reset_time)
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


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _show_each_warning_once() -> None:
    """The console says each thing once (rank-0 notes and library warnings may repeat during setup)."""
    shown: set[str] = set()
    show = warnings.showwarning

    def show_once(message, category, filename, lineno, file=None, line=None):
        if str(message) not in shown:
            shown.add(str(message))
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_once


USAGE = """usage: composer main.py RUN.yaml [key.sub=value ...]
       python main.py RUN.yaml [key.sub=value ...] --dry-run   validate everything, print a summary, exit
       python main.py --help-config                              the run-file schema with defaults"""


def _refused() -> int:
    """Exit status 2 for a run refused before training, whose error line is printed. From here SIGTERM just ends
    the process: a launcher SIGTERMs the other ranks as soon as one exits, and Composer's handler (installed when
    it is imported) turns SIGTERM into SystemExit wherever it lands -- inside the interpreter's exit handlers that
    prints a traceback under the one-line error. Nothing was written that exit handlers would need to flush."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python main.py RUN.yaml [key.sub=value ...] [--dry-run]` / `composer main.py ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-config" in argv:
        from flexbert.train.run_config import schema_help

        print(schema_help())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n")[0] + "\n\n" + USAGE)
        return 0 if argv else 2
    warnings.formatwarning = _one_line_warning
    _show_each_warning_once()
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    from flexbert.checkpoints.loading import CheckpointError
    from flexbert.errors import DataError
    from flexbert.folder_lock import FolderBusyError
    from flexbert.schema import ConfigError
    from flexbert.checkpoints.crash_safe import CheckpointSaveError
    from flexbert.train.run_config import load_run_config

    # Everything before fit is validation and building: its errors are configuration or input problems, shown as
    # one clear line. Errors during fit keep their traceback, except the ones that already say what happened.
    setup_errors = (ConfigError, CheckpointError, FolderBusyError, FileNotFoundError, KeyError, ValueError, TypeError)
    try:
        cfg = load_run_config(argv[0], argv[1:])
        if cfg.python_log_level:
            logging.basicConfig(level=str(cfg.python_log_level).upper())
        if dry_run:
            from flexbert.train.validate import validate_run

            print(validate_run(cfg, _world_size(), _global_rank()).summary())
            print("dry run: the run file is valid")
            return 0
        trainer, plan = start_run(cfg)
    except setup_errors as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return _refused()
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        print(_peer_error_line(err), file=sys.stderr)
        return _refused()
    except BaseException as err:  # torch.distributed.checkpoint wraps a refused sharded checkpoint in one
        from flexbert.checkpoints.safe_unpickle import checkpoint_refusal

        if checkpoint_refusal(err) is None:
            raise
        print(f"error: {checkpoint_refusal(err)}", file=sys.stderr)
        return _refused()
    rank0 = _global_rank() == 0
    reset_time = plan.reset_time
    if rank0 and trainer.state.timestamp.batch > 0 and not reset_time:
        from flexbert.train.run_summary import resume_line

        checkpoint, how = ((Path(plan.resume_checkpoint).resolve(), "autoresume") if plan.resuming
                           else (cfg.load_path, "load_path"))
        print(resume_line(checkpoint, int(trainer.state.timestamp.batch), how), flush=True)
    try:
        if not fit(trainer, cfg, reset_time):
            print(f"nothing to do: the loaded checkpoint (autoresume's, or load_path's when reset_time is off) is "
                  f"already at max_duration {trainer.state.max_duration}")
            trainer.close()
    except (FloatingPointError, DataError, CheckpointSaveError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        print(_peer_error_line(err), file=sys.stderr)
        return 1
    if rank0:
        from flexbert.train.run_summary import closing_lines

        print("\n".join(closing_lines(plan.save_folder, int(trainer.state.timestamp.batch),
                                       cfg.tokenizer())), flush=True)
    return 0
