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
whose position is part of the loader state). With no checkpoint loaded it does nothing. A checkpoint of another world
size (an elastic resume) restores the states of the ranks that exist in both and says so in one line.
"""

from __future__ import annotations

import warnings
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
            from composer.utils import dist, reproducibility

            saved, world_size = len(self._states), dist.get_world_size()
            with warnings.catch_warnings():
                if saved != world_size:  # said once below, in one line, instead of Composer's paragraph per rank
                    warnings.filterwarnings("ignore", message=r"\s*The current world size")
                    if dist.get_global_rank() == 0:
                        warnings.warn(resized_rng_note(saved, world_size))
                reproducibility.load_rng_state(self._states)
            self._states = None


def resized_rng_note(saved: int, world_size: int) -> str:
    """What an elastic resume does with the random states of the old ranks."""
    kept = min(saved, world_size)
    rest = (f"{_ranks(kept, world_size)} keep the generators seeded at start" if world_size > saved
            else f"the states of old {_ranks(kept, saved)} are dropped")
    verb = "restores" if kept == 1 else "restore"
    return (f"the checkpoint holds the random states of {saved} ranks, this run has {world_size}: {_ranks(0, kept)} "
            f"{verb} those of the same rank and {rest}; random draws after the resume (dropout) differ from an "
            f"uninterrupted {saved}-rank run")


def _ranks(first: int, end: int) -> str:
    return f"rank {first}" if end - first == 1 else f"ranks {first}..{end - 1}"
