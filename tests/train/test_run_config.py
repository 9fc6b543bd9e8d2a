"""The typed run config: the reference schema's structures and defaults, checked on run files these tests write.

Covered: free variables (`${x}` and `{x}` placeholders), three chained phases through their own `load_path`
patterns, the reference `init_from_checkpoint` section, `model.pretrained_checkpoint`, `pretrained_model_name`
defaults, the reference's loader defaults, `run_name` default, wandb offline + autoresume, the check order,
legacy aliases, and the dry-run validating exactly what the real start validates."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flexbert.checkpoints.loading import load_checkpoint_file, model_state
from flexbert.schema import ConfigError
from flexbert.train.run_config import RunConfigError, load_run_config, schema_help
from flexbert.train.trainer import main
from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

DEMO = ROOT / "yamls" / "demo.yaml"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tiny_run_file(root: Path, path: Path, extra: str = "", model_extra: str = "", layers: int = 3,
                   hidden: int = 64) -> Path:
    """A complete run file in the reference's style (not a copy of one), sized for CPU."""
    return _write(path, f"""
data_local: {root}/mds
tokenizer_name: {root}/tokenizer
max_seq_len: 64
model:
  name: flex_bert
  pretrained_model_name: bert-base-uncased
  tokenizer_name: ${{tokenizer_name}}
  model_config:
    vocab_size: 512
    hidden_size: {hidden}
    num_hidden_layers: {layers}
    num_attention_heads: 2
    intermediate_size: 96
    embedding_layer: sans_pos
    attention_layer: rope
    mlp_layer: glu
    normalization: layernorm
    sliding_window: 16
    global_attn_every_n_layers: 3
    attention_probs_dropout_prob: 0.0
    final_norm: true
{model_extra}
train_loader:
  name: text
  dataset:
    local: ${{data_local}}
    split: train
    max_seq_len: ${{max_seq_len}}
    shuffle: true
    streaming: false
  num_workers: 0
eval_loader:
  name: text
  dataset:
    local: ${{data_local}}
    split: validation
    max_seq_len: ${{max_seq_len}}
    streaming: false
  num_workers: 0
scheduler:
  name: constant_with_warmup
  t_warmup: 0tok
  t_max: ${{max_duration}}
optimizer:
  name: decoupled_stableadamw
  lr: 1.0e-3
max_duration: 3ba
eval_interval: 3ba
eval_subset_num_batches: 1
global_train_batch_size: 8
device_train_microbatch_size: 4
device_eval_batch_size: 8
console_log_interval: 100ba
{extra}
""")


# ------------------------------------------------------------------------------------------- free variables


def test_placeholders_are_filled_from_the_files_own_variables(tmp_path):
    run = _write(tmp_path / "run.yaml", """
pretrain_run_name: phase1
my_data: /data/x
data_local: ${my_data}
run_name: phase2
save_folder: ckpt/{run_name}
load_path: ckpt/{pretrain_run_name}/latest-rank{rank}.pt
""")
    cfg = load_run_config(run)
    assert cfg.load_path == "ckpt/phase1/latest-rank{rank}.pt"  # Composer's own {rank} left for Composer
    assert cfg.save_folder == "ckpt/{run_name}" and cfg.resolved_save_folder() == "ckpt/phase2"
    assert cfg.data_local == "/data/x"
    assert cfg.variables == {"pretrain_run_name": "phase1", "my_data": "/data/x"}


def test_an_unused_top_level_key_is_an_error_naming_the_closest(tmp_path):
    run = _write(tmp_path / "run.yaml", "pretrain_run_name: p1\nmax_duraton: 10ba\n")
    with pytest.raises(RunConfigError, match=r"unknown top-level key `pretrain_run_name`"):
        load_run_config(run)
    run = _write(tmp_path / "run.yaml", "max_duraton: 10ba\n")
    with pytest.raises(RunConfigError, match=r"`max_duraton` \(did you mean 'max_duration'\?\)"):
        load_run_config(run)


def test_a_yaml_that_is_not_a_mapping_is_named(tmp_path):
    run = _write(tmp_path / "run.yaml", "- max_duration: 10ba\n- optimizer: adamw\n")
    with pytest.raises(RunConfigError, match=r"run.yaml: a run file is a mapping of `key: value` lines, this one is a list"):
        load_run_config(run)


# ------------------------------------------------------------------------------------------- defaults


def test_reference_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPOSER_RUN_NAME", raising=False)
    cfg = load_run_config(_write(tmp_path / "run.yaml", "train_loader: {dataset: {local: /x}}\n"))
    assert cfg.count_padding_tokens is True
    assert cfg.train_loader.sequence_packing is False and cfg.train_loader.split_long_documents is False
    assert cfg.train_loader.dataset.streaming is True and cfg.train_loader.dataset.mlm_probability == 0.3
    assert cfg.model.pretrained_model_name == "bert-base-uncased" and cfg.model.recompute_metric_loss is False
    assert cfg.run_name == "bert"
    monkeypatch.setenv("COMPOSER_RUN_NAME", "from-env")
    assert load_run_config(tmp_path / "run.yaml").run_name == "from-env"
    with pytest.raises(RunConfigError, match="must be a plain name"):
        load_run_config(tmp_path / "run.yaml", ["run_name=../escape"])


def test_help_config_lists_every_key_with_its_default(capsys):
    text = schema_help()
    for key in ("count_padding_tokens", "train_loader.sequence_packing", "train_loader.split_long_documents",
                "init_from_checkpoint.checkpoint_run_name", "model.pretrained_checkpoint"):
        assert key in text
    assert main(["--help-config"]) == 0 and "model.recompute_metric_loss" in capsys.readouterr().out


def test_pretrained_model_name_supplies_model_defaults(tiny_corpus, tmp_path):
    """The reference builds FlexBertConfig.from_pretrained(pretrained_model_name, **model_config): BERT-base's
    config fills what the file leaves out. Its legacy base (12 layers, plain MLP, learned positions, RMSNorm) is
    109.4M parameters in the reference."""
    from flexbert.train.builders import model_config_from

    run = _write(tmp_path / "run.yaml", """
model:
  pretrained_model_name: bert-base-uncased
  model_config:
    attention_layer: base
    embedding_layer: absolute_pos
    mlp_layer: mlp
    normalization: rmsnorm
    bert_layer: prenorm
    final_norm: true
    embed_norm: false
    skip_first_prenorm: true
    attention_probs_dropout_prob: 0.0
""")
    config = model_config_from(load_run_config(run))
    assert (config.vocab_size, config.max_position_embeddings, config.intermediate_size) == (30528, 512, 3072)
    config.pad_token_id = 0
    with torch.device("meta"):
        from flexbert.model.modeling import FlexBertForMaskedLM

        params = sum(p.numel() for p in FlexBertForMaskedLM(config).parameters())
    assert round(params / 1e6, 1) == 109.4
    defaults = model_config_from(load_run_config(_write(tmp_path / "bare.yaml", "model: {model_config: {}}\n")))
    assert defaults.attention_probs_dropout_prob == 0.1  # BERT's, when the file does not say
    large = model_config_from(load_run_config(run, ["model.pretrained_model_name=answerdotai/ModernBERT-large"]))
    assert (large.hidden_size, large.num_hidden_layers, large.intermediate_size) == (1024, 28, 2624)
    folder = tmp_path / "local_model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 96, "num_attention_heads": 3}))
    local = model_config_from(load_run_config(run, [f"model.pretrained_model_name={folder}"]))
    assert local.hidden_size == 96 and local.num_hidden_layers == 12
    with pytest.raises(ConfigError, match=r"'org/unknown-model': not a built-in config .* no local folder"):
        model_config_from(load_run_config(run, ["model.pretrained_model_name=org/unknown-model"]))


def test_long_documents_are_truncated_unless_split(tmp_path):
    from tests.data.test_data_loader import build, write_mds

    docs = [(np.arange(5, 5 + 150) % 290 + 5).astype(np.uint16), np.arange(7, 47).astype(np.uint16)]
    write_mds(tmp_path, docs, split="train")
    truncated = build(tmp_path, mode="eval", split_long_documents=False, dataset={"mlm_probability": 0.0})
    split = build(tmp_path, mode="eval", split_long_documents=True, dataset={"mlm_probability": 0.0})
    from tests.data.test_data_loader import MAX_SEQ_LEN, PAD

    count = lambda spec: sum(int((b["input_ids"] != PAD).sum()) for b in spec.dataloader)  # noqa: E731

    assert count(truncated) == MAX_SEQ_LEN + 40  # the long document keeps its first max_seq_len tokens
    assert count(split) == 150 + 40


# ------------------------------------------------------------------------------------------- check order


@pytest.mark.parametrize("text,expected", [
    ("model: {name: hf_bert, use_pretrained: true}\n", "this project pretrains FlexBERT encoders"),
    ("model: {name: mosaic_bert, pretrained_checkpoint: x}\n", "decoders and other model classes are not supported"),
    ("tasks: {mnli: {}}\nbase_run_name: x\nstarting_checkpoint_load_path: y\n", "python -m flexbert.eval"),
    ("model: {num_labels: 2}\n", "fine-tuning / evaluation config"),
])
def test_other_files_are_recognised_before_any_unknown_key(text, expected, tmp_path):
    with pytest.raises(RunConfigError, match=expected):
        load_run_config(_write(tmp_path / "run.yaml", text + "some_unknown_key: 1\n"))


def test_legacy_sparse_prediction_is_masked_prediction(tmp_path):
    run = _write(tmp_path / "run.yaml", "model: {model_config: {sparse_prediction: true}}\n")
    with pytest.warns(UserWarning, match="sparse_prediction is the old name of `masked_prediction`"):
        cfg = load_run_config(run)
    assert cfg.model.model_config == {"masked_prediction": True}


def test_use_pretrained_true_is_refused(tmp_path):
    with pytest.raises(RunConfigError, match="use_pretrained: true.*pretrained_checkpoint"):
        load_run_config(_write(tmp_path / "run.yaml", "model: {use_pretrained: true}\n"))
    assert load_run_config(tmp_path / "run.yaml", ["model.use_pretrained=false"]).model.use_pretrained is False


# ------------------------------------------------------------------------------------------- dry run == start

BAD = [
    ({"precision": "bf16"}, "did you mean 'amp_bf16'"),
    ({"max_duration": 3}, "has no unit"),
    ({"max_duration": "2ep"}, "training loaders are endless"),
    ({"global_train_batch_size": "abc"}, "`global_train_batch_size` must be an integer or null, got 'abc'"),
    ({"device_train_microbatch_size": 0}, "must be a positive number of sequences"),
    ({"model.model_config.mlp_layer": "gluu"}, "did you mean 'glu'"),
    ({"callbacks.speed_monitor.window": 3}, "did you mean 'window_size'"),
    ({"load_path": "/nonexistent/ckpt.pt"}, "does not exist"),
    ({"model.pretrained_checkpoint": "/nonexistent/ckpt.pt"}, "pretrained_checkpoint '/nonexistent/ckpt.pt' does not exist"),
    ({"init_from_checkpoint.checkpoint_load_path": "/nonexistent", "init_from_checkpoint.checkpoint_run_name": "r"},
     "/nonexistent/r/latest-rank0.pt"),
    ({"scheduler.name": "cosine_with_warmup", "scheduler.t_warmup": "10tok", "scheduler.t_max": "3ba"},
     "must be in the same unit"),
    ({"data_local": "/nonexistent/mds"}, "does not exist"),
    ({"train_loader.dataset.streams.web.local": "/nonexistent/web"},
     "train_loader stream 'web': data folder '/nonexistent/web' does not exist (set data_local or "
     "train_loader.dataset.streams.web.local)"),
    ({"model.gradient_checkpointing": True, "fsdp_config": "{sharding_strategy: FULL_SHARD}"},
     "fsdp_config.activation_checkpointing"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[str(list(o)[0]) for o, _ in BAD])
def test_dry_run_refuses_what_the_start_refuses(overrides, expected, tiny_corpus, tmp_path, capsys):
    args = [str(DEMO), *tiny_run_overrides(tiny_corpus, tmp_path / "run", **overrides)]
    dry = main(args + ["--dry-run"])
    dry_err = capsys.readouterr().err
    start = main(args)
    start_err = capsys.readouterr().err
    assert (dry, start) == (2, 2), (dry_err, start_err)
    assert expected in dry_err, dry_err
    assert [line for line in dry_err.splitlines() if line.startswith("error:")] == \
           [line for line in start_err.splitlines() if line.startswith("error:")]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_dry_run_prints_a_summary_and_trains_nothing(tiny_corpus, tmp_path, capsys):
    code = main([str(DEMO), *tiny_run_overrides(tiny_corpus, tmp_path / "run"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parameters" in out and "token slots per step" in out and "6 steps" in out
    assert f"saves to     {tmp_path / 'run'}" in out
    assert not (tmp_path / "run").exists()


def test_the_console_shows_each_warning_once():
    """A start builds model configs more than once (meta-device validation, the model, an init_from_checkpoint
    source with the same keys): main's console shows each warning text once, and different texts each."""
    import warnings

    from flexbert.train.trainer import _show_each_warning_once

    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        _show_each_warning_once()
        for text in ("keys without effect: `padding`", "keys without effect: `padding`", "another"):
            warnings.warn(text)
    assert shown == ["keys without effect: `padding`", "another"]


# ------------------------------------------------------------------------------------------- phases and weights


def _final_weights(folder: Path) -> dict:
    return model_state(load_checkpoint_file(folder / "latest-rank0.pt"))


@pytest.mark.slow
def test_three_phases_chain_through_their_own_load_path_patterns(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = "save_folder: checkpoints/{run_name}\nsave_interval: 3ba\n"
    p1 = _tiny_run_file(tiny_corpus, tmp_path / "p1.yaml", common + "run_name: base-pretrain\n")
    p2 = _tiny_run_file(tiny_corpus, tmp_path / "p2.yaml", common + """
run_name: base-extension
pretrain_run_name: base-pretrain
load_path: checkpoints/{pretrain_run_name}/latest-rank0.pt
reset_time: true
restart_override: true
""")
    p3 = _tiny_run_file(tiny_corpus, tmp_path / "p3.yaml", common + """
run_name: base-decay
context_extension_run_name: base-extension
load_path: checkpoints/{context_extension_run_name}/latest-rank0.pt
reset_time: true
restart_override: true
""")
    assert main([str(p2), "--dry-run"]) == 2  # phase 1 has not run: its checkpoint is missing
    for run in (p1, p2, p3):
        assert main([str(run)]) == 0
    for name in ("base-pretrain", "base-extension", "base-decay"):
        records = [json.loads(x) for x in (tmp_path / "checkpoints" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["batch"] for r in records if "loss/train/total" in r] == [1, 2, 3]  # each phase from zero
    # phase 2 started from phase 1's final weights: its first-step moments came from them
    start = load_checkpoint_file(tmp_path / "checkpoints" / "base-extension" / "ep0-ba3-rank0.pt")
    assert start["state"]["timestamp"]["Timestamp"]["batch"] == 3


def test_pretrained_checkpoint_loads_the_weights(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = _tiny_run_file(tiny_corpus, tmp_path / "src.yaml", "save_folder: src\nrun_name: src\n")
    assert main([str(source)]) == 0
    expected = _final_weights(tmp_path / "src")
    from flexbert.train.trainer import build_trainer

    cfg = load_run_config(_tiny_run_file(tiny_corpus, tmp_path / "ft.yaml", "run_name: ft\n"),
                          [f"model.pretrained_checkpoint={tmp_path / 'src' / 'latest-rank0.pt'}"])
    trainer, _ = build_trainer(cfg)
    model = trainer.state.model.model
    for name, tensor in model.state_dict().items():
        if name in expected:
            assert torch.equal(tensor, expected[name]), name
    assert int(trainer.state.timestamp.batch) == 0  # weights only: the run starts at step 0
    trainer.close()
    wrong = load_run_config(tmp_path / "ft.yaml", [f"model.pretrained_checkpoint={tmp_path / 'src' / 'latest-rank0.pt'}",
                                                   "model.model_config.hidden_size=32"])
    with pytest.raises(Exception, match="(?s)pretrained_checkpoint .*mis-shaped"):
        build_trainer(wrong)


def test_reference_init_from_checkpoint_section(tiny_corpus, tmp_path, monkeypatch):
    """Folder + run name + the small model's run file + mode, as the reference's large recipe writes it."""
    monkeypatch.chdir(tmp_path)
    small = _tiny_run_file(tiny_corpus, tmp_path / "small.yaml", "save_folder: ckpts/{run_name}\nrun_name: small\n",
                           layers=2, hidden=64)
    assert main([str(small)]) == 0
    section = """
init_from_checkpoint:
  checkpoint_cfg: small.yaml
  checkpoint_load_path: ckpts
  checkpoint_run_name: small
  mode: tile_weights_from_middle
"""
    big = _tiny_run_file(tiny_corpus, tmp_path / "big.yaml", section + "save_folder: big\nrun_name: big\n",
                         layers=4, hidden=128)
    from flexbert.train.trainer import build_trainer

    trainer, _ = build_trainer(load_run_config(big))
    grown = trainer.state.model.model.state_dict()
    source = _final_weights(tmp_path / "ckpts" / "small")
    embed = "bert.embeddings.tok_embeddings.weight"
    assert torch.equal(grown[embed][:, 32:96], source[embed])  # from the middle: new[s : s+n] = old, s = (128-64)/2
    trainer.close()
    # the declared small architecture must describe the checkpoint: a wrong one is found by the dry run
    _tiny_run_file(tiny_corpus, tmp_path / "small.yaml", "run_name: small\n", layers=3, hidden=64)
    assert main([str(big), "--dry-run"]) == 2


@pytest.mark.slow
def test_wandb_offline_with_autoresume_trains_and_resumes(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("COMPOSER_RUN_NAME", raising=False)
    args = [str(DEMO), *tiny_run_overrides(tiny_corpus, tmp_path / "run", max_duration="3ba", save_interval="3ba",
                                           autoresume=True, run_name="null", **{"loggers.wandb.project": "p"})]
    assert main(args) == 0  # no run name given: the reference's default 'bert'; nothing asked of a server
    assert main(args + ["max_duration=5ba"]) == 0  # resumes at step 3
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records if "loss/train/total" in r] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------------- metric loss


def test_recompute_metric_loss_switches_between_token_and_batch_means():
    from flexbert.config import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.train.composer_model import FlexBertComposerModel
    from tests.helpers import TINY_MODERNBERT

    torch.manual_seed(0)
    model = FlexBertForMaskedLM(FlexBertConfig(**{**TINY_MODERNBERT, "loss_kwargs": {"label_smoothing": 0.2}})).eval()
    batches = []
    for n_labels in (3, 20):  # unequal label counts: batch mean != token mean
        ids = torch.randint(5, 128, (1, 24))
        labels = torch.full_like(ids, -100)
        labels[0, :n_labels] = ids[0, :n_labels]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    results = {}
    for recompute in (True, False):
        composer = FlexBertComposerModel(model, recompute_metric_loss=recompute)
        metric = composer.get_metrics(is_train=False)["LanguageCrossEntropy"]
        for batch in batches:
            composer.update_metric(batch, composer.eval_forward(batch), metric)
        results[recompute] = float(metric.compute())
    with torch.no_grad():
        outs = [model(**b) for b in batches]
    batch_mean = sum(float(o.loss) for o in outs) / 2  # the training loss, label smoothing included
    logits = torch.cat([o.logits.reshape(-1, 128) for o in outs])
    labels = torch.cat([b["labels"].reshape(-1) for b in batches])
    token_mean = float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100))
    assert results[False] == pytest.approx(batch_mean, rel=1e-5)
    assert results[True] == pytest.approx(token_mean, rel=1e-5)
    assert not math.isclose(results[True], results[False], rel_tol=1e-3)


def test_gradient_checkpointing_gives_the_same_gradients_with_dropout():
    from flexbert.config import FlexBertConfig
    from flexbert.model.modeling import FlexBertForMaskedLM
    from tests.helpers import TINY_MODERNBERT

    config = FlexBertConfig(**{**TINY_MODERNBERT, "attn_out_dropout_prob": 0.1, "mlp_dropout_prob": 0.1})
    model = FlexBertForMaskedLM(config).train()
    ids = torch.randint(5, 128, (2, 16), generator=torch.Generator().manual_seed(1))

    def step():
        torch.manual_seed(3)
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = step()
    model.gradient_checkpointing_enable()
    assert model.bert.encoder.gradient_checkpointing
    checkpointed = step()
    assert torch.equal(plain[0], checkpointed[0])
    for name, grad in plain[1].items():
        torch.testing.assert_close(checkpointed[1][name], grad, rtol=0, atol=1e-6, msg=name)
