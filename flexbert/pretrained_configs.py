"""`model.pretrained_model_name`: a Hugging Face model whose config supplies the defaults of `model_config`.

A run file's model is `FlexBertConfig.from_pretrained(pretrained_model_name, **model_config)` in the FlexBERT
schema: every shape or setting the file does not set comes from the named model's `config.json` (BERT's
vocabulary of 30522, 512 positions, attention dropout 0.1, ...). The Hub is not reachable from every machine, so
the configs the published run files name are built in; any other name must be a local folder with a
`config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flexbert.config import MODEL_CONFIG_DEFAULTS, FlexBertConfigError

_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_act": "gelu", "max_position_embeddings": 512,
         "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1, "type_vocab_size": 2,
         "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pad_token_id": 0}
_MODERNBERT = {"model_type": "modernbert", "vocab_size": 50368, "hidden_activation": "gelu",
               "max_position_embeddings": 8192, "global_attn_every_n_layers": 3, "local_attention": 128,
               "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "norm_eps": 1e-5, "norm_bias": False,
               "attention_bias": False, "mlp_bias": False, "decoder_bias": True, "classifier_pooling": "mean",
               "classifier_activation": "gelu", "classifier_bias": False, "embedding_dropout": 0.0,
               "attention_dropout": 0.0, "mlp_dropout": 0.0, "initializer_range": 0.02,
               "initializer_cutoff_factor": 2.0, "pad_token_id": 50283, "cls_token_id": 50281,
               "sep_token_id": 50282, "tie_word_embeddings": True}

# The published config.json of each model, the keys that matter here.
BUILT_IN: dict[str, dict[str, Any]] = {
    "bert-base-uncased": {**_BERT, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                          "intermediate_size": 3072},
    "bert-large-uncased": {**_BERT, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                           "intermediate_size": 4096},
    "prajjwal1/bert-tiny": {**_BERT, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 512},
    "answerdotai/ModernBERT-base": {**_MODERNBERT, "hidden_size": 768, "num_hidden_layers": 22,
                                    "num_attention_heads": 12, "intermediate_size": 1152},
    "answerdotai/ModernBERT-large": {**_MODERNBERT, "hidden_size": 1024, "num_hidden_layers": 28,
                                     "num_attention_heads": 16, "intermediate_size": 2624},
}
for _name in ("bert-base-uncased", "bert-large-uncased"):
    BUILT_IN[f"google-bert/{_name}"] = BUILT_IN[_name]


def _config_json(name: str) -> dict[str, Any]:
    if name in BUILT_IN:
        return dict(BUILT_IN[name])
    folder = Path(name)
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise FlexBertConfigError(f"model.pretrained_model_name '{name}': the folder has no config.json")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise FlexBertConfigError(f"{path}: not a readable config.json ({err})") from None
    raise FlexBertConfigError(
        f"model.pretrained_model_name '{name}': not a built-in config ({', '.join(sorted(BUILT_IN))}) and no local "
        f"folder '{name}/config.json'. The Hub is not consulted: save that model's config.json in a folder and "
        f"name the folder")


def pretrained_defaults(name: str) -> dict[str, Any]:
    """The model_config defaults that `pretrained_model_name` supplies (FlexBERT keys only; no pad id: the
    tokenizer's is used)."""
    hf = _config_json(name)
    if hf.get("model_type") == "modernbert":
        from flexbert.hf_interop import flexbert_config_from_modernbert

        values = flexbert_config_from_modernbert(hf).model_config_dict()
    else:  # BERT-style and FlexBERT configs: the keys they share with the schema
        values = {k: v for k, v in hf.items() if k in MODEL_CONFIG_DEFAULTS}
    values.pop("pad_token_id", None)
    return values
