"""Composer checkpoints as `load_path` and `init_from_checkpoint`: reading them safely, checking that they fit,
the model config they embed, and growing a larger model from a smaller one's weights.

Layout (Composer 0.24 wrote the released ones, Composer 0.32 writes ours, the same way):
`{"state": {"model": {"model.bert...": tensor}, "optimizers": {"StableAdamW": {"state": {FQN: {...}},
"param_groups": [...]}}, "schedulers": {...}, "timestamp": {...}, "integrations": {"huggingface": {"model":
{"config": {"content": {...}}}, "tokenizer": {...}}}, ...}, "rng": [...]}`.

The trainer's path through this module, before Composer's Trainer opens the file:
1. `prepare_load_path`: the file exists and is not a Hugging Face folder; `install_composer_guard()` makes
   Composer's own torch.load (weights_only=False) run only on files the restricted unpickler accepted
   (see `flexbert.checkpoints.safe_unpickle` for why this is the hook to use).
2. `read_checkpoint_model_config`: the architecture stored in the checkpoint;
   `flexbert.pretrained_configs.resolve_model_config` combines it with the run file's `model_config`, listing
   disagreements key by key.
3. `check_checkpoint_fits`: the checkpoint's tensors against the built model -- missing, unexpected and
   mis-shaped keys listed, instead of Composer's first-mismatch error deep inside `Trainer.__init__`.
4. `init_from_checkpoint` (run-file key `init_from_checkpoint`): tile a smaller model into this one
   (`flexbert.checkpoints.grow`).
Files are opened with `mmap=True` and the last one is cached, so steps 1-3 cost one parse of the pickle.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from flexbert import schema
from flexbert.checkpoints.keys import CheckpointError, mismatch_message
from flexbert.config import MODEL_CONFIG_DEFAULTS
from flexbert.registry import closest

log = logging.getLogger(__name__)

MODEL_PREFIX = "model."  # Composer's HuggingFaceModel keeps the FlexBERT module as `.model`


# ------------------------------------------------------------------------------------------------ reading files


def prepare_load_path(path: str) -> str:
    """Local paths must be a checkpoint file (a clear error now beats one deep inside Composer); URIs pass through.

    Also installs the guard that makes Composer open checkpoints only after the safe loader accepted them."""
    from flexbert.hf_interop import is_modernbert_folder
    from flexbert.checkpoints.safe_unpickle import install_composer_guard

    install_composer_guard()
    path = str(path)
    if "://" in path:
        return path
    if Path(path).is_dir():
        if is_modernbert_folder(path):
            raise CheckpointError(
                f"load_path '{path}' is a Hugging Face ModernBERT folder; convert it first: "
                f"python -m flexbert.convert hf-to-composer {path} OUT.pt"
            )
        if not (Path(path) / ".metadata").is_file():  # sharded (FSDP) checkpoints are folders with .metadata
            raise CheckpointError(f"load_path '{path}' is a folder, not a checkpoint file")
        return path
    if not Path(path).is_file():
        raise CheckpointError(f"load_path '{path}' does not exist")
    return path


_cache: dict[tuple, dict[str, Any]] = {}


def load_checkpoint_file(path: Union[str, Path]) -> dict[str, Any]:
    """A Composer checkpoint, opened by the allow-listed loader (tensors memory-mapped), structure checked."""
    from flexbert.checkpoints.safe_unpickle import UnreadableCheckpointError, safe_torch_load

    path = str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        return _cache[key]
    try:
        checkpoint = safe_torch_load(path, mmap=True)
    except UnreadableCheckpointError as err:
        raise CheckpointError(str(err)) from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable Composer checkpoint ({type(err).__name__}: {err})") from None
    _check_structure(checkpoint, path)
    _cache.clear()  # keep one: checkpoints can be large, even memory-mapped
    _cache[key] = checkpoint
    return checkpoint


def _check_structure(checkpoint: Any, path: str) -> None:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state"), dict) and isinstance(checkpoint["state"].get("model"), dict):
        return
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        names = ", ".join(list(checkpoint)[:3])
        found = f"a bare state dict of {len(checkpoint)} tensors ({names}, ...)"
    elif isinstance(checkpoint, dict):
        found = f"a dict with keys {sorted(map(str, checkpoint))[:6]}"
    else:
        found = f"a {type(checkpoint).__name__}"
    raise CheckpointError(
        f"{path}: not a Composer checkpoint: expected a dict with state.model, found {found}. "
        f"Hugging Face ModernBERT weights: python -m flexbert.convert hf-to-composer HF_DIR OUT.pt"
    )


def model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """`state.model` with FlexBERT names (the Composer wrapper's `model.` prefix removed)."""
    state = checkpoint["state"]["model"]
    return {k[len(MODEL_PREFIX):] if k.startswith(MODEL_PREFIX) else k: v for k, v in state.items()}


def huggingface_state(checkpoint: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """`state.integrations.huggingface` ({"model": {"config": ...}, "tokenizer": {...}}), if present."""
    try:
        return checkpoint["state"]["integrations"]["huggingface"]
    except (KeyError, TypeError):
        return None


def embedded_model_config(checkpoint: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The FlexBERT model config a Composer checkpoint carries (HuggingFaceModel metadata), schema keys only.

    Released checkpoints store the reference's BertConfig-derived dict (`model_type: "bert"`, BERT keys such as
    `type_vocab_size`); only the keys of the model_config schema are kept."""
    try:
        content = huggingface_state(checkpoint)["model"]["config"]["content"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return {k: v for k, v in content.items() if k in MODEL_CONFIG_DEFAULTS}


def read_checkpoint_model_config(path: str) -> Optional[dict[str, Any]]:
    if "://" in str(path) or Path(path).is_dir():
        return None  # remote and sharded checkpoints are read by Composer; their config is not consulted before
    return embedded_model_config(load_checkpoint_file(path))


# ------------------------------------------------------------------------------------------------ fitting the model


def check_checkpoint_fits(path: str, composer_model: torch.nn.Module, strict: bool = True) -> None:
    """Compare `state.model` of the file with the model Composer will load it into (keys `model.bert...`).

    strict=False (`load_strict_model_weights: false`) tolerates missing and unexpected keys, not wrong shapes."""
    from flexbert.checkpoints.keys import state_dict_mismatches

    if "://" in str(path) or Path(path).is_dir():
        return
    state = load_checkpoint_file(path)["state"]["model"]
    missing, unexpected, misshaped = state_dict_mismatches(composer_model, state)
    if not strict:
        missing, unexpected = [], []
    if missing or unexpected or misshaped:
        bare = [k for k in state if not k.startswith(MODEL_PREFIX)]
        hint = ("its keys lack the `model.` prefix Composer's HuggingFaceModel adds; is it a Composer checkpoint?" if bare
                else "the architecture differs: drop model.model_config from the run file to take the checkpoint's, "
                     "or fix the keys named above")
        raise CheckpointError(mismatch_message(f"load_path {path}", missing, unexpected, misshaped, hint))


# ------------------------------------------------------------------------------------------------ growing


@dataclass
class InitFromCheckpointConfig:
    """The run file's `init_from_checkpoint` section: start a larger model from a smaller one's weights, tiled."""

    checkpoint_load_path: str = schema.field(
        doc="with checkpoint_run_name: the folder holding RUN_NAME/latest-rank0.pt; without: the checkpoint file "
            "itself (or a Hugging Face ModernBERT folder)")
    checkpoint_run_name: Optional[str] = schema.field(None, doc="the smaller model's run name (its checkpoint folder)")
    checkpoint_cfg: Optional[Union[str, dict]] = schema.field(
        None, doc="the smaller model's run file (its model section is used), or a model_config mapping; optional "
                  "when the checkpoint embeds its config")
    mode: str = schema.field("tile_weights_from_middle", doc="center_weights, tile_weights_from_edge or "
                                                             "tile_weights_from_middle: where the smaller tensors go")

    def __post_init__(self):
        from flexbert.checkpoints.grow import TILE_MODES

        if self.mode not in TILE_MODES:
            raise schema.ConfigError(f"`mode` '{self.mode}' is unknown{closest(self.mode, TILE_MODES)}; "
                                  f"choose one of: {', '.join(TILE_MODES)}")

    @classmethod
    def from_dict(cls, cfg: Any) -> "InitFromCheckpointConfig":
        if isinstance(cfg, cls):
            return cfg
        return schema.read_section(cls, cfg, "init_from_checkpoint", CheckpointError)

    def checkpoint_path(self) -> str:
        """The file (or HF folder) to read: FOLDER/RUN_NAME/latest-rank0.pt when a run name is given."""
        if self.checkpoint_run_name:
            return str(Path(self.checkpoint_load_path) / self.checkpoint_run_name / "latest-rank0.pt")
        return self.checkpoint_load_path


def _run_file(name: str, run_dir: Optional[str]) -> Path:
    """A run file named relative to the current folder, else to the folder of the run file that names it."""
    for candidate in (Path(name), Path(run_dir or ".") / name):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"init_from_checkpoint.checkpoint_cfg '{name}': no such run file (looked in the current "
                          f"folder{' and ' + str(run_dir) if run_dir else ''})")


def _config_from_cfg(checkpoint_cfg: Union[str, Mapping], run_dir: Optional[str] = None) -> dict[str, Any]:
    """The smaller model's model_config, as its own run would have built it (pretrained_model_name defaults
    under its model_config)."""
    from flexbert.pretrained_configs import resolve_model_config
    from flexbert.yaml_file import load_config_file

    if isinstance(checkpoint_cfg, Mapping):
        return dict(checkpoint_cfg)
    path = _run_file(str(checkpoint_cfg), run_dir)
    try:
        run = load_config_file(path, kind="run file").values
    except schema.ConfigError as err:
        raise CheckpointError(f"init_from_checkpoint.checkpoint_cfg: {err}") from None
    model = run.get("model") if isinstance(run, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("model_config"), dict):
        raise CheckpointError(f"init_from_checkpoint.checkpoint_cfg {path}: has no model.model_config")
    return resolve_model_config(model["model_config"], model.get("pretrained_model_name"))


def read_model_weights(path: str, pad_token_id: Optional[int] = None) -> tuple[dict[str, torch.Tensor], Optional[dict[str, Any]]]:
    """FlexBERT-named weights and (if known) model_config from a Composer checkpoint or a HF ModernBERT folder."""
    from flexbert.hf_interop import is_modernbert_folder, load_modernbert_folder
    from flexbert.model.modeling import FlexBertForMaskedLM

    if Path(path).is_dir():
        if not is_modernbert_folder(path):
            raise CheckpointError(f"{path}: a folder, but not a Hugging Face ModernBERT folder (no config.json with model_type modernbert)")
        hf = json.loads((Path(path) / "config.json").read_text())
        overrides = {"pad_token_id": pad_token_id} if hf.get("pad_token_id") is None else {}
        model = load_modernbert_folder(path, FlexBertForMaskedLM, **overrides)
        return dict(model.state_dict()), model.config.model_config_dict()
    checkpoint = load_checkpoint_file(path)
    return model_state(checkpoint), embedded_model_config(checkpoint)


def _check_source(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], pad_token_id: int, source: str) -> None:
    """The smaller model's weights against its declared architecture (built on the meta device: no memory)."""
    from flexbert.checkpoints.keys import state_dict_mismatches
    from flexbert.config import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM

    values = dict(config)
    if values.get("pad_token_id") is None:
        values["pad_token_id"] = pad_token_id
    with torch.device("meta"):
        reference = FlexBertForMaskedLM(FlexBertConfig(**values))
    missing, unexpected, misshaped = state_dict_mismatches(reference, state)
    if missing or unexpected or misshaped:
        raise CheckpointError(mismatch_message(source, missing, unexpected, misshaped,
                                               "init_from_checkpoint.checkpoint_cfg does not describe this checkpoint"))


def init_from_checkpoint(model, cfg: Any, run_dir: Optional[str] = None):
    """Initialise `model` (a FlexBertForMaskedLM) from a smaller model's weights, tiled by `cfg.mode`.

    Returns the `flexbert.checkpoints.grow.GrowReport` (layer mapping, tensors that kept their init)."""
    from flexbert.checkpoints.grow import GrowError, grow_into

    settings = InitFromCheckpointConfig.from_dict(cfg)
    path, state = _init_source(settings, model.config.pad_token_id, run_dir)
    try:
        report = grow_into(model, state, settings.mode)
    except GrowError as err:
        raise CheckpointError(f"init_from_checkpoint {path}: {err}") from None
    log.info("init_from_checkpoint %s (%s): %s", path, settings.mode, report.summary())
    return report


def _init_source(settings: InitFromCheckpointConfig, pad_token_id: int, run_dir: Optional[str]):
    """(path, weights) of the smaller model, checked against the architecture its checkpoint_cfg declares."""
    path = settings.checkpoint_path()
    if "://" in path:
        raise CheckpointError(f"init_from_checkpoint '{path}': remote paths are not supported; download the file first")
    if not Path(path).exists():
        how = " (checkpoint_load_path/checkpoint_run_name/latest-rank0.pt)" if settings.checkpoint_run_name else ""
        raise CheckpointError(f"init_from_checkpoint: checkpoint '{path}'{how} does not exist")
    state, embedded = read_model_weights(path, pad_token_id=pad_token_id)
    declared = _config_from_cfg(settings.checkpoint_cfg, run_dir) if settings.checkpoint_cfg is not None else embedded
    if declared is not None:
        _check_source(state, declared, pad_token_id, f"init_from_checkpoint {path}")
    return path, state


def check_init_from_checkpoint(cfg: Any, pad_token_id: int, run_dir: Optional[str] = None) -> str:
    """What init_from_checkpoint will read: the file exists, passes the safe loader and matches its declared
    architecture. Returns its path."""
    return _init_source(InitFromCheckpointConfig.from_dict(cfg), pad_token_id, run_dir)[0]


# ------------------------------------------------------------------------------------------------ pretrained weights


def _pretrained_state(path: str, model) -> dict[str, torch.Tensor]:
    from flexbert.checkpoints.keys import state_dict_mismatches

    if "://" in path:
        raise CheckpointError(f"model.pretrained_checkpoint '{path}': remote paths are not supported; download it first")
    if not Path(path).is_file():
        raise CheckpointError(f"model.pretrained_checkpoint '{path}' does not exist")
    state = model_state(load_checkpoint_file(path))
    tied = bool(model.config.tie_word_embeddings)
    if tied:
        state = {k: v for k, v in state.items() if k != "decoder.weight"}
    missing, unexpected, misshaped = state_dict_mismatches(model, state, allow_missing=("decoder.weight",) if tied else ())
    if missing or unexpected or misshaped:
        raise CheckpointError(mismatch_message(f"model.pretrained_checkpoint {path}", missing, unexpected, misshaped,
                                               "model.model_config must describe the checkpoint's architecture"))
    return state


def check_pretrained_checkpoint(path: str, model) -> None:
    """`model.pretrained_checkpoint` exists, passes the safe loader and fits `model` (may be on the meta device)."""
    _pretrained_state(path, model)


def load_pretrained_checkpoint(path: str, model) -> None:
    """Copy the weights of a Composer checkpoint's `state.model` into `model` (a FlexBertForMaskedLM); the
    optimizer, schedule and time of that checkpoint are not used (that is `load_path`)."""
    state = _pretrained_state(path, model)
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    model.tie_weights()
    log.info("model.pretrained_checkpoint: weights from %s", path)
