"""A save folder belongs to one run: a new run with a different config stops with a message; with save_overwrite
it replaces the old run and removes what was derived from it (curves.png, hf/)."""

import json

import pytest

from flexbert.train.trainer import main
from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

DEMO = str(ROOT / "yamls" / "demo.yaml")
SHORT = dict(max_duration="2ba", eval_interval="2ba", save_interval="2ba")


@pytest.mark.slow
def test_second_run_into_a_used_folder_stops_unless_overwrite(tiny_corpus, tmp_path, capsys):
    folder = tmp_path / "run"
    first = tiny_run_overrides(tiny_corpus, folder, **SHORT)
    assert main([DEMO, *first, "save_overwrite=false"]) == 0
    (folder / "curves.png").write_bytes(b"picture of the first run")
    (folder / "hf").mkdir()
    (folder / "hf" / "config.json").write_text("{}")
    checkpoint = (folder / "latest-rank0.pt").resolve().read_bytes()
    capsys.readouterr()

    second = tiny_run_overrides(tiny_corpus, folder, **SHORT, **{"optimizer.lr": 1e-3})
    assert main([DEMO, *second, "save_overwrite=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"save_folder {folder} holds another run's checkpoints" in err[0], err
    assert "optimizer.lr" in err[0] and "save_overwrite=true" in err[0]
    assert (folder / "latest-rank0.pt").resolve().read_bytes() == checkpoint  # nothing of the first run touched
    assert (folder / "curves.png").exists() and (folder / "hf").is_dir()
    assert main([DEMO, *second, "save_overwrite=false", "--dry-run"]) == 2  # validation says it too

    assert main([DEMO, *second, "save_overwrite=true"]) == 0
    assert not (folder / "curves.png").exists() and not (folder / "hf").exists()
    recorded = json.loads((folder / "run_config.json").read_text())["config"]
    assert recorded["optimizer"]["lr"] == 1e-3
    assert (folder / "latest-rank0.pt").resolve().read_bytes() != checkpoint


@pytest.mark.slow
def test_same_run_restarted_without_autoresume_is_named(tiny_corpus, tmp_path, capsys):
    folder = tmp_path / "run"
    overrides = tiny_run_overrides(tiny_corpus, folder, **SHORT)
    assert main([DEMO, *overrides, "save_overwrite=false"]) == 0
    capsys.readouterr()
    assert main([DEMO, *overrides, "save_overwrite=false", "--dry-run"]) == 2
    assert "this run's checkpoints from an earlier start" in capsys.readouterr().err
    assert main([DEMO, *overrides, "save_overwrite=false", "autoresume=true", "--dry-run"]) == 0
