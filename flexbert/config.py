"""`FlexBertConfig`: the `model.model_config` section of the FlexBERT YAML schema, typed and validated once.

Every key of the FlexBERT schema is accepted with the reference framework's meaning and default. Unlike the
reference framework, which subclassed `BertConfig` and silently dropped what it did not know:
- an unknown key fails with the closest valid name;
- a bad value (unknown block name, heads not dividing hidden, odd window, ...) fails naming the allowed choices;
- legacy keys are accepted with a warning and have no effect;
- `pad_token_id` has no default: builders take it from the tokenizer (the reference inherited BERT's 0).

The schema's composite block names are parsed once (`attention_spec`, `layer_spec` in the model package);
this module only checks that the names exist and fit together.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Optional

from transformers import PretrainedConfig

from flexbert.registry import closest
from flexbert.schema import ConfigError, check_keys

# key -> default. The defaults are the reference FlexBERT's; ModernBERT's values live in yamls/.
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {
    # shapes
    "vocab_size": 50368,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 8192,
    # blocks
    "embedding_layer": "absolute_pos",
    "attention_layer": "base",
    "bert_layer": "prenorm",
    "mlp_layer": "mlp",
    "normalization": "rmsnorm",
    "norm_kwargs": {},
    "hidden_act": "gelu",
    "head_pred_act": "silu",
    "head_class_act": "silu",
    "padding": "unpadded",
    "unpad_embeddings": False,
    "pad_logits": False,
    # attention pattern and RoPE
    "sliding_window": -1,
    "global_attn_every_n_layers": -1,
    "rotary_emb_base": 10000.0,
    "rotary_emb_dim": None,
    "rotary_emb_scale_base": None,
    "rotary_emb_interleaved": False,
    "local_attn_rotary_emb_base": -1,
    "local_attn_rotary_emb_dim": None,
    "attn_kernel": "auto",  # extension: which attention kernel (see flexbert.model.attention_kernels)
    # dropouts
    "attention_probs_dropout_prob": 0.0,
    "attn_out_dropout_prob": 0.0,
    "embed_dropout_prob": 0.0,
    "mlp_dropout_prob": 0.0,
    "head_pred_dropout": 0.0,
    "head_class_dropout": 0.0,
    # biases
    "attn_qkv_bias": False,
    "attn_out_bias": False,
    "mlp_in_bias": False,
    "mlp_out_bias": False,
    "decoder_bias": True,
    "head_pred_bias": False,
    "head_class_bias": False,
    # norm placement
    "embed_norm": True,
    "final_norm": False,
    "skip_first_prenorm": False,
    "head_pred_norm": True,
    "head_class_norm": False,
    # init
    "init_method": "default",
    "init_std": 0.02,
    "init_cutoff_factor": 2.0,
    "init_small_embedding": False,
    # loss and head
    "loss_function": "cross_entropy",
    "loss_kwargs": {},
    "masked_prediction": False,
    "pooling_type": "cls",
    "compile_model": False,
    # different first layers
    "num_initial_layers": 1,
    "initial_attention_layer": None,
    "initial_bert_layer": None,
    "initial_mlp_layer": None,
    # flash-attn switches
    "deterministic_fa2": False,
    "use_fa2": True,
    "use_sdpa_attn_mask": False,
    # embeddings
    "tie_word_embeddings": True,
    "pad_token_id": None,
}

# Accepted for old run files and checkpoint configs, with a warning; they change nothing here.
LEGACY_KEYS = {
    "activation_function": "use `hidden_act`",
    "allow_embedding_resizing": "embeddings are sized by `vocab_size`",
    "encoder_layer": "there is one encoder",
    "head_class_norm_kwargs": "heads use `norm_kwargs`",
    "hidden_dropout_prob": "use the per-block dropouts (`attn_out_dropout_prob`, `mlp_dropout_prob`, ...)",
    "layer_norm_eps": "use `norm_kwargs.eps`",
    "type_vocab_size": "there are no token type embeddings",
    "position_embedding_type": "use `embedding_layer` / `attention_layer`",
    "classifier_dropout": "use `head_class_dropout`",
    "use_cache": "encoders have no cache",
    "initializer_range": "use `init_std`",
    "gradient_checkpointing": "not supported by the reference either",
    "pretrained_model_name": "the architecture is given by model_config",
}

# Schema keys kept (a config round-trips with them) that change nothing because of how this project runs.
MOOT_KEYS = {
    "padding": "execution is always unpadded, which gives the same numbers as padded",
    "unpad_embeddings": "padding is removed once per batch, before the embeddings",
    "use_fa2": "the kernel is chosen by attn_kernel; auto takes flash-attn when it is installed",
    "use_sdpa_attn_mask": "attention masks are never materialized",
}

# Keys that transformers' own PretrainedConfig machinery reads and writes (checkpoint configs carry them). The
# special-token ids are listed by name: transformers 4.x declares them on PretrainedConfig, 5.x on each model's config.
_HF_BASE_KEYS = set(PretrainedConfig().to_dict()) | {
    "model_type", "transformers_version", "torch_dtype", "attn_implementation",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "cls_token_id",
    "num_labels"}  # a property there (derived from id2label), so to_dict() does not list it


def _is_hf_key(key: str) -> bool:
    # transformers passes private bookkeeping keys (`_commit_hash`, `_name_or_path`, ...) through from_pretrained
    return key in _HF_BASE_KEYS or key.startswith("_")

# The label of a position that produces no loss (masked-out, padding): PyTorch's cross-entropy default.
IGNORE_INDEX = -100

# The keys `loss_kwargs` may hold (the loss blocks read them).
LOSS_KWARGS = ("ignore_index", "label_smoothing", "lse_square_scale", "reduction", "inplace_backward")

# Keys whose value names a registered block, and the registry it is looked up in (checked when a model is built).
BLOCK_KEYS = (
    ("embedding_layer", "embedding"),
    ("attention_layer", "attention"),
    ("bert_layer", "layer"),
    ("mlp_layer", "mlp"),
    ("normalization", "norm"),
    ("init_method", "init"),
    ("loss_function", "loss"),
    ("hidden_act", "activation"),
    ("head_pred_act", "activation"),
    ("head_class_act", "activation"),
    ("initial_attention_layer", "attention"),
    ("initial_bert_layer", "layer"),
    ("initial_mlp_layer", "mlp"),
    ("attn_kernel", "attention_kernel"),
)

_CHOICES = {
    "padding": ("unpadded", "padded"),
    "pooling_type": ("cls", "mean", "max"),
}


class FlexBertConfigError(ConfigError):
    """A `model_config` key or value that cannot work; the message names the key and the fix."""


class FlexBertConfig(PretrainedConfig):
    model_type = "flex_bert"

    def __init__(self, **kwargs: Any):
        given = dict(kwargs)
        unknown = [k for k in given if k not in MODEL_CONFIG_DEFAULTS and k not in LEGACY_KEYS and not _is_hf_key(k)]
        if unknown:
            key = unknown[0]
            raise FlexBertConfigError(
                f"unknown model_config key `{key}`{closest(key, list(MODEL_CONFIG_DEFAULTS) + list(LEGACY_KEYS))}"
            )
        without_effect = {k: LEGACY_KEYS[k] for k in given if k in LEGACY_KEYS and k != "pretrained_model_name"}
        # a moot key set to its default asks for what happens anyway
        without_effect.update({k: MOOT_KEYS[k] for k in given if k in MOOT_KEYS and given[k] != MODEL_CONFIG_DEFAULTS[k]})
        if without_effect:
            warnings.warn("model_config keys without effect here: "
                          + "; ".join(f"`{k}`: {why}" for k, why in sorted(without_effect.items())), stacklevel=2)
        for key in given.keys() & LEGACY_KEYS.keys():
            given.pop(key)
        values = {k: copy.deepcopy(v) for k, v in MODEL_CONFIG_DEFAULTS.items()}
        values.update({k: v for k, v in given.items() if k in MODEL_CONFIG_DEFAULTS})
        hf_kwargs = {k: v for k, v in given.items() if _is_hf_key(k) and k != "model_type"}
        for key in ("pad_token_id", "tie_word_embeddings"):
            hf_kwargs[key] = values.pop(key)
        super().__init__(**hf_kwargs)
        for key, value in values.items():
            setattr(self, key, value)
        self.validate()

    # --- derived settings -------------------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def local_window(self) -> Optional[int]:
        """One-sided window of local layers (key j visible from query i iff |i-j| <= window), or None if none."""
        return self.sliding_window // 2 if self.sliding_window > 0 else None

    def is_global_layer(self, layer_id: int) -> bool:
        """Layer i is global iff i % global_attn_every_n_layers == 0. With -1 and a sliding window, every layer is
        local (the reference's reading; transformers reads -1 as all-global, so export refuses such configs)."""
        if self.sliding_window <= 0:
            return True
        if self.global_attn_every_n_layers <= 0:
            return False
        return layer_id % self.global_attn_every_n_layers == 0

    def rope_theta(self, layer_id: int) -> float:
        if self.is_global_layer(layer_id) or self.local_attn_rotary_emb_base in (None, -1):
            return float(self.rotary_emb_base)
        return float(self.local_attn_rotary_emb_base)

    def rope_dim(self, layer_id: int) -> int:
        dim = self.rotary_emb_dim
        if not self.is_global_layer(layer_id) and self.local_attn_rotary_emb_dim not in (None, -1):
            dim = self.local_attn_rotary_emb_dim
        return self.head_dim if dim in (None, -1) else int(dim)

    def norm_eps(self) -> float:
        return float(self.norm_kwargs.get("eps", 1e-5))

    def norm_bias(self) -> bool:
        return bool(self.norm_kwargs.get("bias", True))

    def layer_blocks(self, layer_id: int) -> tuple[str, str, str]:
        """(bert_layer, attention_layer, mlp_layer) names for layer i, honouring the `initial_*` overrides."""
        if layer_id < self.num_initial_layers:
            return (
                self.initial_bert_layer or self.bert_layer,
                self.initial_attention_layer or self.attention_layer,
                self.initial_mlp_layer or self.mlp_layer,
            )
        return self.bert_layer, self.attention_layer, self.mlp_layer

    # --- validation -------------------------------------------------------------------------------------------------

    def _fail(self, key: str, message: str) -> None:
        raise FlexBertConfigError(f"model_config.{key}: {message}")

    def check_choice(self, key: str, value: Any, choices) -> None:
        """`value` of `key` is one of `choices`, else a FlexBertConfigError naming the closest."""
        if value not in choices:
            self._fail(key, f"unknown value '{value}'{closest(value, choices)}; choose one of: {', '.join(choices)}")

    def validate(self) -> None:
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                self._fail(key, f"must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            self._fail(
                "num_attention_heads",
                f"{self.num_attention_heads} heads do not divide hidden_size {self.hidden_size}; "
                f"pick a divisor such as {self._divisor_hint()}",
            )
        for key, choices in _CHOICES.items():
            self.check_choice(key, getattr(self, key), choices)
        if not isinstance(self.sliding_window, int) or (self.sliding_window != -1 and self.sliding_window <= 0):
            self._fail("sliding_window", f"must be -1 (off) or a positive even integer, got {self.sliding_window!r}")
        if self.sliding_window > 0 and self.sliding_window % 2:
            self._fail(
                "sliding_window",
                f"{self.sliding_window} is odd; it is the TOTAL window (each side sees sliding_window/2 tokens): "
                f"use {self.sliding_window + 1} or {self.sliding_window - 1}",
            )
        gaen = self.global_attn_every_n_layers
        if not isinstance(gaen, int) or gaen == 0 or gaen < -1:
            self._fail("global_attn_every_n_layers", f"must be -1 (no global layers) or a positive integer, got {gaen!r}")
        if gaen > 0 and self.sliding_window <= 0:
            self._fail("global_attn_every_n_layers", f"is {gaen} but sliding_window is off: set sliding_window (e.g. 128)")
        for key in ("rotary_emb_base",):
            if not isinstance(getattr(self, key), (int, float)) or getattr(self, key) <= 0:
                self._fail(key, f"must be a positive number, got {getattr(self, key)!r}")
        if self.local_attn_rotary_emb_base not in (None, -1) and (
            not isinstance(self.local_attn_rotary_emb_base, (int, float)) or self.local_attn_rotary_emb_base <= 0
        ):
            self._fail("local_attn_rotary_emb_base", f"must be -1 (same as global) or positive, got {self.local_attn_rotary_emb_base!r}")
        for layer in range(self.num_hidden_layers):
            dim = self.rope_dim(layer)
            if dim <= 0 or dim > self.head_dim or dim % 2:
                key = "rotary_emb_dim" if self.is_global_layer(layer) else "local_attn_rotary_emb_dim"
                self._fail(key, f"{dim} must be even and between 2 and head_dim {self.head_dim}")
        for key in (
            "attention_probs_dropout_prob",
            "attn_out_dropout_prob",
            "embed_dropout_prob",
            "mlp_dropout_prob",
            "head_pred_dropout",
            "head_class_dropout",
        ):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                self._fail(key, f"must be a probability in [0, 1), got {value!r}")
        if not isinstance(self.norm_kwargs, dict) or set(self.norm_kwargs) - {"eps", "bias"}:
            bad = sorted(set(self.norm_kwargs) - {"eps", "bias"}) if isinstance(self.norm_kwargs, dict) else self.norm_kwargs
            self._fail("norm_kwargs", f"accepts only `eps` and `bias`, got {bad}")
        if not isinstance(self.loss_kwargs, dict):
            self._fail("loss_kwargs", f"must be a mapping, got {self.loss_kwargs!r}")
        check_keys(self.loss_kwargs, LOSS_KWARGS, "model_config.loss_kwargs", FlexBertConfigError)
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            self._fail("pad_token_id", f"{self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        if not isinstance(self.num_initial_layers, int) or self.num_initial_layers < 0:
            self._fail("num_initial_layers", f"must be a non-negative integer, got {self.num_initial_layers!r}")
        if not (isinstance(self.init_std, (int, float)) and self.init_std > 0 and math.isfinite(self.init_std)):
            self._fail("init_std", f"must be a positive number, got {self.init_std!r}")
    def _divisor_hint(self) -> str:
        divisors = [d for d in range(1, self.hidden_size + 1) if self.hidden_size % d == 0 and self.hidden_size // d in (32, 64, 128)]
        return ", ".join(str(d) for d in divisors) or "a divisor of hidden_size"

    def model_config_dict(self) -> dict[str, Any]:
        """Only the schema's keys, as they would appear under `model.model_config`."""
        out = {k: getattr(self, k) for k in MODEL_CONFIG_DEFAULTS}
        return copy.deepcopy(out)
