"""`RunPlan`: a training run resolved once -- every default and derived number decided, every cheap object built.

`flexbert.train.validate.validate_run(cfg)` turns a `RunConfig` into a plan: batch sizes per rank and microbatches,
the mask rate of each loader, the model config (`pretrained_configs.resolve_model_config`) and its parameter count,
the start (fresh, autoresume, a new phase from load_path, weights, grown), precision, max_duration, the
sequence-length warmup, and the tokenizer, schedule, callbacks, algorithms and loggers themselves. The builders in
`flexbert.train.trainer.build_trainer` construct from the plan and never decide a default again nor rebuild what
the plan holds; `python main.py RUN.yaml --dry-run` prints `summary()`.

The model is constructed once. A dry-run (or a sweep's pre-flight) builds it on the meta device: shapes and the
parameter count, no memory, and `model` stays None. A real start asks `validate_run(..., build_weights=True)`: the
same construction happens on the real device, seeded with the run's seed, and the plan keeps that model for the
Trainer -- every check that needs a model (checkpoint fit, pretrained weights) runs on it, and no second copy is
made. Loaders are not in the plan: they read data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from flexbert.data.loader import LoaderConfig
from flexbert.train.run_config import RunConfig


@dataclass
class LoaderPlan:
    """One loader as the run will build it: its section (mask rate filled in) and its batch numbers in sequences."""

    section: LoaderConfig
    device_batch: int  # sequences per rank per step
    microbatch: int  # sequences per forward pass (one packed row)

    @property
    def mask_rate(self) -> float:
        return self.section.dataset.mlm_probability

    def describe_data(self) -> list[str]:
        from flexbert.data.mixture import describe, parse_epoch_size

        ds = self.section.dataset
        return describe(ds.streams, local=ds.local, remote=ds.remote, split=ds.split, seed=ds.shuffle_seed,
                        epoch_size=parse_epoch_size(ds.epoch_size, "epoch_size"))


@dataclass
class RunPlan:
    """What a validated run will do."""

    cfg: RunConfig
    tokenizer: Any
    model_config: Any  # the FlexBertConfig the model is built from
    params: int
    world_size: int
    train: LoaderPlan
    eval: Optional[LoaderPlan]
    max_duration: Any  # composer Time
    resuming: bool  # autoresume will load this run's own checkpoint
    resume_checkpoint: Optional[str]  # the checkpoint autoresume loads (resuming only)
    phase_start: bool  # load_path given and not resuming: a new phase from another run's checkpoint
    reset_time: bool  # a phase start that restarts the clock (reset_time / reset_time_once)
    load_path: Optional[str]
    checkpoint_config: Optional[dict]  # architecture embedded in load_path (phase start only)
    precision: str
    save_folder: Optional[str]
    scheduler: Any
    callbacks: list = field(default_factory=list)  # the run file's `callbacks`, built
    algorithms: list = field(default_factory=list)  # the run file's `algorithms` that Composer applies
    loggers: list = field(default_factory=list)  # the run file's `loggers` plus metrics.jsonl
    seq_len_warmup: Any = None  # the training loader's sequence-length schedule (algorithms.seq_warmup)
    model: Any = None  # the FlexBertComposerModel with real weights (build_weights=True only)

    @property
    def device_train_batch(self) -> int:
        return self.train.device_batch

    def summary(self) -> str:
        cfg = self.cfg
        tokens_per_step = cfg.global_train_batch_size * cfg.max_seq_len
        train = self.train
        lines = [
            f"run file     {cfg.source}",
            f"run name     {cfg.run_name}",
            f"model        {self.params / 1e6:.2f}M parameters ({self.params:,})",
            f"batch        {cfg.global_train_batch_size} sequences x {cfg.max_seq_len} tokens = "
            f"{tokens_per_step:,} token slots per step ({train.device_batch} per rank in microbatches of "
            f"{train.microbatch}, world size {self.world_size})",
            f"masking      train {train.mask_rate:g}"
            + (f", eval {self.eval.mask_rate:g}" if self.eval is not None else ""),
        ]
        if self.eval is not None:
            lines.append(f"eval batch   {self.eval.device_batch} per rank in microbatches of {self.eval.microbatch}")
        for name, loader in (("train", self.train), ("eval", self.eval)):
            if loader is not None:
                described = loader.describe_data()
                lines.append(f"data         {name}: {described[0]}")
                lines += [f"             {line}" for line in described[1:]]
        lines += [
            f"duration     {cfg.max_duration} ({self._steps(tokens_per_step)})",
            f"precision    {self.precision}",
        ]
        warmup = self.seq_len_warmup
        if warmup is not None:
            end = min(warmup.max_length, cfg.max_seq_len)
            lines.append(f"seq warmup   sequences of at most {min(warmup.min_length, end)} -> {end} tokens over the "
                         f"first {warmup.warmup_span:,}{warmup.unit} "
                         f"({'cut' if warmup.truncate else 'continued'} beyond)")
        if self.resuming:
            lines.append(f"start        autoresume from {self.save_folder}")
        elif self.phase_start:
            reset = "schedule and data from zero" if self.reset_time else "time continues"
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

    def _steps(self, tokens_per_step: int) -> str:
        from composer.core import TimeUnit

        time = self.max_duration
        if time.unit == TimeUnit.BATCH:
            return f"{time.value:,} steps"
        if time.unit == TimeUnit.TOKEN:
            return f"about {time.value / tokens_per_step:,.0f} steps at full batch"
        if time.unit == TimeUnit.SAMPLE:
            return f"about {time.value / self.cfg.global_train_batch_size:,.0f} steps"
        return str(time.unit.value)
