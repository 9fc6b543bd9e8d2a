"""The model's block registries, keyed by the `model_config` names of the FlexBERT schema.

Each block module registers its entries on import; `names(kind)` imports them all first so that
`check_blocks` (run whenever a model is built) and `python -m flexbert.list_registries` always see the complete tables.
"""

from __future__ import annotations

import importlib

from flexbert.config import BLOCK_KEYS, FlexBertConfigError
from flexbert.registry import Registry

EMBEDDINGS = Registry("embedding", "model_config.embedding_layer")
ATTENTION = Registry("attention", "model_config.attention_layer")
LAYERS = Registry("layer", "model_config.bert_layer")
MLPS = Registry("mlp", "model_config.mlp_layer")
NORMS = Registry("norm", "model_config.normalization")
ACTIVATIONS = Registry("activation", "model_config.hidden_act")
INITS = Registry("init", "model_config.init_method")
LOSSES = Registry("loss", "model_config.loss_function")

_BLOCK_MODULES = (
    "flexbert.model.activations",
    "flexbert.model.norms",
    "flexbert.model.embeddings",
    "flexbert.model.attention",
    "flexbert.model.attention_kernels",
    "flexbert.model.mlp",
    "flexbert.model.layers",
    "flexbert.model.init",
    "flexbert.model.loss",
)


def _load() -> None:
    for name in _BLOCK_MODULES:
        importlib.import_module(name)


def get(kind: str) -> Registry:
    _load()
    if kind == "attention_kernel":
        from flexbert.model.attention_kernels import ATTENTION_KERNELS

        return ATTENTION_KERNELS
    return Registry.all[kind]


def names(kind: str) -> list[str]:
    return get(kind).names()


def check_layer_combination(bert_layer: str, attention_layer: str, mlp_layer: str) -> None:
    """A parallel layer computes attention and MLP from one fused input projection, so the three names must agree."""
    _load()
    layer_parallel = LAYERS.get(bert_layer).parallel
    attn_parallel = ATTENTION.get(attention_layer).fused_input
    mlp_parallel = MLPS.get(mlp_layer).fused_input
    if layer_parallel and not (attn_parallel and mlp_parallel):
        raise ValueError(
            f"bert_layer '{bert_layer}' fuses the attention and MLP input projections: use attention_layer "
            f"'parallel' or 'rope_parallel' and mlp_layer 'parallel_glu' (got '{attention_layer}', '{mlp_layer}')"
        )
    if not layer_parallel and (attn_parallel or mlp_parallel):
        raise ValueError(
            f"attention_layer '{attention_layer}' / mlp_layer '{mlp_layer}' need bert_layer 'parallel_prenorm' "
            f"(got '{bert_layer}'); for a sequential layer use attention 'base'/'rope' and mlp 'mlp'/'glu'"
        )


def check_blocks(config) -> None:
    """Every block name of `config` is registered and each layer's blocks combine; else FlexBertConfigError naming
    the key, the closest name and the choices."""
    for key, kind in BLOCK_KEYS:
        value = getattr(config, key)
        if value is None and key.startswith("initial_"):
            continue  # the first layers use the main blocks
        choices = (["auto"] if kind == "attention_kernel" else []) + names(kind)
        config.check_choice(key, value, choices)
    for layer in range(config.num_hidden_layers):
        try:
            check_layer_combination(*config.layer_blocks(layer))
        except ValueError as err:
            raise FlexBertConfigError(f"model_config (layer {layer}): {err}") from None
