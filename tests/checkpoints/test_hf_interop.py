"""Hugging Face ModernBERT folders: export loads in transformers without remote code, import loads here."""

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

from flexbert import FlexBertConfig, FlexBertForMaskedLM
from flexbert.hf_interop import NotExpressibleError, modernbert_config_dict
from tests.helpers import TINY_MODERNBERT, mixed_length_batch


def _model(**overrides):
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_export_loads_in_transformers_with_same_logits(tmp_path):
    model = _model(sliding_window=8, global_attn_every_n_layers=2, rotary_emb_base=160000.0, local_attn_rotary_emb_base=10000.0)
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["architectures"] == ["ModernBertForMaskedLM"]
    # 4.x keys and 5.x keys
    assert (config["global_attn_every_n_layers"], config["local_attention"]) == (2, 8)
    assert (config["global_rope_theta"], config["local_rope_theta"]) == (160000.0, 10000.0)
    assert config["layer_types"] == ["full_attention", "sliding_attention"] * 2
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    assert config["classifier_activation"] == "gelu"
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    ids, mask = mixed_length_batch(2, 30, 128, lengths=[30, 12], seed=0)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            model(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            atol=1e-5, rtol=0,
        )


def test_phase_one_local_theta_minus_one_is_resolved_and_head_act_is_the_mlm_heads():
    config = FlexBertConfig(**{**TINY_MODERNBERT, "local_attn_rotary_emb_base": -1, "rotary_emb_base": 10000.0,
                               "head_pred_act": "gelu", "head_class_act": "silu"})
    exported = modernbert_config_dict(config)
    assert exported["local_rope_theta"] == exported["global_rope_theta"] == 10000.0
    assert exported["classifier_activation"] == "gelu"


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"bert_layer": "postnorm", "skip_first_prenorm": False}, "bert_layer"),
        ({"normalization": "rmsnorm"}, "normalization"),
        ({"embedding_layer": "absolute_pos"}, "embedding_layer"),
        ({"global_attn_every_n_layers": -1}, "global_attn_every_n_layers"),
        ({"rotary_emb_dim": 8}, "rotary_emb_dim"),
        ({"attn_qkv_bias": True}, "attn_qkv_bias"),
    ],
)
def test_inexpressible_configs_name_the_field(overrides, field):
    config = FlexBertConfig(**{**TINY_MODERNBERT, **overrides})
    with pytest.raises(NotExpressibleError, match=f"model_config.{field}"):
        modernbert_config_dict(config)


def test_from_pretrained_reads_a_transformers_folder(tmp_path):
    torch.manual_seed(1)
    hf_config = ModernBertConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        global_attn_every_n_layers=3, local_attention=6, global_rope_theta=80000.0, local_rope_theta=5000.0,
        pad_token_id=3, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, norm_bias=False,
    )
    hf = ModernBertForMaskedLM(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = FlexBertForMaskedLM.from_pretrained(tmp_path / "hf")
    assert ours.config.sliding_window == 6 and ours.config.local_attn_rotary_emb_base == 5000.0
    assert ours.decoder.weight.data_ptr() == ours.bert.embeddings.tok_embeddings.weight.data_ptr()
    hf.config._attn_implementation = "eager"
    ids, mask = mixed_length_batch(2, 16, 96, lengths=[16, 9], seed=1)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            hf(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            atol=1e-5, rtol=0,
        )
    # and back: export of the imported model reproduces the folder's tensors exactly
    ours.save_pretrained(tmp_path / "again")
    again = ModernBertForMaskedLM.from_pretrained(tmp_path / "again")
    for (name, a), (_, b) in zip(sorted(hf.state_dict().items()), sorted(again.state_dict().items())):
        assert torch.equal(a, b), name


def test_flexbert_format_round_trip(tmp_path):
    model = _model(sliding_window=8, global_attn_every_n_layers=3)
    model.save_pretrained(tmp_path / "flex", flexbert_format=True)
    loaded = FlexBertForMaskedLM.from_pretrained(tmp_path / "flex").eval()
    assert loaded.config.model_config_dict() == model.config.model_config_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_tied_weights_are_declared_as_transformers_5_requires_and_tie_under_4():
    """transformers 5 ties `{tied parameter: source parameter}` from `_tied_weights_keys` and calls `.keys()` /
    `.values()` on it (a list fails in `post_init`); transformers 4 iterates it as names. Checked against the model's
    real parameters: each pair names two parameters, and they are one tensor."""
    from collections.abc import Mapping

    model = _model()
    declared = type(model)._tied_weights_keys
    assert isinstance(declared, Mapping) and declared
    params = dict(model.named_parameters(remove_duplicate=False))
    for tied, source in declared.items():
        assert tied in params and source in params, (tied, source)
        assert params[tied] is params[source]
    untied = _model(tie_word_embeddings=False)
    assert untied.decoder.weight is not untied.bert.embeddings.tok_embeddings.weight

