"""Run, evaluation and sweep files: one YAML reader, one error family, one duration parser.

A broken file or override ends each command with one line naming the file and line (or the override), exit 2,
never a traceback; every such error is a `ConfigError`. Reference-style evaluation files load: the reference's
`model_config.sparse_prediction` and `trainer_kwargs.eval_subset_num_batches` keep its meaning, and its
single-task fine-tuning run files are refused saying why.
"""

import re
from pathlib import Path

import pytest
from composer.core import Time, TimeUnit

from flexbert.config import FlexBertConfigError
from flexbert.duration import parse_duration
from flexbert.eval.__main__ import main as eval_main
from flexbert.eval.metrics import MetricError
from flexbert.eval.spec import EvalConfigError, load_eval_file
from flexbert.schema import ConfigError
from flexbert.sweep.__main__ import main as sweep_main
from flexbert.sweep.spec import SweepError, load_sweep
from flexbert.train.run_config import RunConfigError, load_run_config
from flexbert.train.trainer import main as run_main
from tests.helpers import ROOT


# Line 3 holds the syntax error (an unclosed flow sequence followed by a key): PyYAML reports it on line 4,
# where the parser finds `:` instead of `,` or `]`.
BROKEN = "a: 1\nb:\n  c: [1, 2\n  d: 3\n"
BROKEN_LINE = 4
# A mapping value where a plain scalar is: PyYAML reports line 2.
BROKEN_COLON = "base: run.yaml\nname: a: b\n"

EVAL_FILE = """\
base_run_name: ref-eval
tokenizer_name: tok
model:
  name: flex_bert
  use_pretrained: false
  tokenizer_name: ${tokenizer_name}
  model_config:
    hidden_size: 64
    num_attention_heads: 4
    sparse_prediction: false
tasks:
  mnli:
    seeds: [23]
    trainer_kwargs:
      save_num_checkpoints_to_keep: 1
      eval_subset_num_batches: 2
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _one_line(text: str) -> str:
    assert "Traceback" not in text and "\n" not in text.strip(), text
    return text.strip()


@pytest.mark.parametrize("load, error", [
    (lambda p: load_run_config(p), RunConfigError),
    (lambda p: load_eval_file(p), EvalConfigError),
    (lambda p: load_sweep(p), SweepError),
])
def test_syntax_error_names_file_and_line(tmp_path, load, error):
    path = _write(tmp_path / "broken.yaml", BROKEN)
    with pytest.raises(error) as caught:
        load(path)
    message = _one_line(str(caught.value))
    assert message.startswith(f"{path}:{BROKEN_LINE}: cannot parse YAML: "), message
    assert isinstance(caught.value, ConfigError)

    path = _write(tmp_path / "colon.yaml", BROKEN_COLON)
    with pytest.raises(error, match=rf"^{re.escape(str(path))}:2: cannot parse YAML: mapping values are not allowed"):
        load(path)


@pytest.mark.parametrize("cli", [run_main, eval_main, sweep_main], ids=["main", "eval", "sweep"])
def test_each_command_prints_one_line_for_a_broken_file(tmp_path, capsys, cli):
    path = _write(tmp_path / "broken.yaml", BROKEN)
    assert cli([str(path)]) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err).startswith(f"error: {path}:{BROKEN_LINE}: cannot parse YAML"), captured.err

    assert cli([str(tmp_path / "absent.yaml")]) == 2
    assert _one_line(capsys.readouterr().err).startswith(f"error: {tmp_path / 'absent.yaml'}: no such")


@pytest.mark.parametrize("override", ["optimizer.lr=[1e-3", 'run_name="x', "no_equals_sign"])
def test_a_bad_override_is_named(tmp_path, override):
    run = _write(tmp_path / "run.yaml", "max_duration: 10ba\n")
    evaluation = _write(tmp_path / "eval.yaml", EVAL_FILE)
    for load in (lambda: load_run_config(run, [override]), lambda: load_eval_file(evaluation, [override])):
        with pytest.raises(ConfigError) as caught:
            load()
        assert _one_line(str(caught.value)).startswith(f"command-line override `{override}`"), caught.value


def test_bad_override_on_the_command_line_is_one_line(tmp_path, capsys):
    evaluation = _write(tmp_path / "eval.yaml", EVAL_FILE)
    assert eval_main([str(evaluation), "tasks.mnli.seeds=[1,"]) == 2
    assert _one_line(capsys.readouterr().err).startswith("error: command-line override `tasks.mnli.seeds=[1,`")
    assert run_main([str(ROOT / "yamls/demo.yaml"), "optimizer.lr=[1e-3"]) == 2
    assert _one_line(capsys.readouterr().err).startswith("error: command-line override `optimizer.lr=[1e-3`")


def test_an_unresolvable_variable_names_the_file_and_key(tmp_path):
    path = _write(tmp_path / "eval.yaml", EVAL_FILE + "save_finetune_checkpoint_folder: ${nowhere}/x\n")
    with pytest.raises(EvalConfigError, match=rf"^{re.escape(str(path))}: cannot resolve .*'nowhere'.*"
                                              r"save_finetune_checkpoint_folder"):
        load_eval_file(path, require_start=False)


def test_every_config_file_error_is_a_config_error():
    for error in (RunConfigError, EvalConfigError, SweepError, FlexBertConfigError, MetricError):
        assert issubclass(error, ConfigError), error


# Calls that read YAML config text or parse a duration string: only flexbert/yaml_file.py and
# flexbert/duration.py may make them.
SECOND_READER = re.compile(r"OmegaConf\.(load|from_dotlist|from_cli|from_yaml)\b|yaml\.(safe_)?(load|load_all|"
                           r"full_load|unsafe_load)\s*\(|yaml\.(safe_)?dump\s*\(|OmegaConf\.save\b")
SECOND_DURATION_PARSER = re.compile(r"from_timestring\s*\(")


def test_there_is_one_yaml_reader_and_one_duration_parser():
    sources = [ROOT / "main.py", *[p for folder in ("flexbert", "data_prep", "benchmarks")
                                   for p in (ROOT / folder).rglob("*.py")]]
    offenders = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        if rel != "flexbert/yaml_file.py" and SECOND_READER.search(text):
            offenders.append(f"{rel}: {SECOND_READER.search(text).group(0)}")
        if rel != "flexbert/duration.py" and SECOND_DURATION_PARSER.search(text):
            offenders.append(f"{rel}: {SECOND_DURATION_PARSER.search(text).group(0)}")
    assert len(sources) > 50 and not offenders, offenders


@pytest.mark.parametrize("text, value, unit", [
    ("500ba", 500, TimeUnit.BATCH), ("1ep", 1, TimeUnit.EPOCH), ("10_000tok", 10000, TimeUnit.TOKEN),
    ("0.1dur", 0.1, TimeUnit.DURATION), ("64sp", 64, TimeUnit.SAMPLE),
])
def test_duration_strings(text, value, unit):
    assert parse_duration("max_duration", text) == Time(value, unit)


@pytest.mark.parametrize("value, needle", [
    (500, "`max_duration: 500` has no unit; write e.g. 500ba"),
    ("500 steps", "`max_duration`: '500 steps' is not a Composer duration"),
    (True, "`max_duration`: True is not a Composer duration"),
])
def test_bad_durations_name_the_key(value, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_duration("max_duration", value)


@pytest.mark.filterwarnings("ignore:model.model_config.sparse_prediction is the old name")
def test_reference_eval_file_keys_keep_their_meaning(tmp_path):
    path = _write(tmp_path / "eval.yaml", EVAL_FILE)
    with pytest.warns(UserWarning, match=r"model\.model_config\.sparse_prediction is the old name of `masked_prediction`"):
        spec = load_eval_file(path, require_start=False)
    assert spec.model_config["masked_prediction"] is False and "sparse_prediction" not in spec.model_config
    assert spec.task("mnli").trainer["eval_subset_num_batches"] == 2
    # a task that does not set it keeps Composer's default (score the whole validation set) and its fingerprint
    other = load_eval_file(path, ["tasks.rte.seeds=[1]"], require_start=False).task("rte")
    assert "eval_subset_num_batches" not in other.trainer

    with pytest.raises(EvalConfigError, match=r"eval_subset_num_batches` must be a positive number of batches or -1"):
        load_eval_file(path, ["tasks.mnli.trainer_kwargs.eval_subset_num_batches=0"], require_start=False)
    with pytest.raises(EvalConfigError, match=r"sets both `sparse_prediction` and `masked_prediction`, differently"):
        load_eval_file(path, ["model.model_config.masked_prediction=true"], require_start=False)


def test_reference_single_task_finetuning_file_is_refused_with_the_reason(tmp_path):
    path = _write(tmp_path / "classification.yaml", "tokenizer_name: tok\nrun_name: test\nmodel:\n  num_labels: 2\n"
                  "train_loader:\n  split: train\neval_loader:\n  split: validation\nmax_duration: 8ba\n")
    with pytest.raises(EvalConfigError) as caught:
        load_eval_file(path, require_start=False)
    message = _one_line(str(caught.value))
    assert message.startswith(f"{path}: has run_name, train_loader, eval_loader, model.num_labels and no `tasks`")
    assert "sequence_classification.py" in message and "unknown key" not in message


def test_a_pretraining_run_file_given_to_eval_says_which_command_runs_it(capsys):
    demo = ROOT / "yamls/demo.yaml"
    assert eval_main([str(demo)]) == 2
    message = _one_line(capsys.readouterr().err)
    assert message.startswith(f"error: {demo}: has run_name, train_loader") and f"python main.py {demo}" in message
