"""FlexBertConfig validation: errors name the key, the bad value and the fix."""

import warnings

import pytest

from flexbert import FlexBertConfig, FlexBertConfigError, FlexBertForMaskedLM
from tests.helpers import TINY_MODERNBERT


def _config(**overrides):
    return FlexBertConfig(**{**TINY_MODERNBERT, **overrides})


def _error(**overrides) -> str:
    """The message for a config that cannot build a model (values: at construction; block names: at build)."""
    with pytest.raises(FlexBertConfigError) as info:
        FlexBertForMaskedLM(_config(**overrides))
    return str(info.value)


def test_unknown_key_suggests_closest_name():
    message = _error(sliding_windw=128)
    assert "unknown model_config key `sliding_windw`" in message and "did you mean 'sliding_window'" in message


def test_unknown_block_name_lists_choices():
    message = _error(attention_layer="ropee")
    assert "model_config.attention_layer" in message and "'ropee'" in message
    assert "did you mean 'rope'" in message and "base, parallel, rope, rope_parallel" in message


def test_heads_must_divide_hidden():
    message = _error(num_attention_heads=5)
    assert "5 heads do not divide hidden_size 64" in message


def test_odd_sliding_window_explains_total_window():
    message = _error(sliding_window=127)
    assert "model_config.sliding_window" in message and "127 is odd" in message and "TOTAL window" in message


def test_global_every_n_needs_a_window():
    message = _error(sliding_window=-1, global_attn_every_n_layers=3)
    assert "global_attn_every_n_layers" in message and "set sliding_window" in message


def test_parallel_blocks_must_agree():
    message = _error(bert_layer="parallel_prenorm")
    assert "layer 0" in message and "parallel_glu" in message


def test_bad_probability_and_norm_kwargs():
    assert "mlp_dropout_prob: must be a probability" in _error(mlp_dropout_prob=1.5)
    assert "norm_kwargs: accepts only `eps` and `bias`" in _error(norm_kwargs={"epsilon": 1e-5})
    assert "did you mean 'lse_square_scale'" in _error(loss_kwargs={"lse_squared_scale": 1e-4})


def test_legacy_keys_warn_and_are_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = _config(allow_embedding_resizing=True, activation_function="gelu", unpad_embeddings=True,
                         padding="unpadded")
    messages = [str(w.message) for w in caught if "without effect" in str(w.message)]
    assert len(messages) == 1  # one line names them all
    assert "`allow_embedding_resizing`" in messages[0] and "`activation_function`: use `hidden_act`" in messages[0]
    assert "`unpad_embeddings`" in messages[0]
    assert "`padding`" not in messages[0]  # set to what happens anyway
    assert not hasattr(config, "allow_embedding_resizing")


def test_pad_token_id_has_no_silent_default():
    config = FlexBertConfig(**{k: v for k, v in TINY_MODERNBERT.items() if k != "pad_token_id"})
    assert config.pad_token_id is None
    with pytest.raises(ValueError, match="pad_token_id is not set"):
        FlexBertForMaskedLM(config)
    assert "outside the vocabulary" in _error(pad_token_id=500)


def test_layer_pattern_and_theta():
    config = _config(num_hidden_layers=7, sliding_window=128, global_attn_every_n_layers=3,
                     rotary_emb_base=160000.0, local_attn_rotary_emb_base=10000.0)
    assert [config.is_global_layer(i) for i in range(7)] == [True, False, False, True, False, False, True]
    assert config.local_window == 64
    assert config.rope_theta(0) == 160000.0 and config.rope_theta(1) == 10000.0
    same = _config(local_attn_rotary_emb_base=-1, rotary_emb_base=5000.0)
    assert same.rope_theta(1) == 5000.0
    all_local = _config(global_attn_every_n_layers=-1, sliding_window=16)
    assert not any(all_local.is_global_layer(i) for i in range(4))


def test_round_trips_through_dict():
    config = _config(sliding_window=16)
    again = FlexBertConfig(**config.model_config_dict())
    assert again.model_config_dict() == config.model_config_dict()
