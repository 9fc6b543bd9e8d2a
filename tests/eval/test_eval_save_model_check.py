"""`save_model` with a classification head transformers' ModernBERT cannot express (bert-base's default head has no
norm) stops before any fine-tuning, in one line naming the key, instead of a traceback after training."""

import pytest

from flexbert.eval.__main__ import main
from tests.eval_fixtures import build_starting_points, eval_file, sentiment_records, write_jsonl


@pytest.mark.parametrize("head", [{"head_class_norm": False}, {"head_class_norm": True, "pooling_type": "max"}])
def test_save_model_with_a_head_hf_cannot_express_stops_before_training(tmp_path, capsys, head):
    start = build_starting_points(tmp_path / "start")
    data = {"train": str(write_jsonl(tmp_path / "train.jsonl", sentiment_records(16, 0))),
            "validation": str(write_jsonl(tmp_path / "validation.jsonl", sentiment_records(8, 1)))}
    tasks = {"sent": {"seeds": [1], "trainer_kwargs": {"max_duration": "2ba"}, "data": data}}
    path = eval_file(tmp_path, start["checkpoint"], tasks, save_model="best_seed", model={"model_config": head})
    out = tmp_path / "out"
    capsys.readouterr()
    assert main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    key = next(iter(head)) if len(head) == 1 else "pooling_type"
    assert len(err) == 1 and "save_model: best_seed" in err[0] and f"model_config.{key}" in err[0], err
    run = out / "runs" / "sent" / "seed1"
    assert not (run / "result.json").exists() and not (run / "metrics.jsonl").exists()  # nothing was trained
    assert main([str(path), "--out", str(out), "save_model=none"]) == 0  # the fix the message names works
