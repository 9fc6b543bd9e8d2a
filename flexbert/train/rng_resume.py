"""Resume every random stream a training step consumes, so a resumed run with dropout is bit-exact.

Composer saves each rank's RNG states in every checkpoint (`rng`: python `random`, numpy's global generator, torch
CPU and, when initialised, CUDA -- gathered from all ranks) and hands them back from `load_checkpoint`. It restores
them only when the resumed position is the start of an epoch, or while replaying the dataloader up to the saved
batch (`spin_dataloaders=True`). This trainer resumes the loader from its own saved position instead
(`spin_dataloaders=False`), so mid-epoch the saved states were never restored: dropout masks after a resume came from
a freshly seeded generator and the run diverged at the first step after the checkpoint.

`ResumeRngStates` takes the states Composer loaded and restores them at FIT_START on every rank, which is the moment
the uninterrupted run was at when it saved: nothing between the checkpoint and the next step's forward draws from a
global generator (the packed loader's shuffling and masking use their own generators keyed by seed, epoch and row,
whose position is part of the loader state). With no checkpoint loaded it does nothing.
"""

from __future__ import annotations

from typing import Any, Optional

from composer.core import Callback, State
from composer.loggers import Logger


class ResumeRngStates(Callback):
    def __init__(self) -> None:
        self._states: Optional[list[dict[str, Any]]] = None

    def take_from(self, trainer) -> None:
        """Own the per-rank RNG states that `trainer` loaded from its checkpoint (None: nothing was loaded).

        Composer keeps them in `Trainer._rng_state` until it restores them itself; taking them here means they are
        restored exactly once, by `fit_start`, whatever the resumed position is."""
        self._states, trainer._rng_state = trainer._rng_state, None

    def fit_start(self, state: State, logger: Logger) -> None:
        if self._states is not None:
            from composer.utils import reproducibility

            reproducibility.load_rng_state(self._states)
            self._states = None
