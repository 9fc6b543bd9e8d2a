"""W&B: the logged config is the whole resolved run file, and a missing wandb package is one line naming the
run-file key that removes the logger (a key that then works)."""

import glob
import json
import subprocess
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


# One process without wandb (its import fails, as when it is not installed) runs main() several times: a cold
# Composer import costs tens of seconds on a loaded machine, so it is paid once.
WITHOUT_WANDB = """
import contextlib, io, json, sys
sys.modules["wandb"] = None
from flexbert.train.trainer import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_missing_wandb_is_one_line_naming_the_key_that_removes_it(tiny_corpus, tmp_path):
    run_file = str(_run_file_with_wandb(tmp_path))
    overrides = tiny_run_overrides(tiny_corpus, tmp_path / "run", **SHORT)
    calls = [[run_file, *overrides, "--dry-run"], [run_file, *overrides],
             [run_file, *overrides, "loggers={}", "--dry-run"], [run_file, *overrides, "loggers.wandb=null"]]
    done = subprocess.run([sys.executable, "-c", WITHOUT_WANDB, json.dumps(calls)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (dry, start, emptied, nulled) = json.loads(done.stdout.strip().splitlines()[-1])
    for code, stderr in (dry, start):  # validation and a real start stop the same way, before anything is written
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert "wandb" in lines[0] and "loggers.wandb=null" in lines[0]
    assert emptied[0] == 0, emptied[1]     # `loggers={}` removes every logger
    assert nulled[0] == 0, nulled[1]       # the key the message names removes it, and the run trains
    assert (tmp_path / "run" / "latest-rank0.pt").exists()
