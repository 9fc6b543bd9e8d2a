"""What is checked about a checkpoint before Composer loads the training state from it.

Composer loads the model, optimizer and scheduler state inside `Trainer()`; a checkpoint that does not fit fails
there with torch's first `size mismatch` (a page of traceback) or a bare `KeyError: 'lr_lambdas'`. These checks read
the same file first (memory-mapped, through the safe loader) and say what is wrong in one message:
- `check_intact`: a `load_path` file whose bytes fail their checksums is refused (autoresume skips such a file and
  takes the previous checkpoint: `crash_safe.find_resume_checkpoint`);
- `check_resume_fits`: the checkpoint autoresume found in the save folder must fit the model the run file describes
  (every missing, unexpected and mis-shaped tensor listed, as for `load_path`);
- `check_training_state`: the optimizer and scheduler states have the entries torch's `load_state_dict` reads;
- `missing_training_state`: a checkpoint without optimizer state (written with `save_weights_only: true`, or by a
  converter) loads with fresh Adam moments: one warning says so; autoresume refuses a weights-only checkpoint,
  which holds no step count either and would restart the run at step 0 over its own checkpoints and metrics;
- `resumed_hyperparameter_notes`: autoresume continues the run as it was saved -- the checkpoint's learning rate and
  weight decay win over values changed in the run file since; one line says so for each changed value.
"""

from __future__ import annotations

import math
import zipfile
from typing import Any, Mapping

import torch

from flexbert.checkpoints.loading import CheckpointError, load_checkpoint_file, mismatch_message

MODEL_PREFIX = "model."


# LambdaLR entries newer torch writes and its load_state_dict does not need (it updates the scheduler's attributes
# from what is there and keeps the default for the rest): torch >= 2.9 writes `_is_initial`, torch 2.7 does not, and
# a torch 2.7 checkpoint resumes under torch 2.11.
_OPTIONAL_SCHEDULER_KEYS = frozenset({"_is_initial"})


def _required_keys() -> dict[str, set[str]]:
    """The entries torch's own optimizer / LambdaLR (what Composer compiles every schedule to) state dicts hold."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {"optimizer": set(optimizer.state_dict()), "LambdaLR": set(scheduler.state_dict()) - _OPTIONAL_SCHEDULER_KEYS}


def check_resume_fits(path: str, composer_model: torch.nn.Module) -> None:
    from flexbert.checkpoints.keys import state_dict_mismatches

    state = load_checkpoint_file(path)["state"]["model"]
    missing, unexpected, misshaped = state_dict_mismatches(composer_model, state)
    if missing or unexpected or misshaped:
        hint = ("the save folder holds a run of another architecture: autoresume continues a run as it was saved, so "
                "restore the model_config it was trained with, or choose another save_folder (load_path starts a new "
                "phase from it)")
        raise CheckpointError(mismatch_message(f"autoresume from {path}", missing, unexpected, misshaped, hint))


def check_intact(path: str) -> None:
    """Every member of the file matches its CRC-32 (torch loads flipped tensor bytes without complaint)."""
    from flexbert.checkpoints.safe_unpickle import damaged_member

    problem = damaged_member(path) if zipfile.is_zipfile(path) else None
    if problem:
        raise CheckpointError(f"{path}: damaged checkpoint: {problem}; use an earlier checkpoint of the run")


def _weights_alone(path: str, autoresume: bool) -> str:
    """How to start from a checkpoint's weights alone: autoresume takes no load_weights_only (Composer loads the
    whole state of the run's own checkpoint), so there it takes a new phase."""
    if autoresume:
        return (f"autoresume cannot continue from it: move it out of the save folder (autoresume then takes the "
                f"previous checkpoint), or start a new phase from its weights with autoresume: false, "
                f"load_path: {path}, load_weights_only: true and another save_folder")
    return "set load_weights_only: true to take the weights alone (the schedule and optimizer moments then start fresh)"


def check_training_state(path: str, autoresume: bool = False) -> None:
    state = load_checkpoint_file(path)["state"]
    required = _required_keys()
    for section, kind in (("optimizers", "optimizer"), ("schedulers", None)):
        entries = state.get(section) or {}
        if not isinstance(entries, Mapping):
            raise CheckpointError(f"{path}: state.{section} is a {type(entries).__name__}, not a mapping: the "
                                  f"checkpoint is damaged; {_weights_alone(path, autoresume)}")
        for name, value in entries.items():
            needed = required.get(kind or name, set())
            missing = sorted(needed - set(value)) if isinstance(value, Mapping) else sorted(needed)
            if missing:
                raise CheckpointError(
                    f"{path}: state.{section}.{name} lacks {', '.join(missing)}: the {kind or 'scheduler'} state is "
                    f"damaged or was written by other code; {_weights_alone(path, autoresume)}")


def missing_training_state(path: str, autoresume: bool) -> str | None:
    """A warning when the checkpoint holds no optimizer state (None when it does); raises for autoresume from a
    weights-only checkpoint (no step count: Composer would restart the run at step 0 from it)."""
    state = load_checkpoint_file(path)["state"]
    if autoresume and "timestamp" not in state:
        raise CheckpointError(
            f"autoresume from {path}: the checkpoint holds the weights alone (saved with save_weights_only: true): no "
            f"step count, optimizer or schedule to continue from, so the run would restart at step 0 over its own "
            f"checkpoints and metrics; to train on from these weights start a new phase: autoresume: false, "
            f"load_path: {path}, load_weights_only: true and another save_folder")
    optimizers = state.get("optimizers")
    if isinstance(optimizers, Mapping) and any(isinstance(o, Mapping) and o.get("state") for o in optimizers.values()):
        return None
    if autoresume:
        return (f"autoresume from {path}: the checkpoint holds no optimizer state: the Adam moments start fresh "
                f"(the step count and schedule continue)")
    return (f"load_path {path} holds no optimizer state: the Adam moments start fresh (set load_weights_only: true "
            f"to start from its weights alone and silence this)")


def _saved_hyperparameters(state: Mapping[str, Any]) -> dict[str, float]:
    saved: dict[str, float] = {}
    lrs = [lr for s in (state.get("schedulers") or {}).values() if isinstance(s, Mapping) for lr in s.get("base_lrs", [])]
    groups = [g for o in (state.get("optimizers") or {}).values() if isinstance(o, Mapping)
              for g in o.get("param_groups", []) if isinstance(g, Mapping)]
    lrs = lrs or [g["initial_lr"] for g in groups if "initial_lr" in g]
    if lrs:
        saved["lr"] = float(max(lrs))
    decays = [float(g["weight_decay"]) for g in groups if "weight_decay" in g]
    if decays:
        saved["weight_decay"] = max(decays)
    return saved


def resumed_hyperparameter_notes(path: str, optimizer_cfg: Mapping[str, Any] | None) -> list[str]:
    saved = _saved_hyperparameters(load_checkpoint_file(path)["state"])
    notes = []
    for key, value in saved.items():
        given = (optimizer_cfg or {}).get(key)
        if isinstance(given, (int, float)) and not math.isclose(float(given), value, rel_tol=1e-9, abs_tol=0.0):
            notes.append(
                f"optimizer.{key} is {given} in the run file but the checkpoint autoresume continues from was trained "
                f"with {value}: the checkpoint's value is used (autoresume continues a run as it was saved; to change "
                f"it, start a new phase with load_path: {path} and restart_override: true)")
    return notes


def check_resume(path: str, composer_model: torch.nn.Module, optimizer_cfg: Mapping[str, Any] | None,
                 announce: bool) -> None:
    """All of the above for the checkpoint autoresume will load; `announce` (rank 0) prints the notes."""
    import sys
    import warnings
    from pathlib import Path

    path = str(Path(path).resolve())  # the checkpoint file itself, not the `latest` link that names it
    check_resume_fits(path, composer_model)
    check_training_state(path, autoresume=True)
    warning = missing_training_state(path, autoresume=True)
    if announce and warning:
        warnings.warn(warning)
    if announce:
        for note in resumed_hyperparameter_notes(path, optimizer_cfg):
            print(f"note: {note}", file=sys.stderr)
