"""One small builder per object of a run: tokenizer, model, loaders, optimizer and schedule, callbacks, loggers.

Each takes the typed run config (`load_run_config`) and returns a ready object; `flexbert.train.trainer` wires
them into Composer's Trainer. Nothing here knows about distribution or precision: Composer applies those.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from flexbert.config import MODEL_CONFIG_DEFAULTS, FlexBertConfig
from flexbert.schema import ConfigError, check_kwargs
from flexbert.train.run_config import RunConfig, RunConfigError

VOCAB_MULTIPLE = 8  # the embedding is padded to a multiple of 8 rows, as FlexBERT always did


def build_tokenizer(cfg: RunConfig):
    from flexbert.tokenizer_source import TokenizerSourceError, load_tokenizer

    name = cfg.tokenizer()
    if not name:
        raise RunConfigError(f"{cfg.source}: `tokenizer_name` is required (a local folder or a Hub name)")
    try:
        tokenizer = load_tokenizer(name)
    except TokenizerSourceError as err:
        raise RunConfigError(f"tokenizer_name: {err}") from None
    assign_special_tokens(tokenizer, special_token_ids(cfg), name)
    for token in ("pad_token_id", "mask_token_id"):
        if getattr(tokenizer, token) is None:
            raise RunConfigError(f"tokenizer '{name}' has no {token.replace('_id', '')}: MLM pretraining needs one; "
                                 f"name its id with train_loader.{token}")
    return tokenizer


def special_token_ids(cfg: RunConfig) -> dict[str, int]:
    """Special-token roles the loader sections set (`train_loader.mask_token_id`, ...): one tokenizer serves the
    run, so the two sections must agree."""
    roles: dict[str, int] = {}
    for key in ("train_loader", "eval_loader"):
        section = cfg.loader(key)
        for role, token_id in (section.special_token_ids() if section is not None else {}).items():
            if roles.get(role, token_id) != token_id:
                raise RunConfigError(f"`{key}.{role}_id` ({token_id}) differs from `train_loader.{role}_id` "
                                     f"({roles[role]}): the run has one tokenizer")
            roles[role] = token_id
    return roles


def assign_special_tokens(tokenizer, roles: Mapping[str, int], name: str) -> None:
    """Give the tokenizer the run file's special-token ids, so masking, padding, the model's pad id and the
    tokenizer saved with checkpoints all agree. The run file wins over the tokenizer's own choice, with a warning."""
    for role, token_id in roles.items():
        key = f"train_loader.{role}_id"
        if isinstance(token_id, bool) or not 0 <= token_id < len(tokenizer):
            raise RunConfigError(f"`{key}`: {token_id} is not a token id of tokenizer '{name}' (0..{len(tokenizer) - 1})")
        current = getattr(tokenizer, f"{role}_id")
        if current is not None and current != token_id:
            warnings.warn(f"`{key}` ({token_id}) replaces the {role} id {current} of tokenizer '{name}'")
        setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(token_id))
    if "bos_token" in roles and tokenizer.cls_token_id is None:  # documents start with the bos token instead
        tokenizer.cls_token = tokenizer.bos_token


def model_config_values(cfg: RunConfig, checkpoint_config: Optional[Mapping] = None) -> dict[str, Any]:
    """model_config as the run means it: the `pretrained_model_name` preset, then the checkpoint's architecture (a
    phase start), then the run file's own keys (`flexbert.pretrained_configs.resolve_model_config`)."""
    from flexbert.pretrained_configs import resolve_model_config

    return resolve_model_config(cfg.model.model_config, cfg.model.pretrained_model_name, checkpoint_config)


def model_config_from(cfg: RunConfig, tokenizer=None, checkpoint_config: Optional[Mapping] = None) -> FlexBertConfig:
    """The run's validated FlexBertConfig.

    `pad_token_id` comes from the tokenizer; a YAML value that disagrees is an error rather than a silent choice.
    """
    given = model_config_values(cfg, checkpoint_config)
    vocab = given.get("vocab_size", MODEL_CONFIG_DEFAULTS["vocab_size"])
    if isinstance(vocab, int) and vocab % VOCAB_MULTIPLE:
        given["vocab_size"] = vocab + VOCAB_MULTIPLE - vocab % VOCAB_MULTIPLE
    if tokenizer is not None:
        pad = int(tokenizer.pad_token_id)
        if given.get("pad_token_id") not in (None, pad):
            raise RunConfigError(
                f"model_config.pad_token_id is {given['pad_token_id']} but the tokenizer's pad id is {pad}: remove the key "
                "(it is taken from the tokenizer)"
            )
        given["pad_token_id"] = pad
        if given["vocab_size"] < len(tokenizer):
            raise RunConfigError(
                f"model_config.vocab_size {given['vocab_size']} is smaller than the tokenizer ({len(tokenizer)} tokens): "
                f"token ids would fall outside the embedding; use at least {len(tokenizer)} (rounded up to a multiple of 8)"
            )
    return FlexBertConfig(**given)


def build_model(cfg: RunConfig, tokenizer, checkpoint_config: Optional[Mapping] = None):
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.train.composer_model import FlexBertComposerModel

    config = model_config_from(cfg, tokenizer, checkpoint_config)
    model = FlexBertForMaskedLM(config)  # on one device, eager: flexbert.train.parallelism prepares it for the run
    return FlexBertComposerModel(model, tokenizer=tokenizer, disable_train_metrics=cfg.model.disable_train_metrics,
                                 recompute_metric_loss=cfg.model.recompute_metric_loss)


def _data_sources(cfg: RunConfig, key: str) -> list[tuple[str, str, Optional[str], Optional[str], Optional[str]]]:
    """(what, its `local` key, local folder, remote, split) of each source a loader reads: its dataset, or each
    stream (a stream's missing local / remote / split are the dataset's)."""
    dataset = cfg.loader(key).dataset
    if dataset.streams is None:
        return [(key, f"{key}.dataset.local", dataset.local, dataset.remote, dataset.split)]
    from flexbert.data.mixture import stream_sources

    return [(f"{key} stream '{name}'", f"{key}.dataset.streams.{name}.local", *source)
            for name, source in stream_sources(dataset.streams, dataset.local, dataset.remote, dataset.split).items()]


def check_data_folder(cfg: RunConfig, key: str) -> None:
    for what, local_key, local, remote, split in _data_sources(cfg, key):
        if remote:
            continue  # streamed: the local folder is a cache
        folder = Path(local)
        if not folder.is_dir():
            raise RunConfigError(f"{what}: data folder '{folder}' does not exist (set data_local or {local_key})")
        if split and not (folder / split).is_dir() and not (folder / "index.json").is_file():
            existing = sorted(p.name for p in folder.iterdir() if p.is_dir())
            raise RunConfigError(f"{what}: split '{split}' not found in '{folder}' (it has: "
                                 f"{', '.join(existing) or 'no splits'})")


def _remote_manifest(remote: str) -> Optional[dict]:
    """The manifest.json data_prep wrote next to the splits of an s3:// location (None: none, or another scheme)."""
    import json

    from flexbert.data.remote import read_s3_object
    from flexbert.tokenizer_identity import MANIFEST

    data = read_s3_object(remote, MANIFEST) if remote.startswith("s3://") else None
    try:
        manifest = json.loads(data) if data is not None else None
    except ValueError as err:
        raise RunConfigError(f"'{remote}/{MANIFEST}' is not readable JSON ({err}); re-create the shards with "
                             f"data_prep/tokenize_to_mds.py") from None
    return manifest if isinstance(manifest, dict) else None


def check_shards_tokenizer(cfg: RunConfig, tokenizer, key: str) -> None:
    """Shards carry the identity of the tokenizer that made them (manifest.json, local or next to the splits of an
    s3:// location); refuse another one."""
    from flexbert.tokenizer_identity import manifest_tokenizer_mismatch, shards_tokenizer_mismatch

    sources = [(what, local, remote) for what, _, local, remote, _ in _data_sources(cfg, key) if local or remote]
    if sources and special_token_ids(cfg):  # the shards were made with the tokenizer as published, before the roles
        from flexbert.tokenizer_source import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer())
    for what, local, remote in sources:
        if remote:
            manifest = _remote_manifest(remote)
            problem = manifest and manifest_tokenizer_mismatch(manifest, remote, tokenizer, str(cfg.tokenizer()))
        else:
            problem = shards_tokenizer_mismatch(local, tokenizer, str(cfg.tokenizer()))
        if problem:
            raise RunConfigError(f"{what}: {problem}")


def build_loader(cfg: RunConfig, tokenizer, key: str, device_batch: int, microbatch: int, seq_len_warmup=None,
                 section=None):
    """A loader section's DataSpec; `seq_len_warmup` (training only) is `build_seq_len_warmup`'s schedule and
    `section` the run plan's copy of the section (default: the run file's)."""
    from flexbert.data.loader import DATA_LOADERS

    section = section if section is not None else cfg.loader(key)
    check_data_folder(cfg, key)
    return DATA_LOADERS.get(section.name)(
        section,
        tokenizer,
        device_batch_size=device_batch,
        microbatch_size=microbatch,
        max_seq_len=cfg.max_seq_len,
        seed=cfg.seed,
        count_padding_tokens=cfg.count_padding_tokens,
        mode="train" if key == "train_loader" else "eval",
        where=key,
        seq_len_warmup=seq_len_warmup,
    )


# Algorithms the pretraining loader applies itself (it cuts documents before packing, see
# flexbert.data.seq_len_warmup); both names mean Composer's SeqLengthWarmup schedule.
LOADER_ALGORITHMS = ("seq_warmup", "seq_length_warmup")


def build_seq_len_warmup(cfg: RunConfig, max_duration, warn: bool = False):
    """The run's sequence-length warmup schedule (`algorithms.seq_warmup`), or None; `max_duration` is the run's,
    as a Composer Time."""
    from flexbert.data.seq_len_warmup import SeqLenWarmup, SeqLenWarmupConfig
    from flexbert.schema import read_section

    names = [name for name in LOADER_ALGORITHMS if name in (cfg.algorithms or {})]
    if not names:
        return None
    if len(names) > 1:
        raise RunConfigError("`algorithms.seq_warmup` and `algorithms.seq_length_warmup` are the same algorithm; "
                             "keep one")
    where = f"algorithms.{names[0]}"
    section = read_section(SeqLenWarmupConfig, cfg.algorithms[names[0]], where, RunConfigError)
    try:
        return SeqLenWarmup.from_config(section, int(max_duration.value), max_duration.unit.value, cfg.max_seq_len,
                                        warn=warn)
    except ConfigError as err:
        raise RunConfigError(str(err)) from None


def build_algorithms(section: Mapping[str, Any] | None, pretraining: bool = False) -> list:
    """Composer algorithms by their snake_case names (`gradient_clipping`, `ema`, ...). With `pretraining`, the
    names the pretraining loader applies (LOADER_ALGORITHMS) are left to it."""
    import inspect

    from composer import algorithms
    from composer.core import Algorithm

    from flexbert.registry import closest

    available = {}
    for name, obj in vars(algorithms).items():
        if inspect.isclass(obj) and issubclass(obj, Algorithm) and obj is not Algorithm:
            snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
            available[snake] = obj
    out = []
    for name, kwargs in (section or {}).items():
        if name in LOADER_ALGORITHMS:
            if pretraining:
                continue
            raise RunConfigError(f"`algorithms.{name}` is applied by the pretraining loader; it cannot apply here")
        if name not in available:
            raise RunConfigError(f"unknown algorithm `algorithms.{name}`{closest(name, available)}")
        kwargs = dict(kwargs or {})
        check_kwargs(available[name], kwargs, f"algorithms.{name}", RunConfigError)
        try:
            out.append(available[name](**kwargs))
        except (TypeError, ValueError) as err:
            raise RunConfigError(f"`algorithms.{name}`: {err}") from None
    return out
