"""`model.pretrained_model_name`: the typed presets, and the one rule that gives every model_config key its value.

A run file's model is `FlexBertConfig.from_pretrained(pretrained_model_name, **model_config)` in the FlexBERT
schema: every key the file does not set comes from the named model's config (BERT's vocabulary of 30522, 512
positions, attention dropout 0.1, ...). The Hub is not reachable from every machine, so the configs the
published run files name are built in, as `ModelConfig` presets; any other name must be a local folder with a
`config.json`.

`resolve_model_config` is the rule, for every entry point that builds a model from a file's model_config (main.py,
`init_from_checkpoint.checkpoint_cfg`, eval files):

    declared default (ModelConfig)  <-  preset `pretrained_model_name` (default bert-base-uncased)
                                    <-  the checkpoint's embedded config, when the model starts from one
                                    <-  the file's model_config keys

The declared defaults are the bert-base-uncased preset, so entry points that read a config without a preset name
(convert: a checkpoint's embedded config; from_pretrained: a saved config.json) fill a missing key with the same
value a run file gets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from flexbert.checkpoints.keys import CheckpointError
from flexbert.config import DEFAULT_PRETRAINED_MODEL_NAME, MODEL_CONFIG_DEFAULTS, FlexBertConfigError, ModelConfig

BERT_BASE_UNCASED = ModelConfig()  # the declared defaults are bert-base-uncased's config.json

BERT_LARGE_UNCASED = dataclasses.replace(
    BERT_BASE_UNCASED, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)

BERT_TINY = dataclasses.replace(
    BERT_BASE_UNCASED, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)

# ModernBERT's config.json as the equivalent FlexBERT blocks: RoPE without position embeddings, pre-norm GLU layers,
# LayerNorm without bias, a 128-token window with every third layer global, and the two RoPE thetas.
MODERNBERT_BASE = ModelConfig(
    vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
    max_position_embeddings=8192, embedding_layer="sans_pos", attention_layer="rope", bert_layer="prenorm",
    mlp_layer="glu", normalization="layernorm", norm_kwargs={"eps": 1e-5, "bias": False}, hidden_act="gelu",
    head_pred_act="gelu", sliding_window=128, global_attn_every_n_layers=3, rotary_emb_base=160000.0,
    local_attn_rotary_emb_base=10000.0, attention_probs_dropout_prob=0.0, embed_norm=True, final_norm=True,
    skip_first_prenorm=True, head_pred_norm=True, init_method="full_megatron", init_std=0.02,
    init_cutoff_factor=2.0, pooling_type="mean")

MODERNBERT_LARGE = dataclasses.replace(
    MODERNBERT_BASE, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624)

PRESETS: dict[str, ModelConfig] = {
    "bert-base-uncased": BERT_BASE_UNCASED,
    "google-bert/bert-base-uncased": BERT_BASE_UNCASED,
    "bert-large-uncased": BERT_LARGE_UNCASED,
    "google-bert/bert-large-uncased": BERT_LARGE_UNCASED,
    "prajjwal1/bert-tiny": BERT_TINY,
    "answerdotai/ModernBERT-base": MODERNBERT_BASE,
    "answerdotai/ModernBERT-large": MODERNBERT_LARGE,
}


def _config_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FlexBertConfigError(f"model.pretrained_model_name '{name}': the folder has no config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FlexBertConfigError(f"{path}: not a readable config.json ({err})") from None


def preset(name: Optional[str]) -> ModelConfig:
    """The config `pretrained_model_name` names (None: the reference's default, bert-base-uncased): a built-in
    preset, or a local folder's config.json over the declared defaults (no pad id: the tokenizer's is used)."""
    name = name or DEFAULT_PRETRAINED_MODEL_NAME
    if name in PRESETS:
        return PRESETS[name]
    folder = Path(name)
    if not folder.is_dir():
        raise FlexBertConfigError(
            f"model.pretrained_model_name '{name}': not a built-in config ({', '.join(sorted(PRESETS))}) and no "
            f"local folder '{name}/config.json'. The Hub is not consulted: save that model's config.json in a "
            f"folder and name the folder")
    hf = _config_json(folder, name)
    if hf.get("model_type") == "modernbert":
        from flexbert.hf_interop import flexbert_config_from_modernbert

        values = flexbert_config_from_modernbert(hf).model_config_dict()
    else:  # BERT-style and FlexBERT configs: the keys they share with the schema
        from flexbert.config import check_model_config

        values = check_model_config({k: v for k, v in hf.items() if k in MODEL_CONFIG_DEFAULTS}, f"{folder}/config.json")
    values.pop("pad_token_id", None)
    return ModelConfig(**values)


def resolve_model_config(model_config: Mapping[str, Any], pretrained_model_name: Optional[str] = None,
                         checkpoint_config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Every model_config value of a file, by the rule in the module docstring (the one place it is decided).

    `checkpoint_config`: the architecture of the checkpoint the model starts from; a shape or block the file gives
    differently fails (`merge_checkpoint_model_config`)."""
    base = dataclasses.asdict(preset(pretrained_model_name))
    base.pop("pad_token_id")  # the tokenizer's, unless the file or the checkpoint says
    if checkpoint_config is not None:
        return merge_checkpoint_model_config(model_config, {**base, **checkpoint_config})
    return {**base, **model_config}


def merge_checkpoint_model_config(given: Mapping[str, Any], from_checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's architecture, with the YAML's values where it gives them.

    Shapes and block choices must agree (a mismatch would fail on load anyway); they are reported key by key.
    Settings that may change between phases (RoPE theta, window, dropouts, kernel, ...) take the YAML's value.
    """
    must_match = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "embedding_layer", "attention_layer", "bert_layer", "mlp_layer", "normalization",
                  "attn_qkv_bias", "attn_out_bias", "mlp_in_bias", "mlp_out_bias", "decoder_bias", "head_pred_bias",
                  "embed_norm", "final_norm", "skip_first_prenorm", "head_pred_norm", "tie_word_embeddings")
    mismatches = [
        f"  {key}: run file {given[key]!r} vs checkpoint {from_checkpoint[key]!r}"
        for key in must_match
        if key in given and key in from_checkpoint and given[key] != from_checkpoint[key]
    ]
    if mismatches:
        raise CheckpointError("model_config does not match the checkpoint's architecture:\n" + "\n".join(mismatches))
    merged = dict(from_checkpoint)
    merged.pop("pad_token_id", None)  # taken from the tokenizer
    merged.update(given)
    return merged
