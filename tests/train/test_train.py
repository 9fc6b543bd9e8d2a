"""The training entry point: run-file validation, recipes, one-process training, phase transitions."""

import json
import math
from pathlib import Path

import pytest
import torch

from flexbert.model.modeling import FlexBertForMaskedLM
from flexbert.optim.builders import build_optimizer, build_scheduler
from flexbert.train.builders import model_config_from
from flexbert.train.run_config import RunConfigError, check_batch_sizes, load_run_config
from flexbert.train.trainer import build_trainer, main
from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

RECIPES = ROOT / "yamls"


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "recipe,params,seq_len,theta",
    [
        ("pretrain_base", 149.66e6, 1024, (10000.0, 10000.0)),
        ("extend_base", 149.66e6, 8192, (160000.0, 10000.0)),
        ("decay_base", 149.66e6, 8192, (160000.0, 10000.0)),
        ("pretrain_large", 395.88e6, 1024, (10000.0, 10000.0)),
        ("extend_large", 395.88e6, 8192, (160000.0, 10000.0)),
        ("decay_large", 395.88e6, 8192, (160000.0, 10000.0)),
    ],
)
def test_recipes_validate_and_build(recipe, params, seq_len, theta):
    cfg = load_run_config(RECIPES / f"{recipe}.yaml")
    assert cfg.max_seq_len == seq_len
    check_batch_sizes(cfg, world_size=8)
    config = model_config_from(cfg)
    config.pad_token_id = 50283
    with torch.device("meta"):  # shapes and counts without allocating 1.6 GB
        model = FlexBertForMaskedLM(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(params, abs=0.01e6)
    assert (config.rope_theta(0), config.rope_theta(1)) == theta
    assert [config.is_global_layer(i) for i in range(4)] == [True, False, False, True]
    optimizer = build_optimizer(cfg.optimizer, model)
    build_scheduler(cfg.scheduler)  # the recipe's schedule section builds
    assert type(optimizer).__qualname__ == "StableAdamW"
    decay_groups = [g for g in optimizer.param_groups if g["weight_decay"] > 0]
    assert all(p.dim() > 1 for g in decay_groups for p in g["params"])  # no decay on norms and biases
    # tokens per optimizer step stay ~constant across phases (recipe: 96 x 1024 = 12 x 8192 slots per row)
    assert cfg.device_train_microbatch_size * seq_len in (98304, 57344, 56 * 1024, 7 * 8192, 6 * 8192)


def test_unknown_top_level_key_names_the_closest(tmp_path):
    with pytest.raises(RunConfigError, match=r"unknown top-level key `max_duraton`.*did you mean 'max_duration'"):
        load_run_config(RECIPES / "demo.yaml", ["max_duraton=10ba"])


def test_free_variables_are_allowed_only_when_referenced(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("my_data: /x\ndata_local: ${my_data}\nunused_var: 3\n")
    with pytest.raises(RunConfigError, match="unknown top-level key `unused_var`"):
        load_run_config(run)
    run.write_text("my_data: /x\ndata_local: ${my_data}\n")
    assert load_run_config(run).data_local == "/x"


def test_batch_size_must_divide_by_world_size():
    cfg = load_run_config(RECIPES / "pretrain_base.yaml")
    with pytest.raises(RunConfigError, match="does not divide by the world size 7"):
        check_batch_sizes(cfg, world_size=7)
    with pytest.raises(RunConfigError, match="not a multiple of device_train_microbatch_size 96"):
        check_batch_sizes(load_run_config(RECIPES / "pretrain_base.yaml", ["global_train_batch_size=4616"]), world_size=8)


def test_main_reports_setup_errors_in_one_line(tiny_corpus, tmp_path, capsys):
    code = main([str(RECIPES / "demo.yaml"), *tiny_run_overrides(tiny_corpus, tmp_path / "run", data_local=str(tmp_path / "nope"))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "nope" in err and "does not exist" in err
    assert "Traceback" not in err
    code = main([str(RECIPES / "demo.yaml"), *tiny_run_overrides(tiny_corpus, tmp_path / "run"), "model.model_config.mlp_layer=gluu"])
    err = capsys.readouterr().err
    assert code == 2 and "mlp_layer" in err and "did you mean 'glu'" in err


@pytest.mark.slow
def test_one_process_training_learns_and_logs(tiny_corpus, tmp_path):
    folder = tmp_path / "run"
    # the recipes' setting: no training metrics, so training steps compute the loss without logits
    overrides = tiny_run_overrides(tiny_corpus, folder, max_duration="30ba", eval_interval="15ba", save_interval="15ba",
                                   **{"optimizer.lr": 3e-3, "model.disable_train_metrics": True})
    assert main([str(RECIPES / "demo.yaml"), *overrides]) == 0
    records = _metrics(folder)
    losses = [r["loss/train/total"] for r in records if "loss/train/total" in r]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.6, (first, last)  # ln(512) = 6.2 at init; a model that does not learn stays there
    steps = [r["batch"] for r in records]
    assert steps == sorted(set(steps))  # one line per step
    evals = [r for r in records if "metrics/eval/LanguageCrossEntropy" in r]
    assert [r["batch"] for r in evals] == [15, 30]
    assert all(0 <= r["metrics/eval/MaskedAccuracy"] <= 1 for r in evals)
    efficiency = [r["packing_efficiency"] for r in records if "packing_efficiency" in r]
    assert efficiency and min(efficiency) > 0.9
    assert (folder / "latest-rank0.pt").exists() and (folder / "ep0-ba30-rank0.pt").exists()


@pytest.mark.slow
def test_phase_transition_resets_time_and_overrides_lr(tiny_corpus, tmp_path):
    phase1 = tmp_path / "phase1"
    assert main([str(RECIPES / "demo.yaml"), *tiny_run_overrides(tiny_corpus, phase1)]) == 0
    checkpoint = torch.load(phase1 / "latest-rank0.pt", map_location="cpu", weights_only=False)
    saved_moments = checkpoint["state"]["optimizers"]["StableAdamW"]["state"]

    phase2 = tmp_path / "phase2"
    overrides = tiny_run_overrides(
        tiny_corpus, phase2,
        max_seq_len=128,
        **{
            "model.model_config.rotary_emb_base": 160000.0,
            "model.model_config.local_attn_rotary_emb_base": 10000.0,
            "train_loader.batch_size_warmup_min_size": "null",
            "train_loader.batch_size_warmup_tokens": "null",
            "device_train_microbatch_size": 4,
            "global_train_batch_size": 8,
            "device_eval_batch_size": 8,
            "global_eval_batch_size": 8,
            "scheduler.name": "constant_with_warmup",
            "scheduler.t_warmup": "0ba",
            "optimizer.lr": 1e-4,
            "max_duration": "4ba",
            "load_path": str(phase1 / "latest-rank0.pt"),
            "reset_time": True,
            "restart_override": True,
        },
    )
    cfg = load_run_config(RECIPES / "demo.yaml", overrides)
    trainer, reset_time = build_trainer(cfg)
    assert reset_time
    optimizer = trainer.state.optimizers[0]
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-4) and group.get("max_lr", 1e-4) == pytest.approx(1e-4)
    for name, param in trainer.state.model.named_parameters():
        key = name if name in saved_moments else next(k for k in saved_moments if k.endswith(name.split("model.", 1)[-1]))
        assert torch.equal(optimizer.state[param]["exp_avg"], saved_moments[key]["exp_avg"])
    trainer.fit(reset_time=reset_time)
    trainer.close()
    model = trainer.state.model.model
    assert model.config.rope_theta(0) == 160000.0 and model.config.rope_theta(1) == 10000.0
    records = _metrics(phase2)
    assert [r["batch"] for r in records if "loss/train/total" in r] == [1, 2, 3, 4]  # time restarted at zero
    lrs = [r["lr-StableAdamW/group0"] for r in records if "lr-StableAdamW/group0" in r]
    assert lrs and all(lr == pytest.approx(1e-4) for lr in lrs)
