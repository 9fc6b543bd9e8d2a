"""Hugging Face ModernBERT <-> FlexBERT: configs, parameter names, folders.

Same tensors, other names: FlexBERT `bert.X` is ModernBERT `model.X`, and
`bert.encoder.layers.` is `model.layers.`; `head.*` and `decoder.*` keep their names.

Export writes a folder that `transformers.AutoModelForMaskedLM` loads without remote code, with both the
4.x config keys (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`, `local_attention`) and
the 5.x keys (`layer_types`, `rope_parameters`). Two faults of the reference converter do not happen here:
local theta -1 is resolved to the global theta (the reference wrote -1: NaN logits), and
`classifier_activation` is the MLM head's activation `head_pred_act` (the reference took the classifier's).
A FlexBERT config that ModernBERT cannot express fails with a message naming the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from flexbert.config import FlexBertConfig
from flexbert.lane_compat import make_tokenizer_folder_portable

# Keys ModernBertConfig stores that we map; everything else in a ModernBERT config.json is informational.
_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")
# The attention pattern and RoPE in both spellings: transformers 5 saves only its own (`layer_types`,
# `rope_parameters`) and 4.x then falls back to its default thetas, so every export writes both.
_LAYOUT_KEYS = ("global_rope_theta", "local_rope_theta", "global_attn_every_n_layers", "local_attention",
                "layer_types", "sliding_window", "rope_parameters")


class NotExpressibleError(ValueError):
    """The FlexBERT config has a feature Hugging Face ModernBERT does not implement."""


def flexbert_to_hf_name(name: str) -> str:
    if name.startswith("bert.encoder.layers."):
        return "model.layers." + name[len("bert.encoder.layers.") :]
    if name.startswith("bert."):
        return "model." + name[len("bert.") :]
    return name


def hf_to_flexbert_name(name: str) -> str:
    if name.startswith("model.layers."):
        return "bert.encoder.layers." + name[len("model.layers.") :]
    if name.startswith("model."):
        return "bert." + name[len("model.") :]
    return name


def _require(condition: bool, field: str, why: str) -> None:
    if not condition:
        raise NotExpressibleError(f"cannot export to Hugging Face ModernBERT: model_config.{field} {why}")


def modernbert_config_dict(config: FlexBertConfig, classifier: bool = False) -> dict[str, Any]:
    """The ModernBertConfig keyword arguments equivalent to `config`, or NotExpressibleError naming the field.

    ModernBERT has one head configuration (`classifier_*`): an MLM model exports its `head_pred_*` keys there, a
    classification model (`classifier=True`) its `head_class_*` keys, with its labels and pooling."""
    for layer in range(config.num_hidden_layers):
        bert_layer, attention_layer, mlp_layer = config.layer_blocks(layer)
        _require(bert_layer == "prenorm", "bert_layer", f"is '{bert_layer}'; ModernBERT is 'prenorm'")
        _require(attention_layer == "rope", "attention_layer", f"is '{attention_layer}'; ModernBERT is 'rope'")
        _require(mlp_layer == "glu", "mlp_layer", f"is '{mlp_layer}'; ModernBERT is 'glu'")
    _require(config.embedding_layer == "sans_pos", "embedding_layer", f"is '{config.embedding_layer}'; ModernBERT has no position embeddings ('sans_pos')")
    _require(config.normalization in ("layernorm", "triton_layernorm"), "normalization", f"is '{config.normalization}'; ModernBERT uses layernorm")
    _require(config.embed_norm, "embed_norm", "is false; ModernBERT always normalizes the embeddings")
    _require(config.final_norm, "final_norm", "is false; ModernBERT always has a final norm")
    _require(config.skip_first_prenorm, "skip_first_prenorm", "is false; ModernBERT's layer 0 has no attention pre-norm")
    _require(config.head_pred_norm, "head_pred_norm", "is false; ModernBERT's head always has a norm")
    _require(config.attn_qkv_bias == config.attn_out_bias, "attn_qkv_bias", "differs from attn_out_bias; ModernBERT has one `attention_bias`")
    _require(config.mlp_in_bias == config.mlp_out_bias, "mlp_in_bias", "differs from mlp_out_bias; ModernBERT has one `mlp_bias`")
    _require(not config.rotary_emb_interleaved, "rotary_emb_interleaved", "is true; ModernBERT rotates halves (NeoX)")
    _require(config.rotary_emb_scale_base is None, "rotary_emb_scale_base", "is set; ModernBERT has no xPos scaling")
    for layer in range(config.num_hidden_layers):
        _require(config.rope_dim(layer) == config.head_dim, "rotary_emb_dim", "rotates part of the head; ModernBERT rotates all of it")
    if config.sliding_window > 0:
        _require(
            config.global_attn_every_n_layers > 0,
            "global_attn_every_n_layers",
            "is -1 with a sliding window (every layer local); transformers reads -1 as every layer global",
        )
        every_n, window = config.global_attn_every_n_layers, config.sliding_window
    else:
        every_n, window = 1, 128  # all layers global; the window value is then unused
    global_theta = float(config.rotary_emb_base)
    local_theta = global_theta if config.local_attn_rotary_emb_base in (None, -1) else float(config.local_attn_rotary_emb_base)
    layer_types = ["full_attention" if config.is_global_layer(i) else "sliding_attention" for i in range(config.num_hidden_layers)]
    out = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "hidden_activation": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.init_std,
        "initializer_cutoff_factor": config.init_cutoff_factor or 2.0,
        "norm_eps": config.norm_eps(),
        "norm_bias": config.norm_bias(),
        "pad_token_id": config.pad_token_id,
        "global_rope_theta": global_theta,
        "local_rope_theta": local_theta,
        "global_attn_every_n_layers": every_n,
        "local_attention": window,
        "attention_bias": config.attn_qkv_bias,
        "attention_dropout": config.attention_probs_dropout_prob,
        "embedding_dropout": config.embed_dropout_prob,
        "mlp_bias": config.mlp_in_bias,
        "mlp_dropout": config.mlp_dropout_prob,
        "decoder_bias": config.decoder_bias,
        "classifier_bias": config.head_pred_bias,
        "classifier_activation": config.head_pred_act,
        "classifier_dropout": config.head_class_dropout,
        "classifier_pooling": config.pooling_type if config.pooling_type in ("cls", "mean") else "cls",
        "tie_word_embeddings": config.tie_word_embeddings,
        # transformers 5.x spells the attention pattern and RoPE this way; 4.x ignores these keys.
        "layer_types": layer_types,
        # 5.x's setter stores local_attention = 2 * sliding_window and refuses None, also for all-global models.
        "sliding_window": window // 2,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": global_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
        },
    }
    for key in _TOKEN_KEYS:
        if getattr(config, key, None) is not None:
            out[key] = getattr(config, key)
    if classifier:
        out.update(_classifier_config_dict(config))
    return out


def _classifier_config_dict(config: FlexBertConfig) -> dict[str, Any]:
    _require(bool(config.head_class_norm), "head_class_norm", "is false; ModernBERT's classification head always has a norm")
    _require(config.pooling_type in ("cls", "mean"), "pooling_type", f"is '{config.pooling_type}'; ModernBERT pools 'cls' or 'mean'")
    id2label = {int(k): v for k, v in config.id2label.items()}
    out = {
        "classifier_activation": config.head_class_act,
        "classifier_bias": config.head_class_bias,
        "classifier_dropout": config.head_class_dropout,
        "classifier_pooling": config.pooling_type,
        "id2label": id2label,
        # transformers' PretrainedConfig fills label2id only when it derives the labels itself; given id2label
        # alone (a saved folder, an eval task's label names) it leaves label2id None, so write the inverse.
        "label2id": dict(config.label2id) if config.label2id else {name: i for i, name in id2label.items()},
    }
    if config.problem_type is not None:
        out["problem_type"] = config.problem_type
    return out


def flexbert_config_from_modernbert(hf: dict[str, Any], classifier: bool = False, **overrides: Any) -> FlexBertConfig:
    """A ModernBERT config.json (4.x or 5.x keys) as the equivalent FlexBERT config (`classifier`: its
    `classifier_*` keys and labels also configure the classification head)."""
    every_n = hf.get("global_attn_every_n_layers", 3)
    window = hf.get("local_attention", 128)
    if "layer_types" in hf and "global_attn_every_n_layers" not in hf:
        types = hf["layer_types"]
        globals_ = [i for i, t in enumerate(types) if t == "full_attention"]
        every_n = globals_[1] - globals_[0] if len(globals_) > 1 else len(types)
    rope = hf.get("rope_parameters") or {}
    global_theta = hf.get("global_rope_theta", rope.get("full_attention", {}).get("rope_theta", 160000.0))
    local_theta = hf.get("local_rope_theta", rope.get("sliding_attention", {}).get("rope_theta", global_theta))
    attn_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    values = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        embedding_layer="sans_pos",
        attention_layer="rope",
        bert_layer="prenorm",
        mlp_layer="glu",
        normalization="layernorm",
        norm_kwargs={"eps": hf.get("norm_eps", 1e-5), "bias": hf.get("norm_bias", False)},
        hidden_act=hf.get("hidden_activation", "gelu"),
        head_pred_act=hf.get("classifier_activation", "gelu"),
        sliding_window=window,
        global_attn_every_n_layers=every_n,
        rotary_emb_base=global_theta,
        local_attn_rotary_emb_base=local_theta if local_theta is not None else -1,
        attn_qkv_bias=attn_bias,
        attn_out_bias=attn_bias,
        mlp_in_bias=mlp_bias,
        mlp_out_bias=mlp_bias,
        decoder_bias=hf.get("decoder_bias", True),
        head_pred_bias=hf.get("classifier_bias", False),
        attention_probs_dropout_prob=hf.get("attention_dropout", 0.0),
        attn_out_dropout_prob=hf.get("attention_dropout", 0.0),
        embed_dropout_prob=hf.get("embedding_dropout", 0.0),
        mlp_dropout_prob=hf.get("mlp_dropout", 0.0),
        embed_norm=True,
        final_norm=True,
        skip_first_prenorm=True,
        head_pred_norm=True,
        init_method="full_megatron",
        init_std=hf.get("initializer_range", 0.02),
        init_cutoff_factor=hf.get("initializer_cutoff_factor", 2.0),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id"),
        pooling_type=hf.get("classifier_pooling", "cls"),
    )
    for key in _TOKEN_KEYS:
        if hf.get(key) is not None:
            values[key] = hf[key]
    if classifier:
        values.update(
            head_class_act=hf.get("classifier_activation", "gelu"),
            head_class_bias=hf.get("classifier_bias", False),
            head_class_norm=True,
            head_class_dropout=hf.get("classifier_dropout", 0.0),
        )
        if hf.get("id2label"):
            values["id2label"] = {int(k): v for k, v in hf["id2label"].items()}
        if hf.get("label2id"):
            values["label2id"] = {k: int(v) for k, v in hf["label2id"].items()}
        if hf.get("problem_type"):
            values["problem_type"] = hf["problem_type"]
    values.update(overrides)
    return FlexBertConfig(**values)


def is_modernbert_folder(path) -> bool:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    return json.loads(config_file.read_text()).get("model_type") == "modernbert"


class WeightsFileError(ValueError):
    """A weights file of a Hugging Face folder that cannot be read safely; the message names the file."""


def _weight_files(folder: Path, index: Path) -> list[str]:
    """The shard names an index lists: plain file names inside the folder, never paths elsewhere."""
    names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    for name in names:
        if Path(name).name != name or name in ("", ".", ".."):
            raise WeightsFileError(f"{index}: weight_map names '{name}', not a file of this folder; refused")
    return names


def _read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = _weight_files(folder, index)
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        try:  # tensors only: a pickle that names any other global is refused, never run
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsFileError(f"{folder / 'pytorch_model.bin'}: refused (it is not a plain tensor file): "
                                   f"{first}") from None
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def load_modernbert_folder(path, model_class, **config_overrides: Any):
    """A Hugging Face ModernBERT folder (config.json + safetensors) as `model_class` (FlexBertForMaskedLM or a
    FlexBERT classification model). A classification model loaded from an MLM folder keeps the MLM head as its
    `head` (same parameters) and a freshly initialized `classifier`, as transformers does; the decoder is dropped."""
    from flexbert.checkpoints.keys import load_state_dict_checked

    classifier = getattr(model_class, "hf_architecture", "ModernBertForMaskedLM") != "ModernBertForMaskedLM"
    folder = Path(path)
    hf_config = json.loads((folder / "config.json").read_text())
    config_overrides.pop("torch_dtype", None)
    config = flexbert_config_from_modernbert(hf_config, classifier=classifier, **config_overrides)
    model = model_class(config)
    state = {hf_to_flexbert_name(k): v for k, v in _read_safetensors_folder(folder).items()}
    allow_missing: tuple[str, ...] = ()
    if not classifier and config.tie_word_embeddings:
        state.pop("decoder.weight", None)
        allow_missing = ("decoder.weight",)
    if classifier and "classifier.weight" not in state:
        state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
        allow_missing = ("classifier.weight", "classifier.bias")
    load_state_dict_checked(model, state, source=str(folder), allow_missing=allow_missing)
    model.tie_weights()
    return model.eval()


def save_modernbert_folder(model, save_directory, tokenizer=None, **unused: Any) -> None:
    """Write `model` as a Hugging Face ModernBERT folder (safetensors + config, tokenizer files when given):
    an MLM model as `ModernBertForMaskedLM`, a classification model or the bare encoder (`ModernBertModel`) as its
    `hf_architecture`."""
    import transformers
    from transformers import ModernBertConfig

    architecture = getattr(model, "hf_architecture", "ModernBertForMaskedLM")
    hf_class = getattr(transformers, architecture)
    bare = architecture == "ModernBertModel"  # the encoder alone: its tensors carry no `model.` prefix there
    config_values = modernbert_config_dict(model.config, classifier=architecture not in ("ModernBertForMaskedLM",
                                                                                          "ModernBertModel"))
    hf_config = ModernBertConfig(**config_values)
    hf_config.architectures = [architecture]
    state = {flexbert_to_hf_name(k): v.detach() for k, v in model.state_dict().items()}
    if bare:
        state = {k[len("model."):]: v for k, v in state.items()}
    with torch.device("meta"):
        hf_model = hf_class(hf_config)
    hf_model.load_state_dict(state, strict=True, assign=True)
    hf_model.tie_weights()
    target = Path(save_directory)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    hf_model.save_pretrained(tmp, safe_serialization=True)
    config_file = tmp / "config.json"
    written = json.loads(config_file.read_text())
    written.update({key: config_values[key] for key in _LAYOUT_KEYS})
    config_file.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        make_tokenizer_folder_portable(tmp)
    target.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():  # move file by file: a folder that already holds other files keeps them
        os.replace(item, target / item.name)
    tmp.rmdir()
