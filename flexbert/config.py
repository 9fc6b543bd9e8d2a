"""`ModelConfig` / `FlexBertConfig`: the `model.model_config` section of the FlexBERT YAML schema, typed and validated once.

`ModelConfig` declares every key once (type, default, one-line doc; `python main.py --help-config` lists them);
`FlexBertConfig` is the transformers config the model is built from, with those keys, defaults and checks.
Every key of the FlexBERT schema is accepted with the reference framework's meaning and default. Unlike the
reference framework, which subclassed `BertConfig` and silently dropped what it did not know:
- an unknown key fails with the closest valid name; a value of the wrong type names the key and the expected type;
- a bad value (unknown block name, heads not dividing hidden, odd window, ...) fails naming the allowed choices;
- legacy keys are accepted with a warning and have no effect;
- `pad_token_id` has no default: builders take it from the tokenizer (the reference inherited BERT's 0).

The schema's composite block names are parsed once (`attention_spec`, `layer_spec` in the model package);
this module only checks that the names exist and fit together.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Union

from transformers import PretrainedConfig

from flexbert.registry import closest
from flexbert.schema import ConfigError, check_keys, coerce, field

# The reference's own default for `model.pretrained_model_name`: a file that names no other supplies this config.
DEFAULT_PRETRAINED_MODEL_NAME = "bert-base-uncased"


@dataclass
class ModelConfig:
    """`model.model_config`: every key once, with type, default and doc.

    The defaults are the reference FlexBERT's as a run file gets them: its FlexBertConfig's own defaults, and for
    the keys it inherits from BERT (shapes, positions, attention dropout) the values of bert-base-uncased, which
    the reference's default `pretrained_model_name` supplies. So `ModelConfig()` is the bert-base-uncased preset
    (`flexbert.pretrained_configs`), and a key no layer sets means the same in a run file, an eval file, a
    checkpoint's config and `FlexBertConfig(...)`. ModernBERT's values live in its presets and in yamls/.
    """

    # shapes
    vocab_size: int = field(30522, doc="embedding rows; run files round it up to a multiple of 8, and it must cover the tokenizer")
    hidden_size: int = field(768, doc="width of the residual stream")
    num_hidden_layers: int = field(12, doc="encoder layers")
    num_attention_heads: int = field(12, doc="attention heads; must divide hidden_size")
    intermediate_size: int = field(3072, doc="MLP inner width (glu: width of each of the two input halves)")
    max_position_embeddings: int = field(512, doc="rows of the learned position table (embedding_layer absolute_pos)")
    # blocks (names: `python -m flexbert.list_registries`)
    embedding_layer: str = field("absolute_pos", doc="sans_pos (tokens only; RoPE gives positions) or absolute_pos (learned positions)")
    attention_layer: str = field("base", doc="base (no positional signal), rope, parallel, rope_parallel")
    bert_layer: str = field("prenorm", doc="prenorm, postnorm, parallel_prenorm (fused qkv + MLP input projection)")
    mlp_layer: str = field("mlp", doc="mlp, glu, parallel_glu")
    normalization: str = field("rmsnorm", doc="layernorm, rmsnorm, triton_layernorm, triton_rmsnorm")
    norm_kwargs: dict = field(default_factory=dict, doc="`eps` (default 1e-5) and `bias` (default true) of every norm")
    hidden_act: str = field("gelu", doc="MLP activation (gelu, gelu_tanh, silu, relu, ...)")
    head_pred_act: str = field("silu", doc="activation of the MLM prediction head")
    head_class_act: str = field("silu", doc="activation of the classification head")
    padding: Literal["unpadded", "padded"] = field("unpadded", doc="reference execution mode; runs are always unpadded here (same numbers)")
    unpad_embeddings: bool = field(False, doc="reference: unpad before the embeddings; padding is always removed first here")
    pad_logits: bool = field(False, doc="return padded (batch, seq, vocab) logits instead of packed (tokens, vocab)")
    # attention pattern and RoPE
    sliding_window: int = field(-1, doc="TOTAL local attention window (each side sees half); -1: every layer global")
    global_attn_every_n_layers: int = field(-1, doc="layer i is global iff i % n == 0; -1 with a window: every layer local")
    rotary_emb_base: float = field(10000.0, doc="RoPE theta of global layers")
    rotary_emb_dim: Optional[int] = field(None, doc="rotated dimensions per head; null: the whole head")
    rotary_emb_scale_base: Optional[float] = field(None, doc="xPos scaling base; null: off")
    rotary_emb_interleaved: bool = field(False, doc="rotate interleaved pairs (GPT-J) instead of halves (GPT-NeoX)")
    local_attn_rotary_emb_base: Optional[float] = field(-1.0, doc="RoPE theta of local layers; -1 or null: rotary_emb_base")
    local_attn_rotary_emb_dim: Optional[int] = field(None, doc="rotated dimensions of local layers; null: rotary_emb_dim")
    attn_kernel: str = field("auto", doc="extension: attention kernel (auto: flash-attn when it applies, else FlexAttention on CUDA, SDPA / sliding_window on CPU)")
    # dropouts
    attention_probs_dropout_prob: float = field(0.1, doc="dropout on attention probabilities (bert-base-uncased's 0.1; ModernBERT 0.0)")
    attn_out_dropout_prob: float = field(0.0, doc="dropout after the attention output projection")
    embed_dropout_prob: float = field(0.0, doc="dropout after the embeddings")
    mlp_dropout_prob: float = field(0.0, doc="dropout after the MLP")
    head_pred_dropout: float = field(0.0, doc="dropout in the MLM prediction head")
    head_class_dropout: float = field(0.0, doc="dropout in the classification head")
    # biases
    attn_qkv_bias: bool = field(False, doc="bias on the Q/K/V projection")
    attn_out_bias: bool = field(False, doc="bias on the attention output projection")
    mlp_in_bias: bool = field(False, doc="bias on the MLP input projection")
    mlp_out_bias: bool = field(False, doc="bias on the MLP output projection")
    decoder_bias: bool = field(True, doc="bias on the MLM decoder (vocabulary projection)")
    head_pred_bias: bool = field(False, doc="bias on the MLM head's dense layer")
    head_class_bias: bool = field(False, doc="bias on the classification head's dense layer")
    # norm placement
    embed_norm: bool = field(True, doc="norm after the embeddings")
    final_norm: bool = field(False, doc="norm after the last encoder layer")
    skip_first_prenorm: bool = field(False, doc="layer 0 skips its attention pre-norm (the embedding norm precedes it)")
    head_pred_norm: bool = field(True, doc="norm in the MLM prediction head")
    head_class_norm: Union[bool, str] = field(False, doc="norm in the classification head (the reference also takes a string: any non-empty one is on)")
    # init
    init_method: str = field("default", doc="default, normal, mitchell, kaiming_normal, fan_in, full_megatron")
    init_std: float = field(0.02, doc="standard deviation of normal and full_megatron init")
    init_cutoff_factor: float = field(2.0, doc="truncation of the init at cutoff_factor x std")
    init_small_embedding: bool = field(False, doc="tiny uniform init of the token embeddings (RWKV small init)")
    # loss and head
    loss_function: str = field("cross_entropy", doc="cross_entropy or fa_cross_entropy")
    loss_kwargs: dict = field(default_factory=dict, doc="ignore_index, label_smoothing, lse_square_scale (z-loss), reduction, inplace_backward")
    masked_prediction: bool = field(False, doc="run the MLM head on masked positions only (old name: sparse_prediction)")
    pooling_type: Literal["cls", "mean", "max"] = field("cls", doc="classification pooling: first token, mean or max over the real tokens")
    compile_model: bool = field(False, doc="torch.compile each encoder layer (ignored on CPU)")
    # different first layers
    num_initial_layers: int = field(1, doc="how many first layers take the initial_* blocks")
    initial_attention_layer: Optional[str] = field(None, doc="attention block of the first layers; null: attention_layer")
    initial_bert_layer: Optional[str] = field(None, doc="layer block of the first layers; null: bert_layer")
    initial_mlp_layer: Optional[str] = field(None, doc="MLP block of the first layers; null: mlp_layer")
    # flash-attn switches
    deterministic_fa2: bool = field(False, doc="flash-attn's deterministic backward (slower)")
    use_fa2: bool = field(True, doc="reference switch; the kernel is chosen by attn_kernel here")
    use_sdpa_attn_mask: bool = field(False, doc="reference switch; attention masks are never materialized here")
    # embeddings
    tie_word_embeddings: bool = field(True, doc="the MLM decoder shares the token embedding matrix")
    pad_token_id: Optional[int] = field(None, doc="no default: run files take the tokenizer's pad id (the reference inherited BERT's 0)")


_FIELD_TYPES = typing.get_type_hints(ModelConfig)

# key -> declared default, in declaration order.
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
    for f in dataclasses.fields(ModelConfig)
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

# Old names of today's keys, which the reference's run and evaluation files still carry: read as today's key.
RENAMED_KEYS = {"sparse_prediction": "masked_prediction"}


def read_old_names(model_config: Any, where: str = "model_config", error: type = ConfigError) -> Any:
    """`model_config` (a file's mapping) with each old key name replaced by today's, with a warning; a file that
    sets both names to different values fails."""
    if not isinstance(model_config, Mapping):
        return model_config
    out = dict(model_config)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise error(f"{where} sets both `{old}` and `{new}`, differently; keep `{new}`")
            out.setdefault(new, value)
            warnings.warn(f"{where}.{old} is the old name of `{new}`; read as such", UserWarning, stacklevel=3)
    return out


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


class FlexBertConfigError(ConfigError):
    """A `model_config` key or value that cannot work; the message names the key and the fix."""


def check_model_config(values: Mapping[str, Any], where: str = "model_config",
                       error: type = FlexBertConfigError) -> dict[str, Any]:
    """The keys a file, a checkpoint or a caller sets, each checked against its declaration: an unknown key fails
    naming the closest valid one, a value of the wrong type names the key and the expected type. Legacy keys and
    transformers' own config keys pass through unchanged (FlexBertConfig warns about the former)."""
    out = {}
    for key, value in values.items():
        if key in _FIELD_TYPES:
            out[key] = coerce(value, _FIELD_TYPES[key], f"{where}.{key}", error)
        elif key in LEGACY_KEYS or _is_hf_key(key):
            out[key] = value
        else:
            raise error(f"unknown {where} key `{key}`{closest(key, list(MODEL_CONFIG_DEFAULTS) + list(LEGACY_KEYS))}")
    return out


class FlexBertConfig(PretrainedConfig):
    model_type = "flex_bert"

    def __init__(self, **kwargs: Any):
        given = check_model_config(kwargs)
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

    def to_diff_dict(self) -> dict[str, Any]:
        # save_pretrained writes only what differs from the class defaults; a config.json carries every schema key
        # instead, so a saved model means the same to a version of this code whose defaults differ
        out = super().to_diff_dict()
        out.update(self.model_config_dict())
        return out
