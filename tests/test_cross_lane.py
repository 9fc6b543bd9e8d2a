"""A checkpoint, its tokenizer and its Hugging Face export written under the other software lane (transformers
4.57 / torch 2.7 in .venv, or transformers 5 / torch 2.11 in .venv-next; see tests/cross_lane_writer.py) load,
convert and resume under this one. Run from each lane, this checks both directions (`make test-next` does)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

PINNED_LANE = torch.__version__.startswith("2.7.")
OTHER_VENV, OTHER_TARGET = (".venv-next", "make venv-next") if PINNED_LANE else (".venv", "make venv")


@pytest.fixture(scope="module")
def other_lane_run(tiny_corpus, tmp_path_factory):
    python = ROOT / OTHER_VENV / "bin" / "python"
    if not python.exists():  # a missing lane is a failure, never a skip: the check would silently stop running
        pytest.fail(f"{python} is missing: run `{OTHER_TARGET}` (the cross-lane tests run the other lane's python)")
    out = tmp_path_factory.mktemp("other_lane")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run([str(python), "-m", "tests.cross_lane_writer", str(out), str(tiny_corpus)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written_by = json.loads((out / "written_by.json").read_text())
    assert written_by["torch"].startswith("2.7.") != PINNED_LANE  # really the other lane
    return out, written_by


@pytest.mark.slow
def test_hf_export_and_tokenizer_of_the_other_lane_give_its_logits_here(other_lane_run):
    from transformers import AutoModelForMaskedLM

    from flexbert.model.modeling import FlexBertForMaskedLM
    from flexbert.tokenizer_source import load_tokenizer

    out, written_by = other_lane_run
    tokenizer = load_tokenizer(str(out / "hf"))
    ids = tokenizer("def main(argv): return 0", return_tensors="pt")
    assert ids["input_ids"][0].tolist() == written_by["input_ids"]
    expected = torch.load(out / "logits.pt")  # the other lane's transformers on its own export
    hf = AutoModelForMaskedLM.from_pretrained(out / "hf", attn_implementation="eager").eval()
    ours = FlexBertForMaskedLM.from_pretrained(str(out / "hf")).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(**ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits,
                                   expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_checkpoint_of_the_other_lane_converts_and_resumes_here(other_lane_run, tiny_corpus, tmp_path):
    from flexbert.convert import main as convert
    from flexbert.train.trainer import main as train

    out, _ = other_lane_run
    checkpoint = out / "run" / "latest-rank0.pt"
    assert convert(["composer-to-hf", str(checkpoint), str(tmp_path / "hf")]) == 0
    from safetensors.torch import load_file
    here, there = load_file(tmp_path / "hf" / "model.safetensors"), load_file(out / "hf" / "model.safetensors")
    assert here.keys() == there.keys() and all(torch.equal(here[k], there[k]) for k in here)
    # the other lane's run continues here: model, optimizer, schedule and loader state from its checkpoint
    overrides = tiny_run_overrides(tiny_corpus, tmp_path / "resumed", load_path=str(checkpoint), max_duration="3ba",
                                   eval_interval="10ba", save_interval="3ba")
    assert train([str(ROOT / "yamls" / "demo.yaml"), *overrides]) == 0
    resumed = torch.load(tmp_path / "resumed" / "latest-rank0.pt", map_location="cpu", weights_only=False)
    assert resumed["state"]["timestamp"]["Timestamp"]["batch"] == 3  # 2 batches there, 1 here
