"""Batch-size warmup: how many packed rows a device batch holds at a given point of training.

ModernBERT warms the batch size up from 1 microbatch per device to full over 50B tokens, each size getting
about the same number of steps. Schema keys: `train_loader.batch_size_warmup_min_size`
(sequences per device, ModernBERT sets it to `${device_train_microbatch_size}`) and
`train_loader.batch_size_warmup_tokens` (a Composer time string such as '50_000_000_000tok').

One packed row = one microbatch = `microbatch_size` sequence slots, so sizes move in steps of one row.
During warmup the sizes min_rows, min_rows+1, ..., full_rows-1 each get a slice of the token budget
proportional to the size; a step of size r consumes about r rows of tokens, so every size lasts about
the same number of optimizer steps. After the budget the size is full_rows.

The clock is global sequence slots handed out (rows x microbatch_size x max_seq_len x world_size), not tokens
read: every rank must take the same number of rows at every step (under FSDP a rank with one microbatch more
would wait forever in its weight gathers), and the real-token count of a rank depends on which documents it
read. Slots advance identically on every rank, so every rank reaches each boundary at the same step without
communicating. With packing, real tokens are > 99% of slots, so the budget ends within about 1% of where
Composer's token clock would put it (earlier: padding counts). The counter is part of the loader's state, so the
schedule resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rows_per_device(global_batch_size: int, world_size: int, microbatch_size: int) -> int:
    """Full packed rows per device per step: global_train_batch_size / (world_size * microbatch)."""
    per_step = world_size * microbatch_size
    if global_batch_size <= 0 or global_batch_size % per_step:
        raise ValueError(
            f"global_train_batch_size ({global_batch_size} sequences) must be a positive multiple of "
            f"world_size x device_train_microbatch_size = {world_size} x {microbatch_size} = {per_step}: "
            f"each device step is a whole number of packed rows of {microbatch_size} sequences"
        )
    return global_batch_size // per_step


def parse_tokens(value: int | str | None, key: str = "batch_size_warmup_tokens") -> int:
    """'50_000_000_000tok' (or a plain int) -> 50000000000; None -> 0 (no warmup)."""
    if value is None:
        return 0
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        tokens = int(value)
    elif isinstance(value, str):
        from composer.core import TimeUnit

        from flexbert.duration import parse_duration

        t = parse_duration(key, value)
        if t.unit != TimeUnit.TOKEN:
            raise ValueError(f"`{key}` must be in tokens ('...tok'), got {value!r} in unit {t.unit.value}")
        tokens = int(t.value)
    else:
        raise TypeError(f"`{key}` must be a time string like '50_000_000_000tok', got {value!r}")
    if tokens < 0:
        raise ValueError(f"`{key}` must be >= 0, got {value!r}")
    return tokens


@dataclass(frozen=True)
class BatchSizeWarmup:
    """rows_at(tokens) -> packed rows per device for the next step."""

    min_rows: int
    full_rows: int
    warmup_tokens: int  # global tokens over which the size grows; 0 = no warmup

    def __post_init__(self):
        if not 1 <= self.min_rows <= self.full_rows:
            raise ValueError(f"batch-size warmup needs 1 <= min_rows <= full_rows, got "
                             f"min_rows={self.min_rows}, full_rows={self.full_rows}")
        # Token budget boundaries: size min_rows + k is used while
        # bounds[k] <= tokens < bounds[k + 1]; slices are proportional to the size (equal steps).
        sizes = np.arange(self.min_rows, self.full_rows, dtype=np.float64)
        cum = np.concatenate([[0.0], np.cumsum(sizes)])
        object.__setattr__(self, "_bounds", cum / cum[-1] * self.warmup_tokens if len(sizes) else cum)

    @classmethod
    def from_config(cls, min_size: int | None, warmup_tokens: int | str | None, *, microbatch_size: int,
                    full_rows: int) -> "BatchSizeWarmup":
        """min_size in sequences per device (a multiple of the microbatch size); None = no warmup."""
        tokens = parse_tokens(warmup_tokens)
        if min_size is None or tokens == 0:
            return cls(full_rows, full_rows, 0)
        if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size <= 0 \
                or min_size % microbatch_size:
            raise ValueError(
                f"`batch_size_warmup_min_size` ({min_size!r} sequences per device) must be a positive multiple "
                f"of the device microbatch size ({microbatch_size}): a packed row holds one microbatch"
            )
        min_rows = int(min_size) // microbatch_size
        if min_rows > full_rows:
            raise ValueError(f"`batch_size_warmup_min_size` ({min_size} sequences) exceeds the device batch "
                             f"({full_rows * microbatch_size} sequences = {full_rows} rows)")
        return cls(min_rows, full_rows, tokens)

    def rows_at(self, tokens: int) -> int:
        if self.warmup_tokens == 0 or tokens >= self.warmup_tokens or self.min_rows == self.full_rows:
            return self.full_rows
        k = int(np.searchsorted(self._bounds, tokens, side="right")) - 1
        return self.min_rows + min(max(k, 0), self.full_rows - self.min_rows - 1)
