"""Check one variant's run config without training, and count its parameters.

A variant is checked by `flexbert.train.validate.validate_run` -- the function every run calls before it starts --
so a variant that passes here starts; for the world size the sweep's launcher will give it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence


@dataclass
class Validation:
    cfg: Optional[Any]  # the typed run config (None when it could not be loaded)
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


def validate_variant(base: Path, overrides: Sequence[str], world_size: int = 1) -> Validation:
    """Load `base` with `overrides` exactly as main.py would and validate the run; errors become a message."""
    import warnings

    from flexbert.train.run_config import load_run_config
    from flexbert.train.validate import validate_run

    cfg = None
    try:
        cfg = load_run_config(base, list(overrides))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are shown once, by the run itself
            plan = validate_run(cfg, world_size)
        return Validation(cfg, plan.params, None)
    except Exception as err:  # whatever stops the check would stop the run: report it, do not end the sweep
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return Validation(cfg, None, f"{type(err).__name__}: {message}")
