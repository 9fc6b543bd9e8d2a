"""`python -m flexbert.convert`: released-layout checkpoints -> Hugging Face folders that transformers loads
(logits vs ours, fill-mask), HF folders -> Composer checkpoints usable as load_path, round trips, CLI errors."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM, pipeline

from flexbert.checkpoints.loading import load_checkpoint_file
from flexbert.config import FlexBertConfig
from flexbert.convert import main
from flexbert.model.modeling import FlexBertForMaskedLM
from flexbert.train.run_config import load_run_config
from flexbert.train.trainer import build_trainer
from tests.helpers import ROOT, TINY_MODERNBERT
from tests.released_layout import write_released_checkpoint
from tests.tiny_setup import tiny_run_overrides

SENTENCES = ["The function returns a list of strings.", "Open the file and read it."]


@pytest.fixture(scope="module")
def tokenizer(tiny_corpus):
    return AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")


def _phase1_model(tokenizer, seed=0):
    """Phase-1 settings that broke the reference converter: local theta -1, MLM head gelu vs classifier silu."""
    config = FlexBertConfig(**{**TINY_MODERNBERT, "vocab_size": 512, "pad_token_id": tokenizer.pad_token_id,
                               "local_attn_rotary_emb_base": -1, "rotary_emb_base": 10000.0,
                               "head_pred_act": "gelu", "head_class_act": "silu"})
    torch.manual_seed(seed)
    model = FlexBertForMaskedLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def converted(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("convert")
    model = _phase1_model(tokenizer)
    checkpoint = write_released_checkpoint(folder / "ep0-ba4000-rank0.pt", model, tokenizer=tokenizer)
    assert main(["composer-to-hf", str(checkpoint), str(folder / "hf")]) == 0  # tokenizer from the checkpoint
    return model, folder / "hf"


def test_composer_to_hf_config_and_logits_match_ours(converted, tokenizer):
    model, out = converted
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["architectures"] == ["ModernBertForMaskedLM"]
    assert config["global_rope_theta"] == 10000.0 and config["local_rope_theta"] == 10000.0  # not -1
    assert config["classifier_activation"] == "gelu"  # the MLM head's, not the classifier's silu
    assert config["global_attn_every_n_layers"] == 3 and config["local_attention"] == 8  # 4.x keys
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]  # 5.x
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    assert (config["cls_token_id"], config["sep_token_id"]) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert (out / "tokenizer.json").is_file()
    hf = AutoModelForMaskedLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt", return_token_type_ids=False)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        theirs = hf(**batch).logits[mask]
        ours = model(**batch).logits[mask]
    assert torch.isfinite(theirs).all()
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_fill_mask_pipeline_on_the_converted_folder(converted, tokenizer):
    model, out = converted
    fill = pipeline("fill-mask", model=str(out), tokenizer=str(out))
    text = f"Open the {tokenizer.mask_token} and read it."
    predictions = fill(text, top_k=3)
    ids = tokenizer(text, return_tensors="pt", return_token_type_ids=False)
    position = (ids["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
    with torch.no_grad():
        probs = model(**ids).logits[0, position].softmax(-1)
    top = probs.topk(3)
    assert [p["token"] for p in predictions] == top.indices.tolist()
    assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert all(isinstance(p["token_str"], str) and tokenizer.mask_token not in p["sequence"] for p in predictions)


def _transformers_folder(path, tokenizer, seed=3):
    """A ModernBERT folder written by transformers itself, with the tokenizer."""
    torch.manual_seed(seed)
    config = ModernBertConfig(vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                              global_attn_every_n_layers=2, local_attention=16, global_rope_theta=160000.0,
                              local_rope_theta=10000.0, pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                              sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                              eos_token_id=tokenizer.sep_token_id, norm_bias=False)
    model = ModernBertForMaskedLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_to_composer_to_hf_round_trips_bit_for_bit(tokenizer, tmp_path):
    source = _transformers_folder(tmp_path / "hf", tokenizer)
    assert main(["hf-to-composer", str(source), str(tmp_path / "model.pt")]) == 0
    checkpoint = load_checkpoint_file(tmp_path / "model.pt")  # the safe loader accepts it
    state = checkpoint["state"]
    assert "model.bert.encoder.layers.1.attn.Wqkv.weight" in state["model"]
    content = state["integrations"]["huggingface"]["model"]["config"]["content"]
    assert (content["hidden_size"], content["num_hidden_layers"], content["sliding_window"]) == (32, 3, 16)
    assert "tokenizer.json" in state["integrations"]["huggingface"]["tokenizer"]

    assert main(["composer-to-hf", str(tmp_path / "model.pt"), str(tmp_path / "back")]) == 0
    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    original, returned = (json.loads((f / "config.json").read_text()) for f in (source, tmp_path / "back"))
    differing = {k for k in original if original[k] != returned.get(k)}
    assert differing <= {"transformers_version"}, {k: (original[k], returned.get(k)) for k in differing}
    assert (tmp_path / "back" / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()


def test_hf_to_composer_output_is_a_load_path(tiny_corpus, tokenizer, tmp_path):
    """Continued pretraining from published weights: the architecture comes with the checkpoint."""
    source = _transformers_folder(tmp_path / "hf", tokenizer)
    assert main(["hf-to-composer", str(source), str(tmp_path / "start.pt")]) == 0
    expected = {k: v for k, v in load_file(source / "model.safetensors").items()}

    def trainer_for(folder, **extra):
        cfg = load_run_config(ROOT / "yamls" / "demo.yaml", tiny_run_overrides(
            tiny_corpus, folder, load_path=str(tmp_path / "start.pt"), max_duration="1ba", eval_interval="10ba", **extra))
        cfg.model.model_config = {}  # nothing re-typed
        return build_trainer(cfg)

    for folder, extra in ((tmp_path / "weights", {"load_weights_only": True}),
                          (tmp_path / "phase", {"reset_time": True, "restart_override": True})):
        trainer, reset_time = trainer_for(folder, **extra)
        model = trainer.state.model.model
        assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.global_attn_every_n_layers) == (32, 3, 2)
        assert model.config.rope_theta(0) == 160000.0 and model.config.rope_theta(1) == 10000.0
        assert torch.equal(model.bert.encoder.layers[2].attn.Wqkv.weight, expected["model.layers.2.attn.Wqkv.weight"])
        assert torch.equal(model.head.dense.weight, expected["head.dense.weight"])
    trainer.fit(reset_time=reset_time)  # the phase start trains
    trainer.close()
    assert trainer.state.timestamp.batch.value == 1


def test_cli_help_and_one_line_errors(converted, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "composer-to-hf" in capsys.readouterr().out
    _, hf = converted
    cases = [
        (["composer-to-hf", str(tmp_path / "missing.pt"), str(tmp_path / "o1")], "missing.pt: no such checkpoint file"),
        (["composer-to-hf", str(hf / "config.json"), str(tmp_path / "o2")], "config.json: not a torch checkpoint"),
        (["hf-to-composer", str(tmp_path / "nope"), str(tmp_path / "o.pt")], "nope: no such folder"),
        (["hf-to-composer", str(tmp_path), str(tmp_path / "o.pt")], "not a Hugging Face ModernBERT folder"),
        (["hf-to-composer", str(hf), str(hf / "config.json")], "already exists; pass --overwrite"),
        (["hf-to-composer", str(hf), str(tmp_path / "o.pt"), "--tokenizer", str(tmp_path / "no_tok")], "--tokenizer"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, (argv, err)


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "flexbert.convert", "hf-to-composer", "--help"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "HF_DIR" in result.stdout and "--tokenizer" in result.stdout


def test_checkpoint_whose_tensors_do_not_fit_its_config_is_listed(tokenizer, tmp_path, capsys):
    from tests.released_layout import NUMPY1_PICKLE, released_checkpoint

    right = _phase1_model(tokenizer)
    wrong = FlexBertForMaskedLM(FlexBertConfig(**{**right.config.model_config_dict(), "num_hidden_layers": 3}))
    checkpoint = released_checkpoint(wrong)
    checkpoint["state"]["integrations"]["huggingface"]["model"]["config"]["content"] = right.config.model_config_dict()
    torch.save(checkpoint, tmp_path / "bad.pt", pickle_module=NUMPY1_PICKLE)
    assert main(["composer-to-hf", str(tmp_path / "bad.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint's tensors do not fit the model" in err and "missing (6):" in err
    assert "    bert.encoder.layers.3.attn_norm.weight\n" in err


def test_tokenizer_flag_supplies_the_tokenizer(tiny_corpus, tokenizer, tmp_path):
    model = _phase1_model(tokenizer)
    checkpoint = write_released_checkpoint(tmp_path / "c.pt", model)  # no tokenizer embedded
    assert main(["composer-to-hf", str(checkpoint), str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "tokenizer.json").exists() and (tmp_path / "plain" / "model.safetensors").is_file()
    assert main(["composer-to-hf", str(checkpoint), str(tmp_path / "with"), "--tokenizer", str(tiny_corpus / "tokenizer")]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "with").get_vocab() == tokenizer.get_vocab()
