"""A transformers-saved ModernBertForSequenceClassification folder, imported and saved back, is the same model to
transformers: every label layout it writes (no labels, default LABEL_i names, custom names, num_labels only,
regression) keeps its id2label / label2id / problem_type, and the logits match."""

import json

import pytest
import torch
from transformers import ModernBertConfig, ModernBertForSequenceClassification

from flexbert import FlexBertForSequenceClassification
from tests.helpers import mixed_length_batch

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            pad_token_id=0, local_attention=8, global_attn_every_n_layers=2, max_position_embeddings=64)
LAYOUTS = {
    "no_labels": {},
    "num_labels_only": {"num_labels": 3},
    "default_names": {"id2label": {0: "LABEL_0", 1: "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}},
    "custom_names": {"id2label": {0: "neg", 1: "neutral", 2: "pos"}, "label2id": {"neg": 0, "neutral": 1, "pos": 2}},
    "id2label_only": {"id2label": {0: "no", 1: "yes"}},
    "regression": {"num_labels": 1, "problem_type": "regression"},
    "multi_label": {"id2label": {0: "a", 1: "b"}, "label2id": {"a": 0, "b": 1}, "problem_type": "multi_label_classification"},
}


def _labels(config) -> dict:
    """The label settings; a config written with id2label alone (label2id null) means the inverse mapping."""
    id2label = {int(k): v for k, v in config.id2label.items()}
    label2id = config.label2id or {name: i for i, name in id2label.items()}
    return {"id2label": id2label, "label2id": {k: int(v) for k, v in label2id.items()},
            "num_labels": config.num_labels, "problem_type": config.problem_type}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_transformers_folder_round_trips_its_labels(tmp_path, layout):
    torch.manual_seed(0)
    original = ModernBertForSequenceClassification(ModernBertConfig(**BASE, **LAYOUTS[layout])).eval()
    original.save_pretrained(tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())

    imported = FlexBertForSequenceClassification.from_pretrained(str(tmp_path / "hf"))
    imported.save_pretrained(tmp_path / "back")
    back = ModernBertForSequenceClassification.from_pretrained(tmp_path / "back").eval()

    expected = _labels(ModernBertForSequenceClassification.from_pretrained(tmp_path / "hf").config)
    assert _labels(back.config) == expected
    rewritten = json.loads((tmp_path / "back" / "config.json").read_text())
    for key in ("id2label", "label2id", "problem_type"):
        if key in written and written[key] is not None:
            assert rewritten[key] == written[key], key
    ids, mask = mixed_length_batch(2, 12, 64, lengths=[12, 5], seed=3)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask).logits,
                                   original(input_ids=ids, attention_mask=mask).logits)
