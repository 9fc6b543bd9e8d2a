"""The edges of a run say what happened: main.py names the checkpoint and step it resumed from and ends with a
summary (final metrics, checkpoint, export command); convert shows its stages and ends naming its output."""

import shlex

import pytest

from flexbert import convert
from flexbert.train.trainer import main
from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

DEMO = str(ROOT / "yamls" / "demo.yaml")


@pytest.mark.slow
def test_resume_line_closing_summary_and_export(tiny_corpus, tmp_path, capsys):
    folder = tmp_path / "run"
    overrides = tiny_run_overrides(tiny_corpus, folder, max_duration="2ba", eval_interval="2ba", save_interval="2ba")
    assert main([DEMO, *overrides]) == 0
    first = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("resumed from") for line in first)
    assert main([DEMO, *overrides, "max_duration=4ba", "autoresume=true"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"resumed from {folder / 'ep0-ba2-rank0.pt'} at step 2 (autoresume)" in out
    done = [line for line in out if line.startswith("done at step 4 | train loss ")]
    assert done and "eval loss" in done[0]
    assert f"checkpoint: {folder / 'latest-rank0.pt'} (-> ep0-ba4-rank0.pt); metrics: {folder / 'metrics.jsonl'}" in out
    [export] = [line for line in out if line.startswith("export: ")]
    command = shlex.split(export.removeprefix("export: "))
    assert command[:3] == ["python", "-m", "flexbert.convert"]

    assert convert.main(command[3:]) == 0  # the printed command works
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "convert: loading torch and transformers"
    assert f"convert: reading {folder / 'latest-rank0.pt'}" in printed
    assert printed[-1].startswith(f"wrote {folder / 'hf'} (config.json, model.safetensors")
    assert "AutoModelForMaskedLM.from_pretrained" in printed[-1]
