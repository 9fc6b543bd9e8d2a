"""The run file, typed: every key of the FlexBERT run-file schema declared once, with type, default and doc.

`load_run_config(path, overrides)` reads YAML <- `key.sub=value` overrides, resolves `${...}` interpolation, checks
the model class and the kind of file first, fills `{name}` placeholders from the file's own top-level variables,
and returns a `RunConfig` whose sections are typed too (`ModelSection`, `LoaderConfig`, `OptimizerConfig`,
`SchedulerConfig`, `InitFromCheckpointConfig`). Defaults are the reference framework's wherever it had one, so
a run file written for it means the same run here; our own recipes set what they want explicitly.

Top-level keys that are not in the schema are "free variables" when the file uses them -- as `${name}` (OmegaConf)
or as a `{name}` placeholder inside a string (`load_path: checkpoints/{pretrain_run_name}/latest-rank0.pt`);
the placeholder is filled from the variable. Any other unknown key fails naming the closest valid one.
`python main.py --help-config` prints the schema.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from flexbert import duration
from flexbert.checkpoints.loading import InitFromCheckpointConfig
from flexbert.config import DEFAULT_PRETRAINED_MODEL_NAME, check_model_config, read_old_names
from flexbert.data.loader import LoaderConfig
from flexbert.data.masking import EVAL_MLM_PROBABILITY, TRAIN_MLM_PROBABILITY
from flexbert.optim.builders import OptimizerConfig, SchedulerConfig
from flexbert.registry import closest
from flexbert.schema import ConfigError, coerce, field, is_mapping, read_section
from flexbert.yaml_file import load_config_file


class RunConfigError(ConfigError):
    """A run file problem; the message names the key (and file) and the fix."""


DURATION_KEYS = ("max_duration", "eval_interval", "save_interval", "console_log_interval")


@dataclass
class ModelSection:
    """`model`: which encoder to build and from what."""

    name: str = field("flex_bert", doc="model class; this project builds `flex_bert` encoders")
    pretrained_model_name: Optional[str] = field(
        DEFAULT_PRETRAINED_MODEL_NAME, doc="the config whose values are the defaults of model_config (built-in presets: "
        "bert-base-uncased, bert-large-uncased, prajjwal1/bert-tiny, answerdotai/ModernBERT-base/-large; or a local "
        "folder with config.json)")
    tokenizer_name: Optional[str] = field(None, doc="tokenizer (local folder or Hub name) when top-level tokenizer_name is unset")
    disable_train_metrics: bool = field(False, doc="skip training-set metrics (faster: no logits in training steps)")
    recompute_metric_loss: bool = field(
        False, doc="LanguageCrossEntropy recomputed per token from the logits (true) or the mean of the batches' "
        "training losses, label smoothing and z-loss included (false)")
    pretrained_checkpoint: Optional[str] = field(None, doc="Composer checkpoint whose model weights initialise the model")
    model_config: dict = field(default_factory=dict, doc="keys over the pretrained_model_name config; each listed below as "
                               "model.model_config.KEY")
    gradient_checkpointing: bool = field(False, doc="recompute each encoder layer in the backward pass (less memory); "
                                                    "with FSDP use fsdp_config.activation_checkpointing")
    use_pretrained: bool = field(False, doc="hf_bert models only: Hub weights; true is refused (use pretrained_checkpoint)")

    def __post_init__(self):
        self.model_config = check_model_config(self.model_config, "model_config", ConfigError)
        if self.use_pretrained:
            raise ConfigError("`use_pretrained: true` loads Hub weights into Hugging Face BERT models (model.name "
                              "hf_bert), which this project does not build; to start from weights, set "
                              "model.pretrained_checkpoint (a Composer checkpoint) or load_path")


@dataclass
class RunConfig:
    """A whole run file."""

    # data
    data_local: Optional[str] = field(None, doc="MDS folder (train/ and validation/ splits); default of each loader's dataset.local")
    data_remote: Optional[str] = field(None, doc="object-store URI to stream from (data_local is then the cache)")
    max_seq_len: int = field(1024, doc="tokens per sequence slot")
    tokenizer_name: Optional[str] = field(None, doc="tokenizer: a local folder or a Hub name")
    mlm_probability: float = field(TRAIN_MLM_PROBABILITY, doc=f"training mask rate (evaluation: the eval dataset's, "
                                                              f"default {EVAL_MLM_PROBABILITY})")
    count_padding_tokens: bool = field(True, doc="pad slots count in the token clock (`tok` durations)")
    run_name: Optional[str] = field(None, doc="run id, used by `{run_name}` in save_folder and by autoresume; "
                                               "default $COMPOSER_RUN_NAME, else 'bert'")
    model: ModelSection = field(default_factory=ModelSection, doc="the encoder")
    train_loader: Optional[LoaderConfig] = field(None, doc="training data")
    eval_loader: Optional[LoaderConfig] = field(None, doc="evaluation data")
    scheduler: Optional[SchedulerConfig] = field(None, doc="learning-rate schedule")
    optimizer: Optional[OptimizerConfig] = field(None, doc="optimizer")
    # durations and batch sizes
    max_duration: Optional[Any] = field(None, doc="training length: 1000ba, 10_000_000tok, 100000sp, 1ep")
    eval_interval: Any = field("1ep", doc="evaluate every ...")
    eval_subset_num_batches: int = field(-1, doc="batches per evaluation (-1: the whole eval set)")
    eval_first: bool = field(False, doc="evaluate once before the first training step of a fresh run")
    train_subset_num_batches: int = field(-1, doc="batches per epoch (-1: all)")
    global_train_batch_size: Optional[int] = field(None, doc="sequences per optimizer step, all ranks")
    global_eval_batch_size: Optional[int] = field(None, doc="sequences per eval step, all ranks (default: global_train_batch_size)")
    device_train_microbatch_size: Optional[int] = field(None, doc="sequences per forward pass per rank (one packed row)")
    device_eval_batch_size: Optional[int] = field(None, doc="sequences per eval step per rank (default: global_eval_batch_size / world size)")
    device_eval_microbatch_size: Optional[int] = field(
        None, doc="sequences per eval forward pass (default: device_train_microbatch_size, at most the eval batch)")
    # system
    seed: int = field(17, doc="seed of weights, data order and masking")
    precision: Optional[str] = field(None, doc="fp32, amp_bf16, amp_fp16, ... (default: amp_bf16 on GPU, fp32 on CPU)")
    device: Optional[str] = field(None, doc="cpu or gpu (default: gpu when available)")
    dist_timeout: float = field(600.0, doc="seconds a collective may wait")
    python_log_level: Optional[str] = field(None, doc="python logging level (debug, info, ...)")
    # logging
    progress_bar: bool = field(False, doc="Composer's progress bar")
    log_to_console: bool = field(True, doc="metrics to the console")
    console_log_interval: Any = field("1ba", doc="console logging interval")
    callbacks: dict = field(default_factory=dict, doc="name -> settings (`python -m flexbert.list_registries` lists them)")
    algorithms: dict = field(default_factory=dict, doc="Composer algorithms by snake_case name -> settings; "
                                                        "seq_warmup (sequence-length warmup) is applied by the loader")
    loggers: dict = field(default_factory=dict, doc="wandb: {project, entity, ...} (offline without an account)")
    # checkpoints
    save_folder: Optional[str] = field(None, doc="checkpoint folder; `{run_name}` is filled in")
    save_interval: Any = field("1000ba", doc="checkpoint every ...")
    save_num_checkpoints_to_keep: int = field(-1, doc="-1 keeps all")
    save_overwrite: bool = field(False, doc="replace existing checkpoints of the same name")
    save_weights_only: bool = field(False, doc="checkpoints without optimizer / schedule state")
    load_path: Optional[str] = field(None, doc="checkpoint to start from (a new phase: see reset_time, restart_override)")
    load_weights_only: bool = field(False, doc="take only the weights from load_path")
    load_strict_model_weights: bool = field(True, doc="load_path must match the model exactly")
    autoresume: bool = field(False, doc="resume from this run's own latest checkpoint in save_folder if there is one")
    reset_time: bool = field(False, doc="a phase start: the schedule and data start at zero (never on autoresume)")
    reset_time_once: bool = field(False, doc="same as reset_time (the forks' name for a reset that autoresume does "
                                             "not repeat, which is what reset_time does here)")
    restart_override: bool = field(False, doc="a phase start: lr / weight decay come from this file, not the checkpoint")
    init_from_checkpoint: Optional[InitFromCheckpointConfig] = field(None, doc="grow from a smaller model")
    fsdp_config: Optional[dict] = field(None, doc="Composer FSDP settings (absent: DDP)")
    compile_config: Optional[dict] = field(None, doc="Composer torch.compile settings for the whole model")
    stop_on_nonfinite_loss: bool = field(True, doc="stop at a non-finite loss (naming the step)")
    max_nonfinite_skips: int = field(0, doc="skip up to N batches with a non-finite loss before stopping")
    # not YAML keys: where the file came from and its free variables
    source: str = field("run config", doc="(set by the loader) the file the config came from")
    variables: dict = field(default_factory=dict, doc="(set by the loader) the file's free top-level variables")

    # ---------------------------------------------------------------------------------------- derived values

    def tokenizer(self) -> Optional[str]:
        return self.tokenizer_name or self.model.tokenizer_name

    def resolved_save_folder(self) -> Optional[str]:
        if self.save_folder and self.run_name:
            return self.save_folder.replace("{run_name}", self.run_name)
        return self.save_folder

    @property
    def resets_time(self) -> bool:
        """A phase start from load_path restarts the clock (schedule, data, durations) at zero."""
        return self.reset_time or self.reset_time_once

    def loader(self, key: str) -> Optional[LoaderConfig]:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


SCHEMA_KEYS = [f.name for f in fields(RunConfig) if f.name not in ("source", "variables")]

# Keys of other tools' files: a precise message instead of "unknown key".
_EVAL_FILE_KEYS = {"tasks", "starting_checkpoint_load_path", "base_run_name", "default_seed", "default_seeds",
                   "parallel", "local_pretrain_checkpoint_folder", "save_finetune_checkpoint_folder",
                   "save_finetune_checkpoint_prefix", "default_trainer_kwargs"}
_FINETUNE_MODEL_NAMES = ("flex_bert_classification", "hf_classifier", "mosaic_bert_classification",
                         "flex_bert_sequence_classification")


# ---------------------------------------------------------------------------------------------- loading


_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _fill_placeholders(value: Any, variables: Mapping[str, Any]) -> Any:
    """`{name}` -> the variable's value in every string, for names that are the file's own variables only
    (Composer's own placeholders such as `{run_name}` and `{rank}` are left for Composer)."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), value)
    if isinstance(value, dict):
        return {k: _fill_placeholders(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_placeholders(v, variables) for v in value]
    return value


def _check_kind_of_file(raw: Mapping[str, Any], where: str) -> None:
    """The model class first, then other tools' files, before any unknown-key message could point elsewhere."""
    model = raw.get("model")
    name = model.get("name") if is_mapping(model) else None
    if name is not None and name != "flex_bert":
        if name in _FINETUNE_MODEL_NAMES:
            raise RunConfigError(f"{where}: `model.name: {name}` is a fine-tuning model; this file is a fine-tuning "
                                 f"config: run it with `python -m flexbert.eval {where}`")
        if name == "flex_gpt_to_bert":
            raise RunConfigError(f"{where}: `model.name: flex_gpt_to_bert` starts an encoder from a FlexBERT decoder's "
                                 f"checkpoint (the Ettin fork's cross-objective training), which this project cannot "
                                 f"read; start from an encoder checkpoint with model.name: flex_bert")
        raise RunConfigError(f"{where}: `model.name: {name}`: this project pretrains FlexBERT encoders "
                             f"(model.name: flex_bert); decoders and other model classes are not supported")
    eval_keys = sorted(_EVAL_FILE_KEYS & set(raw))
    if is_mapping(model) and "num_labels" in model:
        eval_keys.append("model.num_labels")
    if eval_keys:
        raise RunConfigError(f"{where}: has {', '.join(eval_keys)}: this is a fine-tuning / evaluation config, not "
                             f"a pretraining run file; run it with `python -m flexbert.eval {where}`")


def _fill_loader_defaults(raw: dict[str, Any]) -> None:
    """The top-level data keys are the defaults of each loader's dataset; training masks at mlm_probability,
    evaluation at EVAL_MLM_PROBABILITY unless its dataset says otherwise. Every loader leaves here with its rate."""
    train_rate = raw.get("mlm_probability")
    train_rate = TRAIN_MLM_PROBABILITY if train_rate is None else train_rate  # the key's declared default
    for key, split, rate in (("train_loader", "train", train_rate),
                             ("eval_loader", "validation", EVAL_MLM_PROBABILITY)):
        section = raw.get(key)
        if not is_mapping(section):
            continue
        if section.get("dataset") is None:
            section["dataset"] = {}
        dataset = section["dataset"]
        if not is_mapping(dataset):
            continue
        for name, value in (("local", raw.get("data_local")), ("remote", raw.get("data_remote")),
                            ("split", split), ("mlm_probability", rate)):
            if dataset.get(name) is None and value is not None:
                dataset[name] = value


def _sequence_length_from_dataset(raw: dict[str, Any]) -> None:
    """Without a top-level max_seq_len, the training dataset's is the run's: the reference's loader reads only
    `train_loader.dataset.max_seq_len` (the top-level key is a variable there), and run files rely on it."""
    loader = raw.get("train_loader")
    dataset = loader.get("dataset") if is_mapping(loader) else None
    if raw.get("max_seq_len") is None and is_mapping(dataset) and dataset.get("max_seq_len") is not None:
        raw["max_seq_len"] = dataset["max_seq_len"]


def _default_run_name(raw: dict[str, Any]) -> None:
    if raw.get("run_name") is None:
        raw["run_name"] = os.environ.get("COMPOSER_RUN_NAME") or "bert"
    name = str(raw["run_name"])
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise RunConfigError(f"`run_name: {name}` must be a plain name (it becomes a folder name): no '/', '\\', "
                             f"'.' or '..'")


def load_run_config(path: str | Path | None, overrides: Sequence[str] = (), base: Mapping | None = None) -> RunConfig:
    """Read, merge (`base` <- YAML file <- `key.sub=value` overrides), resolve and type a run file."""
    where = str(path) if path is not None else "run config"
    read = load_config_file(path, overrides, kind="run file", error=RunConfigError, base=base)
    raw, dollar, cli = read.values, read.referenced, read.override_keys
    _check_kind_of_file(raw, where)
    unknown = [k for k in raw if k not in SCHEMA_KEYS]
    placeholders = {m.group(1) for s in _strings({k: v for k, v in raw.items() if k not in unknown})
                    for m in _PLACEHOLDER.finditer(s)}
    for key in unknown:
        if key not in dollar and key not in placeholders:
            origin = "command line" if key in cli else where
            raise RunConfigError(
                f"{origin}: unknown top-level key `{key}`{closest(key, SCHEMA_KEYS)}. (A top-level variable is "
                f"allowed when the file uses it, as ${{{key}}} or as {{{key}}} inside a string.)")
    variables = {k: raw.pop(k) for k in unknown}
    raw = _fill_placeholders(raw, {k: v for k, v in variables.items() if v is not None})
    _default_run_name(raw)
    _sequence_length_from_dataset(raw)
    _fill_loader_defaults(raw)
    _legacy_aliases(raw)
    try:
        cfg = read_section(RunConfig, raw, "", RunConfigError)
    except ConfigError as err:
        raise RunConfigError(f"{where}: {err}") from None
    cfg.source, cfg.variables = where, variables
    check_durations(cfg)
    return cfg


def _legacy_aliases(raw: dict[str, Any]) -> None:
    """Old spellings the reference's run files still carry, mapped to today's key with a warning."""
    model = raw.get("model")
    if is_mapping(model) and "model_config" in model:
        model["model_config"] = read_old_names(model["model_config"], "model_config", RunConfigError)


# ---------------------------------------------------------------------------------------------- checks


def parse_duration(key: str, value: Any):
    """A Composer Time from a run-file duration, or a RunConfigError naming the key and the accepted forms."""
    return duration.parse_duration(key, value, RunConfigError)


# What each duration key is for, and how to turn that off instead of writing a zero: Composer takes a zero or
# negative interval silently and then never saves (not even the final checkpoint), never evaluates, never logs.
_NONE_INSTEAD = {
    "max_duration": "a run trains for a positive length, e.g. max_duration: 1000ba",
    "save_interval": "e.g. save_interval: 1000ba or 0.25dur; for no checkpoints leave save_folder unset",
    "eval_interval": "e.g. eval_interval: 1000ba or 0.25dur; for no evaluation leave eval_loader out",
    "console_log_interval": "e.g. console_log_interval: 100ba; for no console metrics set log_to_console: false",
}


def check_durations(cfg: RunConfig) -> None:
    for key in DURATION_KEYS:
        value = getattr(cfg, key)
        if value is not None:
            setattr(cfg, key, str(value) if not isinstance(value, str) else value)
            if parse_duration(key, value).value <= 0:
                raise RunConfigError(f"{cfg.source}: `{key}: {value}` must be positive; {_NONE_INSTEAD[key]}")


def require(cfg: RunConfig, *keys: str) -> None:
    for key in keys:
        if getattr(cfg, key) is None:
            raise RunConfigError(f"{cfg.source}: `{key}` is required")


def check_batch_sizes(cfg: RunConfig, world_size: int) -> tuple[int, int]:
    """(device_train_batch_size, device_eval_batch_size) in sequences; global sizes must divide by the world size."""
    require(cfg, "global_train_batch_size", "device_train_microbatch_size")
    glob, micro = cfg.global_train_batch_size, cfg.device_train_microbatch_size
    for key, value in (("global_train_batch_size", glob), ("device_train_microbatch_size", micro),
                       ("global_eval_batch_size", cfg.global_eval_batch_size),
                       ("device_eval_batch_size", cfg.device_eval_batch_size),
                       ("device_eval_microbatch_size", cfg.device_eval_microbatch_size)):
        if value is not None and value <= 0:
            raise RunConfigError(f"`{key}` must be a positive number of sequences, got {value}")
    if glob % world_size:
        raise RunConfigError(
            f"global_train_batch_size {glob} does not divide by the world size {world_size}: "
            f"use a multiple of {world_size * micro} (world size x device_train_microbatch_size)"
        )
    device_train = glob // world_size
    if device_train % micro:
        raise RunConfigError(
            f"global_train_batch_size {glob} / world size {world_size} = {device_train} sequences per device is not a "
            f"multiple of device_train_microbatch_size {micro} (a packed row holds one microbatch): "
            f"use a multiple of {world_size * micro}"
        )
    device_eval = cfg.device_eval_batch_size
    if device_eval is None:
        geval = cfg.global_eval_batch_size if cfg.global_eval_batch_size is not None else glob
        if geval % world_size:
            raise RunConfigError(f"global_eval_batch_size {geval} does not divide by the world size {world_size}")
        device_eval = geval // world_size
    return device_train, device_eval


def schema_help() -> str:
    """The run-file schema: every key with type, default and doc."""
    from flexbert.schema import describe, format_rows

    from flexbert.data.seq_len_warmup import SeqLenWarmupConfig

    from flexbert.config import ModelConfig

    rows = [r for r in describe(RunConfig) if r[0] not in ("source", "variables")]
    rows += describe(SeqLenWarmupConfig, "algorithms.seq_warmup")
    rows += describe(ModelConfig, "model.model_config")
    return ("Run-file keys (type, [default], doc). Block and kernel names: `python -m flexbert.list_registries`.\n"
            "Top-level keys outside this list are variables, allowed when used as ${name} or {name}.\n"
            "model.model_config defaults are bert-base-uncased's; `model.pretrained_model_name` names another "
            "preset\n(bert-large-uncased, prajjwal1/bert-tiny, answerdotai/ModernBERT-base/-large) or a folder whose "
            "config.json replaces them.\n\n" + format_rows(rows))


__all__ = ["RunConfig", "RunConfigError", "ModelSection", "load_run_config",
           "check_batch_sizes", "require", "parse_duration", "schema_help", "coerce"]
