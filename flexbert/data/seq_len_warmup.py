"""Sequence-length warmup: the longest sequence a training batch may hold at a given point of training.

Run-file section `algorithms.seq_warmup` (the reference framework's name; `algorithms.seq_length_warmup`, Composer's
name, is the same thing). The schedule is Composer's SeqLengthWarmup: the length starts at `min_seq_length` and
grows by `step_size` at evenly spaced points of the first `duration` fraction of max_duration, until it reaches
`max_seq_length`; it never exceeds the run's `max_seq_len`.

Why the loader applies it instead of Composer's algorithm: Composer's SeqLengthWarmup cuts the batch after the
trainer has counted its tokens (a `tok` max_duration would count tokens that are never trained on), only accepts
max_duration in ba or ep, and cuts a padded (batch, seq) tensor, which for packed rows would cut every document
after the first ones. Here each document piece is cut to the current length before packing, rows hold
`microbatch_size x length` slots, so a step holds as many sequences as it always does, each at most `length`
tokens, and the token clock counts what is trained.

`truncate: true` (Composer's default): a sequence keeps its first `length` tokens and the rest of it is dropped
(a document longer than max_seq_len is first cut into max_seq_len pieces when split_long_documents is on).
`truncate: false`: the rest of the document continues in further sequences of at most `length` tokens, as
Composer's reshape does, but without joining two documents into one sequence.

The clock is the loader's own count in max_duration's unit, part of its checkpointed state, so the schedule resumes
exactly: `ba` -- batches handed out; `sp` -- sequence slots (rows x microbatch_size x world size); `tok` -- this
rank's token count (pad slots included when count_padding_tokens) x world size, which is Composer's token clock
when pad slots count and within a few tokens per step of it otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

from flexbert import schema

CLOCK_UNITS = ("ba", "sp", "tok")


@dataclass
class SeqLenWarmupConfig:
    """`algorithms.seq_warmup`: Composer SeqLengthWarmup's settings, applied by the training loader."""

    duration: float = schema.field(0.3, doc="fraction of max_duration over which the length grows")
    min_seq_length: Optional[int] = schema.field(None, doc="first length (default 8)")
    max_seq_length: Optional[int] = schema.field(None, doc="length at the end of the warmup (default 1024; capped "
                                                           "by the run's max_seq_len)")
    min_seq_len: Optional[int] = schema.field(None, doc="same as min_seq_length (the reference run files' spelling)")
    max_seq_len: Optional[int] = schema.field(None, doc="same as max_seq_length (the reference run files' spelling)")
    step_size: int = schema.field(8, doc="tokens added at each growth point")
    truncate: bool = schema.field(True, doc="true: drop what is beyond the length; false: continue the document in "
                                            "further sequences")
    preserve_end_of_sequence: bool = schema.field(False, doc="not supported: true is refused")

    def __post_init__(self):
        if self.preserve_end_of_sequence:
            raise schema.ConfigError("`preserve_end_of_sequence: true` is not supported: a cut sequence keeps its "
                                     "first tokens; remove the key")
        for short, long in (("min_seq_len", "min_seq_length"), ("max_seq_len", "max_seq_length")):
            if getattr(self, short) is not None and getattr(self, long) is not None:
                raise schema.ConfigError(f"`{short}` and `{long}` are the same setting; keep one")
        if not 0.0 <= self.duration <= 1.0:
            raise schema.ConfigError(f"`duration` is a fraction of max_duration in [0, 1], got {self.duration}")
        if self.step_size < 1 or self.min_length < 1:
            raise schema.ConfigError(f"`step_size` and `min_seq_length` must be >= 1, got {self.step_size} and "
                                     f"{self.min_length}")
        if self.max_length - self.min_length < self.step_size:
            raise schema.ConfigError(f"the length must grow by at least one step: max_seq_length ({self.max_length}) "
                                     f"- min_seq_length ({self.min_length}) < step_size ({self.step_size})")

    @property
    def min_length(self) -> int:
        return next(v for v in (self.min_seq_length, self.min_seq_len, 8) if v is not None)

    @property
    def max_length(self) -> int:
        return next(v for v in (self.max_seq_length, self.max_seq_len, 1024) if v is not None)


@dataclass(frozen=True)
class SeqLenWarmup:
    """length_at(clock) -> the longest sequence of the next batch; `clock` counts in `unit` (see module docstring)."""

    min_length: int
    max_length: int  # the schedule's end, as configured
    step_size: int
    warmup_span: int  # clock units over which the length grows (duration x max_duration)
    unit: str
    run_max_seq_len: int  # no sequence is ever longer
    truncate: bool = True

    def __post_init__(self):
        if self.unit not in CLOCK_UNITS:
            raise ValueError(f"sequence-length warmup counts in one of {CLOCK_UNITS}, got {self.unit!r}")

    @classmethod
    def from_config(cls, section: SeqLenWarmupConfig, max_duration_value: int, max_duration_unit: str,
                    run_max_seq_len: int, warn: bool = True) -> "SeqLenWarmup":
        if max_duration_unit not in CLOCK_UNITS:
            raise schema.ConfigError(f"`algorithms.seq_warmup` needs max_duration in {', '.join(CLOCK_UNITS)}, got "
                                     f"{max_duration_value}{max_duration_unit}")
        warmup = cls(section.min_length, section.max_length, section.step_size,
                     int(max_duration_value * section.duration), max_duration_unit, run_max_seq_len, section.truncate)
        if warn and section.min_length >= run_max_seq_len:
            warnings.warn(f"algorithms.seq_warmup does nothing: min_seq_length ({section.min_length}) >= max_seq_len "
                          f"({run_max_seq_len})")
        elif warn and section.max_length != run_max_seq_len:
            end = (f"reaches max_seq_len ({run_max_seq_len}) before the end of its span" if
                   section.max_length > run_max_seq_len else
                   f"keeps every sequence at most {section.max_length} tokens to the end of training, "
                   f"below max_seq_len ({run_max_seq_len})")
            warnings.warn(f"algorithms.seq_warmup: max_seq_length ({section.max_length}) differs from max_seq_len "
                          f"({run_max_seq_len}): the length {end}")
        return warmup

    def length_at(self, clock: int) -> int:
        # Composer's formula: (max - min) // step growth points, one every (span // points) clock units. With a span
        # shorter than the number of points, Composer divides by zero; here each point then takes one clock unit.
        if self.warmup_span <= 0:
            length = self.max_length
        else:
            every = max(1, self.warmup_span // ((self.max_length - self.min_length) // self.step_size))
            length = min(self.min_length + self.step_size * (clock // every), self.max_length)
        return min(length, self.run_max_seq_len)

    def fingerprint(self) -> dict:
        return {"min_length": self.min_length, "max_length": self.max_length, "step_size": self.step_size,
                "warmup_span": self.warmup_span, "unit": self.unit, "truncate": self.truncate}
