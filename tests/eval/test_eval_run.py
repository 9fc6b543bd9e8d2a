"""`python -m flexbert.eval`: fine-tunes tiny pretrained models on tiny task files, resumes, fails clearly."""

import csv
import json
import time

import pytest
import torch

from flexbert.eval.__main__ import main
from tests.eval_fixtures import build_starting_points, eval_file, sentiment_records, write_jsonl


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return build_starting_points(tmp_path_factory.mktemp("start"))


@pytest.fixture
def task_files(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", sentiment_records(48, 0)),
            write_jsonl(tmp_path / "validation.jsonl", sentiment_records(24, 1)))


@pytest.mark.slow
def test_runs_writes_three_files_and_resumes_skipping_finished_pairs(tmp_path, start, task_files, capsys):
    train, validation = task_files
    tasks = {"sent": {"seeds": [1, 2], "data": {"train": str(train), "validation": str(validation)}},
             "sent_f1": {"seeds": [3], "metrics": ["f1", "matthews"],
                         "data": {"train": str(train), "validation": str(validation), "labels": ["neg", "pos"]}}}
    path, out = eval_file(tmp_path, start["checkpoint"], tasks), tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    values = summary["sent"]["accuracy"]["values"]
    assert set(values) == {"1", "2"} and set(summary["sent_f1"]) == {"f1", "matthews"}
    assert summary["sent"]["accuracy"]["mean"] == pytest.approx(sum(values.values()) / 2)
    assert summary["sent"]["accuracy"]["std"] == pytest.approx(abs(values["1"] - values["2"]) / 2**0.5)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["task"], r["metric"], r["seed"]) for r in rows} >= {("sent", "accuracy", "1"), ("sent", "accuracy", "mean")}
    assert "| sent | accuracy | 1, 2 |" in (out / "results.md").read_text()

    # a run killed during (sent, seed 2): its result file never appeared; the rerun trains only that pair
    finished = out / "runs" / "sent" / "seed1" / "result.json"
    before = finished.stat().st_mtime_ns
    (out / "runs" / "sent" / "seed2" / "result.json").unlink()
    capsys.readouterr()
    assert main([str(path), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "2 finished (task, seed) pair(s) skipped" in log and "fine-tuning sent seed 2" in log
    assert "seed 1" not in log.replace("seed 2", "") and finished.stat().st_mtime_ns == before
    assert json.loads((out / "results.json").read_text())["summary"]["sent"]["accuracy"]["values"]["1"] == values["1"]


@pytest.mark.slow
def test_learns_a_keyword_task_from_a_hugging_face_folder(tmp_path, start, task_files):
    train, validation = task_files
    tasks = {"sent": {"seeds": [5], "trainer_kwargs": {"max_duration": "40ba"},
                      "data": {"train": str(train), "validation": str(validation)}}}
    path = eval_file(tmp_path, start["hf"], tasks)
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["summary"]["sent"]["accuracy"]["mean"] >= 0.9


def test_encoder_and_mlm_head_come_from_the_checkpoint_and_random_init_does_not(tmp_path, start, task_files):
    from flexbert.checkpoints.loading import load_checkpoint_file, model_state
    from flexbert.eval.finetune import build_model, read_task
    from flexbert.eval.spec import load_eval_file
    from flexbert.eval.starting_point import load_tokenizer

    train, validation = task_files
    path = eval_file(tmp_path, start["checkpoint"], {"sent": {"data": {"train": str(train), "validation": str(validation)}}})
    state = model_state(load_checkpoint_file(str(start["checkpoint"])))
    for pretrained in ("true", "false"):
        spec = load_eval_file(path, [f"model.use_pretrained={pretrained}"])
        task = spec.tasks[0]
        model = build_model(spec, task, read_task(task), load_tokenizer(spec, tmp_path / "tok"))
        names = [k for k, v in model.state_dict().items() if k.startswith(("bert.", "head."))]
        same = [torch.equal(model.state_dict()[k], state[k]) for k in names]
        if pretrained == "true":
            assert all(same) and len(names) == len([k for k in state if k.startswith(("bert.", "head."))])
        else:  # norms start at one either way; every matrix must differ
            assert not any(s for s, k in zip(same, names) if state[k].dim() == 2)


def _fails(capsys, args, *needles):
    start = time.time()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert time.time() - start < 10 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_task_files_fail_in_seconds_naming_file_line_and_field(tmp_path, start, capsys):
    good = sentiment_records(8, 0)
    cases = {
        "missing": ([*good[:3], {"txt": "x", "label": "pos"}], ":4: field 'text' is missing"),
        "unknown": ([*good[:5], {"text": "a b", "label": "maybe"}], ":6: field 'label' has unknown label 'maybe'"),
        "empty": ([], "the validation split has no records"),
    }
    train = write_jsonl(tmp_path / "train.jsonl", good)
    for name, (records, needle) in cases.items():
        validation = write_jsonl(tmp_path / f"{name}.jsonl", records)
        path = eval_file(tmp_path, start["checkpoint"], {"t": {"data": {"train": str(train), "validation": str(validation)}}})
        _fails(capsys, [str(path), "--out", str(tmp_path / "out")], f"{validation}", needle)
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\na b\tpos\nc d\n")
    path = eval_file(tmp_path, start["checkpoint"], {"t": {"data": {"train": str(tsv), "validation": str(tsv), "text_field": "sentence"}}})
    _fails(capsys, [str(path)], f"{tsv}:3: field 'label' is missing")
    assert not (tmp_path / "out").exists()


def test_unknown_and_unsupported_keys_are_named(tmp_path, start, capsys, task_files):
    train, validation = task_files
    tasks = {"t": {"data": {"train": str(train), "validation": str(validation)}}}
    path = eval_file(tmp_path, start["checkpoint"], tasks)
    _fails(capsys, [str(path), "tasks.t.trainer_kwargs.max_durration=1ba"], "tasks.t.trainer_kwargs.max_durration", "max_duration")
    _fails(capsys, [str(path), "paralel=true"], "`paralel`", "parallel")
    _fails(capsys, [str(path), "model.pretrained_checkpoint=x"], "model.pretrained_checkpoint", "starting_checkpoint_load_path")
    _fails(capsys, [str(path), "model.name=mosaic_bert"], "model.name: mosaic_bert")
    _fails(capsys, [str(path), "tasks.record.seeds=[1]"], "task `record` is not supported")


@pytest.mark.slow
def test_csv_parquet_regression_and_multi_label_tasks(tmp_path, start):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = sentiment_records(24, 2)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "score"])
        for i, r in enumerate(records):
            writer.writerow([r["text"], records[-i]["text"], float(r["label"] == "pos") + 0.1 * i])
    multi = [{"text": r["text"], "tags": [w for w in ("alpha", "beta", "gamma") if w in r["text"]] or ["none"]} for r in records]
    pq.write_table(pa.Table.from_pylist(multi), tmp_path / "multi.parquet")
    tasks = {
        "sts": {"data": {"train": str(tmp_path / "pairs.csv"), "validation": str(tmp_path / "pairs.csv"), "text_field": "a",
                         "text_pair_field": "b", "label_field": "score", "problem_type": "regression"}},
        "tags": {"model_config": {"problem_type": "multi_label_classification"},
                 "data": {"train": str(tmp_path / "multi.parquet"), "validation": str(tmp_path / "multi.parquet"), "label_field": "tags"}},
    }
    path = eval_file(tmp_path, start["checkpoint"], tasks, trainer_kwargs={"max_duration": "2ba", "global_train_batch_size": 8})
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "results.json").read_text())["summary"]
    assert set(summary["sts"]) == {"pearson", "spearman"} and set(summary["tags"]) == {"f1_micro", "f1_macro"}


@pytest.mark.slow
def test_glue_task_through_the_datasets_library(tmp_path, start):
    datasets = pytest.importorskip("datasets")
    from flexbert.eval.glue_tasks import read_glue_task

    rows = [{"sentence1": r["text"], "sentence2": "alpha beta", "label": int(r["label"] == "pos"), "idx": i}
            for i, r in enumerate(sentiment_records(20, 3))]
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]), "idx": datasets.Value("int32")})
    folder = tmp_path / "mrpc"
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows, features=features) for split in ("train", "validation")}).save_to_disk(str(folder))
    data = read_glue_task("mrpc", str(folder))
    assert [e.label for e in data.validation] == [r["label"] for r in rows]
    assert (data.train[0].text, data.train[0].text_pair) == (rows[0]["sentence1"], "alpha beta")
    path = eval_file(tmp_path, start["checkpoint"], {"mrpc": {"data": {"dataset": str(folder)}}},
                     trainer_kwargs={"max_duration": "2ba", "global_train_batch_size": 8})
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())["summary"]["mrpc"]) == {"accuracy", "f1"}


@pytest.mark.slow
def test_parallel_runs_each_task_in_its_own_process(tmp_path, start, task_files, capsys):
    train, validation = task_files
    data = {"train": str(train), "validation": str(validation)}
    tasks = {"one": {"seeds": [1], "data": data}, "two": {"seeds": [2], "data": data}}
    path = eval_file(tmp_path, start["checkpoint"], tasks, trainer_kwargs={"max_duration": "1ba", "global_train_batch_size": 8},
                     parallel=True)
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.count("started ") == 2
    for name, seed in (("one", 1), ("two", 2)):
        result = json.loads((tmp_path / "out" / "runs" / name / f"seed{seed}" / "result.json").read_text())
        assert result["steps"] == 1
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())["summary"]) == {"one", "two"}
