"""Composer checkpoints as `load_path`: reading them safely, the model config they embed, growing models.

Layout (recipe section 3): `{"state": {"model": {"model.bert...": tensor}, "optimizers": {"StableAdamW": ...},
"integrations": {"huggingface": {"model": {"config": {"content": {...}}}}}, ...}, "rng": [...]}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from flexbert.config import MODEL_CONFIG_DEFAULTS


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model; the message says which."""


def prepare_load_path(path: str) -> str:
    """Local paths must exist (a clear error now beats one deep inside Composer); URIs pass through."""
    if "://" in str(path):
        return str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"load_path '{path}' does not exist")
    return str(path)


def load_checkpoint_file(path: str) -> dict[str, Any]:
    from flexbert.safe_unpickle import safe_torch_load

    try:
        checkpoint = safe_torch_load(path)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable Composer checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict) or "state" not in checkpoint or "model" not in checkpoint.get("state", {}):
        raise CheckpointError(f"{path}: not a Composer checkpoint (expected a dict with state.model)")
    return checkpoint


def embedded_model_config(checkpoint: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The FlexBERT model config a Composer checkpoint carries (HuggingFaceModel metadata), schema keys only."""
    try:
        content = checkpoint["state"]["integrations"]["huggingface"]["model"]["config"]["content"]
    except (KeyError, TypeError):
        return None
    return {k: v for k, v in content.items() if k in MODEL_CONFIG_DEFAULTS}


def read_checkpoint_model_config(path: str) -> Optional[dict[str, Any]]:
    if "://" in str(path):
        return None  # remote checkpoints are read by Composer; their config is not consulted before download
    return embedded_model_config(load_checkpoint_file(path))


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
