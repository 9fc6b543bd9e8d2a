"""Classification heads against transformers' ModernBertFor{Sequence,Token}Classification: same weights, same
logits and losses on padded mixed-length batches; folders load both ways."""

import json

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
)

from flexbert import FlexBertConfig, FlexBertForMaskedLM, FlexBertForSequenceClassification, FlexBertForTokenClassification
from flexbert.hf_interop import NotExpressibleError
from tests.helpers import TINY_MODERNBERT, mixed_length_batch

HEAD = dict(head_class_norm=True, head_class_act="gelu", head_class_bias=True)


def _model(cls=FlexBertForSequenceClassification, **overrides):
    torch.manual_seed(0)
    config = FlexBertConfig(**{**TINY_MODERNBERT, **HEAD, "num_labels": 3, **overrides})
    model = cls(config).eval()
    with torch.no_grad():  # move norms and biases off their init so a dropped parameter would show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _batch():
    return mixed_length_batch(3, 24, 128, lengths=[24, 7, 15], seed=1)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_logits_equal_transformers_and_folder_loads_there(tmp_path, pooling):
    model = _model(pooling_type=pooling, sliding_window=8, global_attn_every_n_layers=2)
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForSequenceClassification"]
    assert config["classifier_pooling"] == pooling and config["classifier_activation"] == "gelu"
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert type(hf).__name__ == "ModernBertForSequenceClassification" and hf.config.num_labels == 3
    ids, mask = _batch()
    with torch.no_grad():
        ours, theirs = model(input_ids=ids, attention_mask=mask).logits, hf(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == (3, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_sequence_folder_written_by_transformers_loads_here(tmp_path):
    torch.manual_seed(3)
    hf_config = ModernBertConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                 num_attention_heads=4, pad_token_id=0, local_attention=8, global_attn_every_n_layers=2,
                                 classifier_pooling="mean", classifier_activation="silu", classifier_bias=True,
                                 num_labels=4, attn_implementation="eager")
    hf = ModernBertForSequenceClassification(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = FlexBertForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert (ours.config.pooling_type, ours.config.head_class_act, ours.config.num_labels) == ("mean", "silu", 4)
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask).logits,
                                   hf(input_ids=ids, attention_mask=mask).logits, atol=1e-4, rtol=0)


def test_mlm_folder_loads_as_classifier_with_the_mlm_head(tmp_path):
    mlm = FlexBertForMaskedLM(FlexBertConfig(**TINY_MODERNBERT))
    mlm.save_pretrained(tmp_path / "mlm")
    ours = FlexBertForSequenceClassification.from_pretrained(tmp_path / "mlm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "mlm")
    for name, value in hf.state_dict().items():
        if not name.startswith("classifier."):
            theirs_name = name.replace("model.layers.", "bert.encoder.layers.").replace("model.", "bert.")
            torch.testing.assert_close(ours.state_dict()[theirs_name], value, atol=0, rtol=0)


@pytest.mark.parametrize("problem", ["single_label_classification", "regression", "multi_label_classification"])
def test_losses_equal_transformers(tmp_path, problem):
    num_labels = 1 if problem == "regression" else 3
    model = _model(num_labels=num_labels, problem_type=problem)
    model.save_pretrained(tmp_path / "hf")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids, mask = _batch()
    labels = {"single_label_classification": torch.tensor([0, 2, 1]),
              "regression": torch.tensor([0.5, -1.0, 2.0]),
              "multi_label_classification": torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 1]])}[problem]
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        theirs = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_packed_input_pools_each_document_like_the_padded_batch(pooling):
    model = _model(pooling_type=pooling)
    ids, mask = _batch()
    lengths = mask.sum(1)
    row = torch.cat([ids[i, : lengths[i]] for i in range(3)] + [torch.zeros(5, dtype=torch.long)]).unsqueeze(0)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        packed = model(input_ids=row, cu_seqlens=cu).logits
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_token_logits_equal_transformers(tmp_path):
    model = _model(FlexBertForTokenClassification, num_labels=5)
    model.save_pretrained(tmp_path / "hf")
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert type(hf).__name__ == "ModernBertForTokenClassification"
    ids, mask = _batch()
    labels = torch.randint(0, 5, ids.shape).masked_fill(mask == 0, -100)
    with torch.no_grad():
        ours, theirs = model(input_ids=ids, attention_mask=mask, labels=labels), hf(input_ids=ids, attention_mask=mask, labels=labels)
    keep = mask.bool()
    torch.testing.assert_close(ours.logits[keep], theirs.logits[keep], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides,field", [({"head_class_norm": False}, "head_class_norm"),
                                             ({"pooling_type": "max"}, "pooling_type")])
def test_export_refuses_heads_modernbert_cannot_express(tmp_path, overrides, field):
    with pytest.raises(NotExpressibleError, match=field):
        _model(**overrides).save_pretrained(tmp_path / "hf")
