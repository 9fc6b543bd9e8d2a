"""`python -m flexbert.eval` results by content, one evaluation per folder, saved models a transformers pipeline
runs, and one-line errors for bad inputs (tiny model, a few steps)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from flexbert.eval.__main__ import main
from tests.eval_fixtures import build_starting_points, eval_file, sentiment_records, write_jsonl
from tests.helpers import process_alive

FAST = {"max_duration": "2ba", "global_train_batch_size": 8, "device_eval_batch_size": 16}


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return build_starting_points(tmp_path_factory.mktemp("start"))


@pytest.fixture
def task(tmp_path):
    return {"train": str(write_jsonl(tmp_path / "train.jsonl", sentiment_records(16, 0))),
            "validation": str(write_jsonl(tmp_path / "validation.jsonl", sentiment_records(8, 1)))}


def _fails(capsys, args, *needles):
    began = time.time()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert time.time() - began < 20 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.slow
def test_a_checkpoint_retrained_at_the_same_path_is_evaluated_again(tmp_path, start, task, capsys):
    from flexbert import FlexBertConfig, FlexBertForMaskedLM
    from flexbert.convert import hf_to_composer
    from tests.eval_fixtures import TINY

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(start["checkpoint"].read_bytes())
    path, out = eval_file(tmp_path, checkpoint, {"sent": {"seeds": [1], "data": task}}, trainer_kwargs=FAST), tmp_path / "out"
    result_file = out / "runs" / "sent" / "seed1" / "result.json"
    assert main([str(path), "--out", str(out)]) == 0
    first = json.loads(result_file.read_text())

    capsys.readouterr()
    assert main([str(path), "--out", str(out)]) == 0  # unchanged: skipped
    assert "1 finished (task, seed) pair(s) skipped" in capsys.readouterr().out
    assert json.loads(result_file.read_text()) == first

    # "retraining" into the same path: other weights, same file name (and a size that may well be equal)
    torch.manual_seed(123)
    other = FlexBertForMaskedLM(FlexBertConfig(**TINY, pad_token_id=0))
    other.save_pretrained(tmp_path / "other_hf", tokenizer=__import__("transformers").AutoTokenizer.from_pretrained(start["tokenizer"]))
    hf_to_composer(tmp_path / "other_hf", checkpoint)
    assert main([str(path), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "fine-tuning sent seed 1 again: the starting checkpoint's content changed" in log, log
    second = json.loads(result_file.read_text())
    assert first["start"]["path"] == str(checkpoint) and first["start"]["random_init"] is False
    assert second["start"]["sha256"] != first["start"]["sha256"] and second["fingerprint"] != first["fingerprint"]
    recorded = json.loads((out / "results.json").read_text())
    assert recorded["start"]["sha256"] == second["start"]["sha256"]
    assert second["start"]["sha256"][:16] in (out / "results.md").read_text()
    assert f",{second['start']['sha256']}," in (out / "results.csv").read_text()


def test_a_second_evaluation_into_a_held_folder_fails_at_once_naming_the_holder(tmp_path, start, task, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from flexbert.folder_lock import hold_folder
            hold_folder({str(out)!r}, "evaluation", "first")
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        path = eval_file(tmp_path, start["checkpoint"], {"sent": {"seeds": [1], "data": task}}, trainer_kwargs=FAST)
        _fails(capsys, [str(path), "--out", str(out)], "in use by", f"pid {holder.pid}")
        assert not (out / "runs").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_best_seed_model_runs_in_a_transformers_pipeline_with_the_task_labels(tmp_path, start, task, capsys):
    from transformers import AutoTokenizer, pipeline

    from flexbert import FlexBertForSequenceClassification

    path = eval_file(tmp_path, start["checkpoint"], {"sent": {"seeds": [1, 2], "data": task}},
                     trainer_kwargs=FAST, save_model="best_seed")
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "results: " in log.splitlines()[-1] and str(out / "models" / "sent") in log.splitlines()[-1]
    folder = out / "models" / "sent"
    results = {s: json.loads((out / "runs" / "sent" / f"seed{s}" / "result.json").read_text()) for s in (1, 2)}
    record = json.loads((folder / "flexbert_eval.json").read_text())
    assert record["seed"] == max((1, 2), key=lambda s: results[s]["metrics"]["accuracy"])
    assert not any((out / "runs" / "sent" / f"seed{s}" / "model").exists() for s in (1, 2))

    texts = ["alpha good beta", "bad gamma delta", "omega awful", "fine zeta kappa theta"]
    classify = pipeline("text-classification", model=str(folder), top_k=None)
    got = [{d["label"]: d["score"] for d in row} for row in classify(texts)]
    assert all(set(row) == {"neg", "pos"} for row in got)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ours = FlexBertForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        probs = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.softmax(-1)
    labels = ours.config.id2label
    for row, p in zip(got, probs):
        for i, score in enumerate(p.tolist()):
            assert row[labels[i]] == pytest.approx(score, abs=1e-5)

    capsys.readouterr()
    assert main([str(path), "--out", str(out)]) == 0  # everything current, model kept: nothing retrained
    assert "2 finished (task, seed) pair(s) skipped" in capsys.readouterr().out


def test_overrides_after_options_and_a_list_file(tmp_path, start, task, capsys):
    path = eval_file(tmp_path, start["checkpoint"], {"sent": {"seeds": [1], "data": task}}, trainer_kwargs=FAST)
    _fails(capsys, [str(path), "--out", str(tmp_path / "out"), "paralel=true"], "`paralel`", "parallel")
    listed = tmp_path / "list.yaml"
    listed.write_text("- base_run_name: x\n- tasks: {}\n")
    err = _fails(capsys, [str(listed)], str(listed), "is a list", "mapping")
    assert "omegaconf" not in err.lower() and "ListConfig" not in err


def test_bad_task_and_result_files_and_unwritable_output_are_one_line(tmp_path, start, task, capsys):
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_bytes(b'{"text": "alpha good", "label": "pos"}\n{"text": "a \xff b", "label": "neg"}\n')
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"text,label\nalpha good,pos\nb\xc3\x28ad,neg\n")
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    for bad, needle in ((bad_jsonl, f"{bad_jsonl}:2: not UTF-8"), (bad_csv, f"{bad_csv}:3: not UTF-8"),
                        (bad_parquet, f"{bad_parquet}: not a readable parquet file")):
        path = eval_file(tmp_path, start["checkpoint"], {"t": {"data": {"train": task["train"], "validation": str(bad)}}})
        _fails(capsys, [str(path), "--out", str(tmp_path / "out")], needle)

    path = eval_file(tmp_path, start["checkpoint"], {"sent": {"seeds": [1], "data": task}}, trainer_kwargs=FAST)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails(capsys, [str(path), "--out", str(blocker / "out")], str(blocker / "out"), "cannot write", "--out")

    out = tmp_path / "out"
    result = out / "runs" / "sent" / "seed1" / "result.json"
    result.parent.mkdir(parents=True)
    for damaged in ('{"task": "sent", "seed": 1, "metr', '{"task": "sent", "seed": 1}', "\xff"):
        result.write_text(damaged, encoding="latin-1")
        _fails(capsys, [str(path), "--out", str(out)], str(result), "damaged result file", "delete it")
        _fails(capsys, [str(path), "--out", str(out), "--report"], str(result), "damaged result file")


@pytest.mark.slow
def test_a_sigkilled_sweep_leaves_no_child_running(tmp_path):
    """The sweep's runner (training runs and evaluations alike go through `execute`) is killed with SIGKILL while
    its child runs: the child must be gone within seconds."""
    child_pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from flexbert.sweep.process import execute
        child = "import os, time; open({str(child_pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
        execute([sys.executable, "-c", child], Path({str(tmp_path / 'log.txt')!r}))
    """)
    sweep = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not (child_pid_file.is_file() and child_pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        child = int(child_pid_file.read_text())
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
        deadline = time.time() + 10
        while process_alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not process_alive(child), "the sweep's child outlived it"
    finally:
        if child_pid_file.is_file() and child_pid_file.read_text() and process_alive(int(child_pid_file.read_text())):
            os.kill(int(child_pid_file.read_text()), signal.SIGKILL)

