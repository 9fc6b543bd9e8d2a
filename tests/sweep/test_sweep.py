"""Tests for flexbert.sweep: the sweep file, dry runs, and the demo ablation sweep end to end on a tiny model.

References are independent of the code under test: OmegaConf's own parser for rendered overrides, nested loops
for grid products, a closed-form parameter count of the ModernBERT blocks, and the runs' raw metrics.jsonl files
(read here) for every number in results.csv.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import statistics
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from data_prep import tokenize_to_mds, train_tokenizer
from flexbert.sweep.__main__ import main as sweep_main
from flexbert.sweep.spec import SweepError, load_sweep, render_value
from tests.helpers import ROOT as REPO

DEMO_SWEEP = REPO / "yamls" / "ablations" / "blocks_demo.yaml"
CSV_COLUMNS = ["variant", "status", "overrides", "params", "final_train_loss", "eval_loss", "eval_masked_accuracy",
               "tokens_per_sec", "peak_rss_mb", "peak_gpu_mem_gb", "wall_s", "tokens", "error"]
TINY = dict(hidden=64, heads=2, layers=3, intermediate=96)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic corpus -> a small BPE tokenizer -> MDS shards of 32-token samples."""
    root = tmp_path_factory.mktemp("sweep_data")
    rng = random.Random(0)
    words = "the a model token layer norm attention window global local mask loss train step data code".split()
    for split, n in (("train", 160), ("validation", 24)):
        lines = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(8, 60)))}) for _ in range(n)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    tok, mds = root / "tokenizer", root / "mds"
    assert train_tokenizer.main(["--input", str(root / "train.jsonl"), "--vocab-size", "300", "--out", str(tok), "--quiet"]) == 0
    assert tokenize_to_mds.main(["--input", str(root / "train.jsonl"), str(root / "validation.jsonl"), "--tokenizer", str(tok),
                                 "--out", str(mds), "--max-seq-len", "32", "--quiet"]) == 0
    from transformers import AutoTokenizer

    vocab = math.ceil(len(AutoTokenizer.from_pretrained(str(tok))) / 64) * 64
    return {"tok": tok, "mds": mds, "vocab": vocab}


def tiny_overrides(data) -> dict:
    """The demo recipe shrunk to seconds per run: tiny model and data, 3 batches, one eval batch at the end."""
    m = "model.model_config."
    return {
        "data_local": str(data["mds"]), "tokenizer_name": str(data["tok"]), "max_seq_len": 32,
        f"{m}vocab_size": data["vocab"], f"{m}max_position_embeddings": 32, f"{m}hidden_size": TINY["hidden"],
        f"{m}num_attention_heads": TINY["heads"], f"{m}num_hidden_layers": TINY["layers"],
        f"{m}intermediate_size": TINY["intermediate"], f"{m}sliding_window": 8,
        "max_duration": "3ba", "eval_interval": "3ba", "eval_subset_num_batches": 1,
        "save_interval": "2ba", "save_num_checkpoints_to_keep": 2,  # checkpoints after batches 2 and 3
        "global_train_batch_size": 8, "device_train_microbatch_size": 4, "global_eval_batch_size": 8,
        "device_eval_batch_size": 8, "train_loader.num_workers": 0,
        "train_loader.batch_size_warmup_tokens": None, "train_loader.batch_size_warmup_min_size": None,
        "callbacks.speed_monitor.window_size": 1, "console_log_interval": "1ba",
    }


def write_sweep(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def tiny_sweep(tmp_path, data, variants, name="tiny") -> Path:
    return write_sweep(tmp_path / f"{name}.yaml", {"name": name, "base": str(REPO / "yamls" / "demo.yaml"),
                                                    "overrides": tiny_overrides(data), "variants": variants})


def run_cli(*argv) -> tuple[int, str]:
    """Exit code and stdout + stderr of `python -m flexbert.sweep ARGV`, run in this process."""
    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(buf):
        code = sweep_main([str(a) for a in argv])
    return code, buf.getvalue()


def expected_params(vocab, hidden, layers, intermediate, glu=True):
    """FlexBertForMaskedLM with the demo's blocks: tied embeddings, bias-free norms and linears, skip_first_prenorm,
    embedding / final / head norms, decoder bias."""
    mlp_in = hidden * intermediate * (2 if glu else 1)
    per_layer = 3 * hidden * hidden + hidden * hidden + mlp_in + intermediate * hidden + 2 * hidden  # + 2 norms
    return (vocab * hidden + hidden  # embeddings + embedding norm
            + layers * per_layer - hidden  # layer 0 has no attention norm
            + hidden  # final norm
            + hidden * hidden + hidden  # head dense + norm
            + vocab)  # decoder bias (weight tied)


# ---------------------------------------------------------------------------------------------- sweep file


def test_render_value_reads_back_with_omegaconf():
    values = ["mlp", "60ba", "100_000tok", "60", "true", "null", "a: b", "x=y", "", "it's", 1e-5, 3.0e-3, -1, 0,
              True, None, [0.9, 0.98], {"eps": 1e-5, "bias": False}, ["a b", 2]]
    for value in values:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"k={render_value(value)}"]))["k"]
        assert parsed == value and type(parsed) is type(value), (value, render_value(value), parsed)


def test_grid_is_the_cartesian_product_with_readable_names(tmp_path):
    sweep = write_sweep(tmp_path / "g.yaml", {"base": str(REPO / "yamls" / "demo.yaml"), "grid": {
        "model.model_config.mlp_layer": ["glu", "mlp"], "model.model_config.normalization": ["layernorm", "rmsnorm", "rmsnorm"],
        "optimizer.betas": [[0.9, 0.98]]}})
    with pytest.raises(SweepError, match="both named"):
        load_sweep(sweep)  # 'rmsnorm' twice: two variants would share a folder
    body = yaml.safe_load(sweep.read_text())
    body["grid"]["model.model_config.normalization"] = ["layernorm", "rmsnorm"]
    spec = load_sweep(write_sweep(sweep, body))
    expected = []
    for mlp in ["glu", "mlp"]:
        for norm in ["layernorm", "rmsnorm"]:
            expected.append((f"mlp_layer={mlp}__normalization={norm}__betas=0.9,0.98",
                             {"model.model_config.mlp_layer": mlp, "model.model_config.normalization": norm,
                              "optimizer.betas": [0.9, 0.98]}))
    assert [(v.name, v.overrides) for v in spec.variants] == expected
    assert spec.name == "g" and spec.base == (REPO / "yamls" / "demo.yaml").resolve()


def test_sweep_file_is_checked_strictly(tmp_path, monkeypatch):
    base = str(REPO / "yamls" / "demo.yaml")
    cases = [
        ({"base": base, "variant": [{}]}, "unknown key `variant` (did you mean 'variants'?)"),
        ({"base": base, "grid": {"seed": [1]}, "variants": [{}]}, "not both"),
        ({"base": base}, "not neither"),
        ({"base": base, "variants": [{"name": "a", "overides": {}}]}, "did you mean 'overrides'"),
        ({"base": base, "variants": [{"overrides": {"save_folder": "/x"}}]}, "set by the sweep"),
        ({"base": base, "variants": [{"name": "a b"}]}, "'a_b'"),
        ({"base": base, "grid": {"seed": 1}}, "non-empty list"),
        ({"base": "nowhere.yaml", "variants": [{}]}, "not found"),
        ({"variants": [{}]}, "`base` is required"),
    ]
    for body, message in cases:
        with pytest.raises(SweepError) as err:
            load_sweep(write_sweep(tmp_path / "s.yaml", body))
        assert message in str(err.value), (body, str(err.value))
    # `base` is looked up next to the sweep file first, then in the current directory.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.yaml").write_text("seed: 1\n")
    spec = load_sweep(write_sweep(tmp_path / "sub" / "s.yaml", {"base": "run.yaml", "variants": [{}]}))
    assert spec.base == (tmp_path / "sub" / "run.yaml").resolve()
    monkeypatch.chdir(REPO)
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", {"base": "yamls/demo.yaml", "variants": [{}]}))
    assert spec.base == (REPO / "yamls" / "demo.yaml").resolve()


def test_demo_sweep_file_loads_with_four_variants():
    spec = load_sweep(DEMO_SWEEP)
    assert spec.base == (REPO / "yamls" / "demo.yaml").resolve()
    assert len(spec.variants) == 4 and spec.variants[0].overrides == {}
    assert spec.common["max_duration"].endswith("ba")


# ---------------------------------------------------------------------------------------------- dry run


def test_dry_run_validates_prints_commands_and_writes_nothing(tmp_path, tiny_data):
    variants = [
        {"name": "ok", "overrides": {"loggers.wandb.project": "p"}},
        {"name": "typo_block", "overrides": {"model.model_config.mlp_layer": "glue"}},
        {"name": "typo_key", "overrides": {"optimizer.weight_decy": 0.1}},
        {"name": "odd_batch", "overrides": {"global_train_batch_size": 12}},  # 12 / 2 ranks = 6, not a multiple of 4
    ]
    sweep = tiny_sweep(tmp_path, tiny_data, variants)
    out = tmp_path / "out"
    code, text = run_cli(sweep, "--out", out, "--dry-run", "--launcher", "composer -n 2")
    assert code == 1 and not out.exists()
    lines = text.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    assert len(commands) == 1 and commands[0].startswith("composer -n 2 main.py yamls/demo.yaml ")
    for expected in ("run_name=ok", f"save_folder={out / 'runs' / 'ok'}", "loggers.wandb.group=tiny", "max_duration=3ba"):
        assert expected in commands[0].split(" ")
    assert "autoresume=true" not in commands[0]
    assert any("typo_block: INVALID" in line and "did you mean 'glu'" in line for line in lines)
    assert any("typo_key: INVALID" in line and "did you mean 'weight_decay'" in line for line in lines)
    assert any("odd_batch: INVALID" in line and "world size 2" in line for line in lines)
    # The printed parameter count is the closed-form count of the tiny model.
    params = expected_params(tiny_data["vocab"], TINY["hidden"], TINY["layers"], TINY["intermediate"])
    assert f"# ok: valid, {params / 1e6:.2f}M parameters" in text


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_demo_sweep_end_to_end_skips_finished_runs_and_reports_failures(tmp_path, tiny_data):
    demo = yaml.safe_load(DEMO_SWEEP.read_text())
    broken = [
        # Passes validation, fails in the run: the first steps blow the weights up to a non-finite loss.
        {"name": "broken_run", "overrides": {"optimizer.lr": 1e30, "optimizer.name": "adamw"}},
        {"name": "broken_config", "overrides": {"model.model_config.normalization": "rms_norm"}},  # fails validation
    ]
    body = {"name": "blocks_tiny", "base": str(REPO / "yamls" / "demo.yaml"),
            "overrides": {**demo["overrides"], **tiny_overrides(tiny_data)}, "variants": demo["variants"] + broken}
    sweep, out = write_sweep(tmp_path / "blocks_tiny.yaml", body), tmp_path / "out"
    demo_names = [v["name"] for v in demo["variants"]]

    start = time.time()
    code, text = run_cli(sweep, "--out", out)
    elapsed = time.time() - start
    assert code == 1, text  # some runs failed

    with open(out / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        rows = {row["variant"]: row for row in reader}
    assert list(rows) == demo_names + ["broken_run", "broken_config"]
    for name in demo_names:
        row = rows[name]
        assert row["status"] == "done", row
        records = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        train = [r["loss/train/total"] for r in records if "loss/train/total" in r]
        evals = [r for r in records if "metrics/eval/LanguageCrossEntropy" in r]
        speeds = [r["throughput/tokens_per_sec"] for r in records if "throughput/tokens_per_sec" in r]
        assert len(train) == 3 and len(evals) == 1 and speeds
        assert float(row["final_train_loss"]) == pytest.approx(sum(train[-5:]) / len(train[-5:]))
        assert float(row["eval_loss"]) == pytest.approx(evals[-1]["metrics/eval/LanguageCrossEntropy"])
        assert float(row["eval_masked_accuracy"]) == pytest.approx(evals[-1]["metrics/eval/MaskedAccuracy"])
        assert float(row["tokens_per_sec"]) == pytest.approx(statistics.median(speeds))
        assert int(row["tokens"]) == max(r["token"] for r in records)
        assert 100 < float(row["peak_rss_mb"]) < 16_000  # a Python process with torch loaded
        assert 0 < float(row["wall_s"]) < elapsed
        assert row["peak_gpu_mem_gb"] == "" and row["error"] == ""
        assert (out / "runs" / name / "log.txt").read_text().count("\n=== ") == 1
    # Same data order for every variant: identical token counts.
    assert len({rows[n]["tokens"] for n in demo_names}) == 1
    v, h, n_layers, inter = tiny_data["vocab"], TINY["hidden"], TINY["layers"], TINY["intermediate"]
    assert int(rows["baseline"]["params"]) == expected_params(v, h, n_layers, inter)
    assert int(rows["rmsnorm"]["params"]) == expected_params(v, h, n_layers, inter)
    assert int(rows["all_global"]["params"]) == expected_params(v, h, n_layers, inter)
    plain_mlp = next(x for x in demo["variants"] if x["name"] == "plain_mlp")["overrides"]
    assert int(rows["plain_mlp"]["params"]) == expected_params(
        v, h, n_layers, plain_mlp["model.model_config.intermediate_size"], glu=False)
    assert rows["plain_mlp"]["overrides"] == "model.model_config.mlp_layer=mlp; model.model_config.intermediate_size=576"

    assert rows["broken_run"]["status"] == "failed" and "non-finite loss" in rows["broken_run"]["error"]
    assert rows["broken_config"]["status"] == "invalid" and "did you mean 'rmsnorm'" in rows["broken_config"]["error"]
    assert not (out / "runs" / "broken_config").exists()  # never launched
    table = (out / "results.md").read_text()
    for name in demo_names:
        assert f"| {name} |" in table and "| done |" in table
    assert "| broken_run |" in table and "| failed |" in table and "| invalid |" in table
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Second invocation, after a simulated crash of the sweep while `rmsnorm` ran between its checkpoints at batches
    # 2 and 3: the finished runs are skipped, `rmsnorm` resumes from batch 2 (autoresume) and ends as before.
    rms = out / "runs" / "rmsnorm"
    first_losses = [json.loads(line).get("loss/train/total") for line in (rms / "metrics.jsonl").read_text().splitlines()]
    (rms / "ep0-ba3-rank0.pt").unlink()
    (rms / "latest-rank0.pt").unlink()
    (rms / "latest-rank0.pt").symlink_to("ep0-ba2-rank0.pt")
    state = json.loads((out / "sweep_state.json").read_text())
    state["runs"]["rmsnorm"]["status"] = "running"
    (out / "sweep_state.json").write_text(json.dumps(state))
    logs = {n: (out / "runs" / n / "log.txt").read_text() for n in demo_names + ["broken_run"] if n != "rmsnorm"}
    (out / "results.csv").unlink()

    code, text = run_cli(sweep, "--out", out)
    assert code == 1, text
    assert text.count("done earlier, skipped") == 3 and "broken_run: failed earlier, skipped" in text
    assert "rmsnorm: resuming" in text
    assert {n: (out / "runs" / n / "log.txt").read_text() for n in logs} == logs  # nothing else ran
    state = json.loads((out / "sweep_state.json").read_text())
    assert {n: state["runs"][n]["attempts"] for n in logs} == {n: 1 for n in logs}
    assert state["runs"]["rmsnorm"]["attempts"] == 2 and state["runs"]["rmsnorm"]["status"] == "done"
    log = (rms / "log.txt").read_text()
    assert log.count("\n=== ") == 2 and log.split("\n=== ")[2].split("\n")[0].endswith("autoresume=true")
    assert (rms / "ep0-ba3-rank0.pt").is_file()
    second_losses = [json.loads(line).get("loss/train/total") for line in (rms / "metrics.jsonl").read_text().splitlines()]
    # The resumed run repeats batch 3 on the same data: the same metrics, no duplicated lines.
    assert [x for x in second_losses if x is not None] == pytest.approx([x for x in first_losses if x is not None], abs=1e-4)
    with open(out / "results.csv", newline="") as fh:
        assert [row["status"] for row in csv.DictReader(fh)] == ["done"] * 4 + ["failed", "invalid"]

    # A dry run now prints no command for finished runs; a run left `running` would resume; a changed variant is refused.
    state["runs"]["all_global"]["status"] = "running"
    (out / "sweep_state.json").write_text(json.dumps(state))
    code, text = run_cli(sweep, "--out", out, "--dry-run")
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(commands) == 1 and "run_name=all_global" in commands[0] and commands[0].endswith("autoresume=true")
    body["variants"][0]["overrides"] = {"seed": 3}
    write_sweep(sweep, body)
    code, text = run_cli(sweep, "--out", out)
    assert code == 2 and "baseline: started with" in text and "different overrides" in text


# ---------------------------------------------------------------------------------------------- downstream evaluation


def test_mean_ranks_over_tasks():
    from flexbert.sweep.evaluation import mean_ranks

    scores = [{"a": 0.9, "b": 0.1}, {"a": 0.5, "b": 0.7}, {"a": 0.5, "b": 0.9}, {"a": 0.2}]
    # a: 0.9 -> 1, 0.5 and 0.5 share ranks 2 and 3 -> 2.5, 0.2 -> 4; b: 0.9 -> 1, 0.7 -> 2, 0.1 -> 3
    assert mean_ranks(scores, ["a", "b"]) == [(1 + 3) / 2, (2.5 + 2) / 2, (2.5 + 1) / 2, None]


@pytest.mark.slow
def test_sweep_with_eval_section_scores_and_ranks_each_variant(tmp_path, tiny_data):
    from tests.eval_fixtures import sentiment_records, write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", sentiment_records(24, 0))
    validation = write_jsonl(tmp_path / "validation.jsonl", sentiment_records(16, 1))
    data = {"train": str(train), "validation": str(validation)}
    evaluation = {"base_run_name": "ignored", "max_seq_len": 32,
                  "trainer_kwargs": {"max_duration": "2ba", "global_train_batch_size": 8, "device_eval_batch_size": 16},
                  "tasks": {"sent": {"seeds": [1, 2], "data": data}, "sent2": {"seeds": [3], "metrics": ["f1"], "data": data}}}
    variants = [{"name": "base"}, {"name": "rms", "overrides": {"model.model_config.normalization": "rmsnorm"}}]
    body = yaml.safe_load(tiny_sweep(tmp_path, tiny_data, variants).read_text())
    sweep, out = write_sweep(tmp_path / "tiny.yaml", {**body, "eval": evaluation}), tmp_path / "out"

    bad = write_sweep(tmp_path / "bad.yaml", {**body, "eval": {**evaluation, "tasks": {"x": {"data": {**data, "label_field": "y"}}}}})
    code, text = run_cli(bad, "--out", tmp_path / "bad_out")
    assert code == 2 and f"{train}:1: field 'y' is missing" in text and not (tmp_path / "bad_out" / "runs").exists()

    code, text = run_cli(sweep, "--out", out)
    assert code == 0, text
    with open(out / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS + ["eval_sent", "eval_sent2", "eval_rank"]
        rows = {row["variant"]: row for row in reader}
    scores = {}
    for name in ("base", "rms"):
        summary = json.loads((out / "runs" / name / "eval" / "results.json").read_text())["summary"]
        values = list(summary["sent"]["accuracy"]["values"].values())
        assert len(values) == 2 and float(rows[name]["eval_sent"]) == pytest.approx(sum(values) / 2)
        assert float(rows[name]["eval_sent2"]) == pytest.approx(summary["sent2"]["f1"]["mean"])
        scores[name] = (float(rows[name]["eval_sent"]), float(rows[name]["eval_sent2"]))
    for name, other in (("base", "rms"), ("rms", "base")):
        expected = sum(1.0 if a > b else 2.0 if a < b else 1.5 for a, b in zip(scores[name], scores[other])) / 2
        assert float(rows[name]["eval_rank"]) == pytest.approx(expected)
    table = (out / "results.md").read_text()
    assert "| sent | sent2 | downstream rank |" in table
    state = json.loads((out / "sweep_state.json").read_text())
    assert {state["runs"][n]["eval_status"] for n in ("base", "rms")} == {"done"}

    code, text = run_cli(sweep, "--out", out)  # everything finished: nothing runs again
    assert code == 0 and text.count("done earlier, skipped") == 2 and "fine-tuning" not in text


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"runs": [1]}'])
def test_damaged_sweep_state_is_named_with_the_fix(tmp_path, content):
    from flexbert.sweep.state import SweepState

    (tmp_path / "sweep_state.json").write_text(content)
    with pytest.raises(SweepError, match=r"sweep_state.json: damaged sweep state .*restore it, or delete it"):
        SweepState(tmp_path, "demo")


def test_error_of_a_log_with_a_progress_bar_is_found():
    """Composer's progress bar redraws its line with carriage returns and colours it; the error printed after it
    is still the headline."""
    from flexbert.sweep.process import error_headline, error_tail

    bar = "".join(f"\rtrain {i:3d}%|\x1b[32m{'#' * (i // 10)}\x1b[0m| {i}/100 [loss=3.2]" for i in range(0, 60, 10))
    for after_bar in ("\r", ""):  # the error on a redrawn line, or right after the unfinished bar
        log = f"=== 2026-12-05 $ python main.py run.yaml\n{bar}{after_bar}error: non-finite loss at step 57\n"
        tail = error_tail(log)
        assert error_headline(tail) == "error: non-finite loss at step 57", repr(tail)
        assert "\x1b" not in tail and "\r" not in tail


def test_unwritable_output_folder_and_damaged_eval_results_are_one_line(tmp_path):
    from types import SimpleNamespace

    from flexbert.sweep.evaluation import task_scores

    sweep = tiny_sweep(tmp_path, {"mds": tmp_path / "mds", "tok": tmp_path / "tok", "vocab": 64}, [{"name": "a"}])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, text = run_cli(sweep, "--out", blocker / "out")
    assert code == 2 and len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    assert f"{blocker / 'out'}: cannot write the sweep's output folder" in text and "--out" in text

    results = tmp_path / "run" / "eval" / "results.json"
    results.parent.mkdir(parents=True)
    for damaged in ("{not json", '{"summary": [1]}', "[]"):
        results.write_text(damaged)
        with pytest.raises(SweepError, match=r"results.json: damaged evaluation results; delete it"):
            task_scores(SimpleNamespace(folder=tmp_path / "run"))
