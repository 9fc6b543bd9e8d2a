"""W&B: the logged config is the whole resolved run file (an evaluation's: the whole evaluation file), and a missing
wandb package is one line naming the run-file key that removes the logger (a key that then works)."""

import contextlib
import glob
import io
import json
import sys

import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

pytest.importorskip("wandb")

SHORT = dict(max_duration="2ba", eval_interval="2ba", save_interval="2ba")


def _run_file_with_wandb(tmp_path):
    """yamls/demo.yaml as a user would extend it: a `loggers.wandb` section in the file."""
    cfg = OmegaConf.load(ROOT / "yamls" / "demo.yaml")
    cfg.loggers.wandb = {"project": "flexbert-test"}
    path = tmp_path / "run.yaml"
    OmegaConf.save(cfg, path)
    return path


def _offline_config(wandb_dir) -> dict:
    """The config an offline run recorded, read back from its .wandb file (what `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    [path] = glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    store = DataStore()
    store.open_for_scan(path)
    config = {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        items = record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        for item in items:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


@pytest.mark.slow
def test_offline_run_logs_the_whole_run_file(tiny_corpus, tmp_path, monkeypatch):
    from flexbert.train.run_config import load_run_config
    from flexbert.train.trainer import main

    import wandb

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    wandb.teardown()  # wandb reads its settings once per process: an earlier test's run must not fix WANDB_DIR
    overrides = tiny_run_overrides(tiny_corpus, tmp_path / "run", **SHORT)
    assert main([str(_run_file_with_wandb(tmp_path)), *overrides]) == 0
    logged = _offline_config(tmp_path)

    expected = load_run_config(_run_file_with_wandb(tmp_path), overrides).to_dict()
    assert logged["model"]["model_config"] == expected["model"]["model_config"]
    for key in ("optimizer", "scheduler", "global_train_batch_size", "max_seq_len", "data_local", "train_loader"):
        assert logged[key] == expected[key], key


def test_offline_eval_logs_the_whole_eval_file(tmp_path, monkeypatch):
    """Each (task, seed) of `python -m flexbert.eval` is one W&B run whose config is the evaluation file (model_config,
    task settings, optimizer, ...) plus the task, seed and starting point it fine-tunes."""
    import yaml

    import wandb
    from flexbert.eval.__main__ import main
    from tests.eval_fixtures import build_starting_points, eval_file, sentiment_records, write_jsonl

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    wandb.teardown()
    start = build_starting_points(tmp_path / "start")
    data = {"train": str(write_jsonl(tmp_path / "train.jsonl", sentiment_records(16, 0))),
            "validation": str(write_jsonl(tmp_path / "validation.jsonl", sentiment_records(8, 1)))}
    tasks = {"sent": {"seeds": [3], "trainer_kwargs": {"max_duration": "2ba"}, "data": data}}
    path = eval_file(tmp_path, start["checkpoint"], tasks, loggers={"wandb": {"project": "flexbert-test"}})
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    logged = _offline_config(tmp_path)

    written = yaml.safe_load(path.read_text())  # the evaluation file as the user wrote it
    assert logged["model"]["model_config"] == written["model"]["model_config"]
    assert logged["tasks"] == written["tasks"]
    for key in ("optimizer", "trainer_kwargs", "max_seq_len", "base_run_name", "starting_checkpoint_load_path"):
        assert logged[key] == written[key], key
    assert logged["precision"] == "fp32" and "scheduler" in logged  # keys the file leaves out: their defaults
    assert (logged["task"], logged["seed"]) == ("sent", 3)
    assert logged["start"]["path"] == str(start["checkpoint"]) and logged["start"]["random_init"] is False


def _without_wandb(monkeypatch, main, calls: list[list[str]]) -> list[tuple[int, str]]:
    """(exit code, stderr) of each `main(args)` while `import wandb` fails, as when the package is not installed.
    In this process: `None` in sys.modules makes every later `import wandb` raise, whatever imported it before."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    results = []
    for args in calls:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(args)
        results.append((code, err.getvalue()))
    return results


@pytest.mark.slow
def test_missing_wandb_is_one_line_naming_the_key_that_removes_it(tiny_corpus, tmp_path, monkeypatch):
    from flexbert.train.trainer import main

    run_file = str(_run_file_with_wandb(tmp_path))
    overrides = tiny_run_overrides(tiny_corpus, tmp_path / "run", **SHORT)
    calls = [[run_file, *overrides, "--dry-run"], [run_file, *overrides],
             [run_file, *overrides, "loggers={}", "--dry-run"], [run_file, *overrides, "loggers.wandb=null"]]
    (dry, start, emptied, nulled) = _without_wandb(monkeypatch, main, calls)
    for code, stderr in (dry, start):  # validation and a real start stop the same way, before anything is written
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert "wandb" in lines[0] and "loggers.wandb=null" in lines[0]
    assert emptied[0] == 0, emptied[1]     # `loggers={}` removes every logger
    assert nulled[0] == 0, nulled[1]       # the key the message names removes it, and the run trains
    assert (tmp_path / "run" / "latest-rank0.pt").exists()


def test_eval_without_wandb_stops_before_training_in_one_line_naming_the_key(tmp_path, monkeypatch):
    from flexbert.eval.__main__ import main
    from tests.eval_fixtures import build_starting_points, eval_file, sentiment_records, write_jsonl

    start = build_starting_points(tmp_path / "start")
    data = {"train": str(write_jsonl(tmp_path / "train.jsonl", sentiment_records(16, 0))),
            "validation": str(write_jsonl(tmp_path / "validation.jsonl", sentiment_records(8, 1)))}
    tasks = {"sent": {"seeds": [3], "trainer_kwargs": {"max_duration": "2ba"}, "data": data}}
    path = str(eval_file(tmp_path, start["checkpoint"], tasks, loggers={"wandb": {"project": "flexbert-test"}}))
    stopped, nulled = tmp_path / "stopped", tmp_path / "nulled"
    calls = [[path, "--out", str(stopped)], [path, "--out", str(nulled), "loggers.wandb=null"]]
    (code, stderr), (nulled_code, nulled_err) = _without_wandb(monkeypatch, main, calls)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "wandb" in lines[0] and "loggers.wandb=null" in lines[0]
    assert not (stopped / "runs").exists()  # stopped before any fine-tuning
    assert nulled_code == 0, nulled_err  # the key the message names removes the logger, and the evaluation runs
    assert (nulled / "results.json").exists()
