"""`model.model_config` as a typed section: listed by --help-config, checked at load, one default per key whatever
the entry point (main.py, eval, convert, a saved config.json), and the `pretrained_model_name` presets typed."""

import dataclasses
import json
import types

import pytest
import torch

from flexbert.config import MODEL_CONFIG_DEFAULTS, FlexBertConfig, ModelConfig
from flexbert.train.run_config import RunConfigError, load_run_config, schema_help
from tests.helpers import TINY_MODERNBERT

# A small model that leaves every default to the rule: no embedding, position or dropout key is set.
SMALL = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 48}


def _run_file(tmp_path, model_config: str, extra: str = ""):
    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  name: flex_bert\n{extra}  model_config: {model_config}\n")
    return path


def test_help_config_lists_every_model_config_key_with_type_default_and_doc():
    text = schema_help()
    lines = text.splitlines()
    for key in FlexBertConfig(pad_token_id=0).model_config_dict():
        row = next((i for i, line in enumerate(lines) if line.startswith(f"model.model_config.{key} ")), None)
        assert row is not None, f"--help-config does not list model.model_config.{key}"
        assert "[default " in lines[row] and lines[row + 1].startswith(" ") and len(lines[row + 1].strip()) > 10
    assert "model.model_config.vocab_size" in text and "[default 30522]" in text


def test_model_config_typo_fails_at_load_naming_the_closest_key(tmp_path):
    with pytest.raises(RunConfigError) as info:
        load_run_config(_run_file(tmp_path, "{vocab_sise: 512}"))
    message = str(info.value)
    assert "`vocab_sise`" in message and "did you mean 'vocab_size'" in message and "model_config" in message


@pytest.mark.parametrize("setting, expected", [
    ("{hidden_size: big}", "`model.model_config.hidden_size` must be an integer, got 'big'"),
    ("{embed_norm: maybe}", "`model.model_config.embed_norm` must be true or false, got 'maybe'"),
    ("{rotary_emb_base: [1, 2]}", "`model.model_config.rotary_emb_base` must be a number, got [1, 2]"),
    ("{pooling_type: meen}", "did you mean 'mean'"),
])
def test_model_config_wrong_type_fails_at_load_naming_key_and_type(tmp_path, setting, expected):
    with pytest.raises(RunConfigError) as info:
        load_run_config(_run_file(tmp_path, setting))
    assert expected in str(info.value)


def test_model_config_values_are_typed_at_load(tmp_path):
    """YAML 1.1 reads 1e4 as a string and an integer stays an integer: both arrive as the declared float."""
    cfg = load_run_config(_run_file(tmp_path, "{rotary_emb_base: 1e4, init_std: 1, rotary_emb_dim: null}"))
    assert cfg.model.model_config == {"rotary_emb_base": 10000.0, "init_std": 1.0, "rotary_emb_dim": None}
    assert isinstance(cfg.model.model_config["init_std"], float)


def test_declared_defaults_are_the_reference_defaults():
    """The reference's FlexBertConfig inherits transformers' BertConfig for the BERT keys, and a run file's default
    pretrained_model_name (bert-base-uncased) carries the same values: one default per key."""
    from transformers import BertConfig

    bert = BertConfig()
    config = FlexBertConfig()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "attention_probs_dropout_prob", "hidden_act"):
        assert getattr(config, key) == getattr(bert, key), key


def test_same_model_config_gives_the_same_model_via_main_eval_and_convert(tmp_path):
    from flexbert.convert import _model_from_checkpoint
    from flexbert.eval.finetune import build_model
    from flexbert.eval.spec import load_eval_file
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.train.builders import model_config_from
    from tests.eval_fixtures import build_tokenizer, sentiment_records, write_jsonl

    import yaml

    tokenizer = build_tokenizer(tmp_path / "tokenizer")
    small = json.dumps(SMALL)

    via_main = model_config_from(load_run_config(_run_file(tmp_path, small)), tokenizer)

    eval_path = tmp_path / "eval.yaml"
    eval_path.write_text(yaml.safe_dump({
        "base_run_name": "same", "tokenizer_name": str(tmp_path / "tokenizer"), "max_seq_len": 16,
        "model": {"model_config": SMALL},
        "tasks": {"sentiment": {"data": {"train": str(write_jsonl(tmp_path / "train.jsonl", sentiment_records(4, 0))),
                                         "validation": str(write_jsonl(tmp_path / "val.jsonl", sentiment_records(4, 1)))}}}}))
    spec = load_eval_file(eval_path)
    task_data = types.SimpleNamespace(num_labels=2, labels=["neg", "pos"])
    via_eval = build_model(spec, spec.tasks[0], task_data, tokenizer).config

    weights = FlexBertForMaskedLM(via_main).state_dict()
    checkpoint = {"state": {"model": {f"model.{k}": v for k, v in weights.items()},
                            "integrations": {"huggingface": {"model": {"config": {"content": dict(SMALL)}}}}}}
    via_convert = _model_from_checkpoint(checkpoint, "small.pt", tokenizer).config

    assert via_main.max_position_embeddings == 512 and via_main.attention_probs_dropout_prob == 0.1
    assert via_eval.model_config_dict() == via_main.model_config_dict()
    assert via_convert.model_config_dict() == via_main.model_config_dict()


def test_saved_config_json_carries_every_key(tmp_path):
    """A saved FlexBERT config means the same to code whose defaults differ: no key is left to the reader."""
    FlexBertConfig(**TINY_MODERNBERT).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(MODEL_CONFIG_DEFAULTS) <= set(saved)
    assert FlexBertConfig.from_pretrained(tmp_path).model_config_dict() == FlexBertConfig(**TINY_MODERNBERT).model_config_dict()


def test_presets_are_typed_and_build():
    from flexbert.pretrained_configs import PRESETS

    for name, preset in PRESETS.items():
        assert isinstance(preset, ModelConfig), name
        config = FlexBertConfig(**{**dataclasses.asdict(preset), "pad_token_id": 0})
        with torch.device("meta"):
            from flexbert.model.modeling import FlexBertForMaskedLM

            FlexBertForMaskedLM(config)


def test_bert_presets_are_the_published_bert_configs():
    """bert-base-uncased is transformers' BertConfig defaults; large and tiny differ in the published shapes."""
    from transformers import BertConfig

    from flexbert.pretrained_configs import preset

    published = {
        "bert-base-uncased": BertConfig(),
        "bert-large-uncased": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                         intermediate_size=4096),
        "prajjwal1/bert-tiny": BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=512),
    }
    for name, bert in published.items():
        ours = preset(name)
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "attention_probs_dropout_prob", "hidden_act"):
            assert getattr(ours, key) == getattr(bert, key), (name, key)


def test_modernbert_base_preset_is_modernbert_base():
    """transformers' ModernBertConfig defaults are ModernBERT-base's config.json except the pooling, which the
    published file sets to mean; read through the FlexBERT mapping (which the HF-equivalence tests check against
    transformers' model), they must give the preset."""
    from transformers import ModernBertConfig

    from flexbert.hf_interop import flexbert_config_from_modernbert
    from flexbert.pretrained_configs import preset

    hf = ModernBertConfig(classifier_pooling="mean").to_dict()
    hf.pop("pad_token_id")
    expected = flexbert_config_from_modernbert(hf).model_config_dict()
    expected.pop("pad_token_id")
    ours = dataclasses.asdict(preset("answerdotai/ModernBERT-base"))
    ours.pop("pad_token_id")
    assert ours == expected


def test_pretrained_model_name_folder_values_are_typed(tmp_path):
    from flexbert.config import FlexBertConfigError
    from flexbert.pretrained_configs import preset

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": "wide"}))
    with pytest.raises(FlexBertConfigError, match="hidden_size` must be an integer, got 'wide'"):
        preset(str(tmp_path))
