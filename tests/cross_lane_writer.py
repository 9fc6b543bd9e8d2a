"""Run by tests/test_cross_lane.py under the OTHER software lane's python (`python -m tests.cross_lane_writer OUT
CORPUS`): trains 2 batches of the tiny demo run (a Composer checkpoint), converts it to a Hugging Face folder with
its tokenizer, and records what this lane's transformers computes from that folder (logits, token ids)."""

import json
import sys
from pathlib import Path

import torch

from flexbert.convert import main as convert
from flexbert.train.trainer import main as train
from tests.helpers import ROOT
from tests.tiny_setup import tiny_run_overrides

TEXT = "def main(argv): return 0"


def write(out: Path, corpus: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    overrides = tiny_run_overrides(corpus, out / "run", max_duration="2ba", save_interval="2ba", eval_interval="10ba")
    assert train([str(ROOT / "yamls" / "demo.yaml"), *overrides]) == 0
    assert convert(["composer-to-hf", str(out / "run" / "latest-rank0.pt"), str(out / "hf")]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    ids = tokenizer(TEXT, return_tensors="pt")
    model = AutoModelForMaskedLM.from_pretrained(out / "hf", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.save(model(**ids).logits, out / "logits.pt")
    import transformers
    (out / "written_by.json").write_text(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                                                     "input_ids": ids["input_ids"][0].tolist()}))


if __name__ == "__main__":
    write(Path(sys.argv[1]), Path(sys.argv[2]))
