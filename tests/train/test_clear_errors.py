"""Damaged or mismatched artifacts end a run with one line naming the problem (or a note saying what was chosen),
never a traceback; a damaged newest checkpoint falls back to the previous one."""

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import fault_injection as fi
from flexbert.checkpoints.crash_safe import LATEST
from flexbert.train.run_config import load_run_config
from flexbert.train.trainer import main
from tests.helpers import ROOT, UNINTERRUPTED_EVERY, UNINTERRUPTED_STEPS

STEPS, EVERY = UNINTERRUPTED_STEPS, UNINTERRUPTED_EVERY


def _argv(data, folder, steps=STEPS, **extra):
    return [str(ROOT / "yamls/demo.yaml"), *fi.run_overrides(data, folder, steps, EVERY, **extra)]


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return err[err.index("error: "):]


@pytest.fixture(scope="module")
def reference(uninterrupted_run):
    """The uninterrupted run of `_argv`'s settings (shared with other files; copied, never changed here)."""
    assert sorted(p.name for p in uninterrupted_run.glob("ep0-ba*-rank0.pt")) == [
        f"ep0-ba{STEPS - EVERY}-rank0.pt", f"ep0-ba{STEPS}-rank0.pt"]
    return uninterrupted_run


def _copy(reference, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(reference, folder, symlinks=True)
    return folder


def _edit_checkpoint(path: Path, edit) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    edit(checkpoint)
    torch.save(checkpoint, path)


def test_scheduler_state_without_lr_lambdas_is_named(tiny_corpus, reference, tmp_path, capsys):
    folder = _copy(reference, tmp_path)
    _edit_checkpoint(folder / f"ep0-ba{STEPS}-rank0.pt", lambda c: c["state"]["schedulers"]["LambdaLR"].pop("lr_lambdas"))
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 2)) == 2
    message = _one_error(capsys.readouterr().err)
    assert "state.schedulers.LambdaLR lacks lr_lambdas" in message and "load_weights_only" in message


def test_autoresume_into_another_architecture_lists_the_mismatches(tiny_corpus, reference, tmp_path, capsys):
    folder = _copy(reference, tmp_path)
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 2, **{"model.model_config.hidden_size": 128})) == 2
    message = _one_error(capsys.readouterr().err)
    assert "autoresume from" in message and "mis-shaped" in message
    assert "model.bert.embeddings.tok_embeddings.weight: checkpoint (512, 64) vs model (512, 128)" in message


def _corrupt_largest_tensor(path: Path) -> None:
    """Flip bytes inside the largest tensor's data, keeping the file's size and zip structure."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as file:
        file.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(file.read(2), "little") for _ in range(2))
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        file.seek(start)
        data = file.read(64)
        file.seek(start)
        file.write(bytes(b ^ 0xFF for b in data))


def test_corrupted_tensor_data_falls_back_to_the_previous_checkpoint(tiny_corpus, reference, tmp_path):
    folder = _copy(reference, tmp_path)
    newest = folder / f"ep0-ba{STEPS}-rank0.pt"
    _corrupt_largest_tensor(newest)
    assert zipfile.ZipFile(newest).namelist()  # still a complete archive: only its data is damaged
    assert main(_argv(tiny_corpus, folder)) == 0  # resumes from ba4, retrains 5..6
    a, b = fi.final_model_state(reference), fi.final_model_state(folder)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["batch"] for r in fi.metrics_lines(folder)] == list(range(1, STEPS + 1))


def test_corrupted_checkpoint_as_load_path_is_refused(tiny_corpus, reference, tmp_path, capsys):
    path = tmp_path / "damaged.pt"
    shutil.copy(reference / f"ep0-ba{STEPS}-rank0.pt", path)
    _corrupt_largest_tensor(path)
    assert main(_argv(tiny_corpus, tmp_path / "run", load_path=str(path))) == 2
    message = _one_error(capsys.readouterr().err)
    assert str(path) in message and "CRC" in message


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_unpickler_refusal_names_the_blocked_global(tiny_corpus, reference, tmp_path, capsys):
    path = tmp_path / "evil.pt"
    shutil.copy(reference / f"ep0-ba{STEPS}-rank0.pt", path)
    _edit_checkpoint(path, lambda c: c["state"]["metadata"].update(payload=_RunsCode()))
    assert main(_argv(tiny_corpus, tmp_path / "run", load_path=str(path))) == 2
    message = _one_error(capsys.readouterr().err)
    assert f"`{os.system.__module__}.system`" in message, message


def test_changed_lr_before_autoresume_says_the_checkpoints_value_wins(tiny_corpus, reference, tmp_path, capsys):
    folder = _copy(reference, tmp_path)
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 1, **{"optimizer.lr": 0.01})) == 0
    err = capsys.readouterr().err
    trained_lr = load_run_config(ROOT / "yamls/demo.yaml").optimizer.lr  # what the reference run used
    notes = [line for line in err.splitlines() if line.startswith("note: optimizer.lr")]
    assert len(notes) == 1 and "0.01" in notes[0] and f"trained with {trained_lr}" in notes[0]
    assert "checkpoint's value is used" in notes[0]
    lr = torch.load(folder / LATEST, weights_only=False)["state"]["schedulers"]["LambdaLR"]["base_lrs"]
    assert lr == [trained_lr, trained_lr]  # and it is: the schedule continued with the saved base lr


def _with_file_size_limit(limit: int):
    """preexec_fn: writes past `limit` bytes per file fail with EFBIG, as on a full disk (root ignores permissions,
    so a read-only folder cannot be simulated here; both reach the code as an OSError from a write)."""
    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _run_limited(args, limit):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, preexec_fn=_with_file_size_limit(limit))


@pytest.mark.slow
def test_failed_checkpoint_write_in_torchs_zip_writer_is_one_line(tiny_corpus, tmp_path):
    folder = tmp_path / "run"
    proc = _run_limited(["main.py", *_argv(tiny_corpus, folder, steps=4)], 200_000)
    assert proc.returncode == 1, proc.stderr[-3000:]
    message = _one_error(proc.stderr)
    assert "could not write checkpoint" in message and "ep0-ba2-rank0.pt" in message and "File too large" in message
    assert not [p for p in os.listdir(folder) if p.startswith(".partial-") or p.endswith(".pt")]


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["tokenize_to_mds", "train_tokenizer"])
def test_failed_write_in_data_preparation_is_one_line(tiny_corpus, tmp_path, tool):
    out = tmp_path / "out"
    args = {"tokenize_to_mds": ["--input", tiny_corpus / "corpus", "--tokenizer", tiny_corpus / "tokenizer",
                                "--max-seq-len", "64"],
            "train_tokenizer": ["--input", tiny_corpus / "corpus" / "train.jsonl", "--vocab-size", "512"]}[tool]
    proc = _run_limited([f"data_prep/{tool}.py", *args, "--out", out, "--quiet"], 5_000)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(lines) == 1 and "File too large" in lines[0], proc.stderr[-3000:]
    assert not out.exists() and not list(tmp_path.glob("out.*"))


def test_empty_tokenizer_folder_is_named(tiny_corpus, tmp_path, capsys):
    (tmp_path / "tok").mkdir()
    assert main(_argv(tiny_corpus, tmp_path / "run", tokenizer_name=str(tmp_path / "tok"))) == 2
    message = _one_error(capsys.readouterr().err)
    assert f"tokenizer folder '{tmp_path / 'tok'}' holds no tokenizer" in message
    from data_prep import tokenize_to_mds

    argv = ["--input", str(tiny_corpus / "corpus"), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "o")]
    assert tokenize_to_mds.main(argv) == 2
    assert "holds no tokenizer" in capsys.readouterr().err


TIME_BUILD_TOKENIZER = """
import sys, time
from transformers.utils import cached_file  # imported before the clock starts: the refusal is timed, not imports
from flexbert.tokenizer_source import TokenizerSourceError, load_tokenizer
start = time.monotonic()
try:
    load_tokenizer(sys.argv[1])
except TokenizerSourceError as err:
    print(f"{time.monotonic() - start:.1f}", err)
"""


@pytest.mark.slow
@pytest.mark.parametrize("offline_by", ["setting", "network"])
def test_hub_tokenizer_name_offline_fails_at_once(tmp_path, offline_by):
    """Not cached and no Hub: an error within seconds (transformers alone retries for about a minute)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf_home"))  # an empty cache
    if offline_by == "setting":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: the Hub is unreachable
    name = "answerdotai/ModernBERT-base"
    proc = subprocess.run([sys.executable, "-c", TIME_BUILD_TOKENIZER, name], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    seconds, _, message = proc.stdout.strip().partition(" ")
    assert message, proc.stdout + proc.stderr[-3000:]
    assert float(seconds) < 10 and f"'{name}' is not a local folder" in message
    assert ("HF_HUB_OFFLINE" if offline_by == "setting" else "cannot be reached") in message


def test_evaluation_without_a_batch_says_why_its_metrics_are_nan(tiny_corpus, tmp_path, recwarn):
    """Two evaluations of zero batches, one warning."""
    argv = _argv(tiny_corpus, tmp_path / "run", steps=2, eval_subset_num_batches=0, eval_interval="1ba")
    assert main(argv) == 0
    said = [w for w in recwarn if "evaluation 'eval' saw no batch, so its metrics are NaN" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in recwarn]


# ------------------------------------------------------------------------ refused before anything is built


@pytest.mark.parametrize("key,value,fix", [
    ("save_interval", "0ba", "leave save_folder unset"),
    ("save_interval", "-2ba", "leave save_folder unset"),
    ("eval_interval", "0ba", "leave eval_loader out"),
    ("eval_interval", "0tok", "leave eval_loader out"),
    ("console_log_interval", "0ba", "log_to_console: false"),
    ("max_duration", "0ba", "positive length"),
    ("callbacks.log_grad_norm.batch_log_interval", 0, "positive number of batches"),
    ("callbacks.optimizer_monitor.batch_log_interval", 0, "positive number of batches"),
])
def test_intervals_of_zero_or_below_are_refused_naming_the_key(tiny_corpus, tmp_path, capsys, key, value, fix):
    folder = tmp_path / "run"
    for extra in ([], ["--dry-run"]):
        assert main([*_argv(tiny_corpus, folder), f"{key}={value}", *extra]) == 2
        message = _one_error(capsys.readouterr().err)
        assert f"{key.rsplit('.', 1)[-1]}" in message and str(value) in message and fix in message, message
    assert not folder.exists()


def test_reference_interval_forms_stay_valid(tiny_corpus, tmp_path, capsys):
    """The forms the reference's run files use: `<n>ba` at the top level, bare integers for callback intervals."""
    argv = [*_argv(tiny_corpus, tmp_path / "run"), "eval_interval=2000ba", "save_interval=0.5dur",
            "console_log_interval=1ba", "callbacks.log_grad_norm.batch_log_interval=10",
            "callbacks.packing_efficiency.log_interval=10", "--dry-run"]
    assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize("override,expected", [
    ("compile_config.mdoe=max-autotune", "unknown key `compile_config.mdoe` (did you mean 'mode'?)"),
    ("fsdp_config.sharding_stratgy=FULL_SHARD", "unknown key `fsdp_config.sharding_stratgy` (did you mean 'sharding_strategy'?)"),
    ("dist_timeout=0", "`dist_timeout: 0.0` must be a positive number of seconds"),
])
def test_trainer_arguments_are_checked_before_data_and_model(tiny_corpus, tmp_path, capsys, monkeypatch, override,
                                                             expected):
    import flexbert.optim.builders as optim_builders
    import flexbert.train.builders as builders

    def not_reached(*args, **kwargs):
        raise AssertionError("data or model built before the Trainer arguments were checked")

    monkeypatch.setattr(builders, "build_loader", not_reached)
    monkeypatch.setattr(optim_builders, "build_optimizer", not_reached)
    argv = [*_argv(tiny_corpus, tmp_path / "run"), override, "model.gradient_checkpointing=false"]
    for extra in ([], ["--dry-run"]):
        assert main([*argv, *extra]) == 2
        message = _one_error(capsys.readouterr().err)
        assert expected in message, message


def test_unwritable_save_folder_is_one_line(tiny_corpus, tmp_path, capsys, monkeypatch):
    import errno

    import flexbert.folder_lock as folder_lock

    (tmp_path / "a_file").write_text("not a folder")
    assert main(_argv(tiny_corpus, tmp_path / "a_file" / "run")) == 2
    message = _one_error(capsys.readouterr().err)
    assert f"save_folder '{tmp_path / 'a_file' / 'run'}': cannot write there (Not a directory)" in message

    def read_only(folder, *args):  # root writes anywhere, so the read-only file system is the lock's own error
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))

    monkeypatch.setattr(folder_lock, "hold_folder", read_only)
    assert main(_argv(tiny_corpus, tmp_path / "ro")) == 2
    message = _one_error(capsys.readouterr().err)
    assert f"'{tmp_path / 'ro'}': cannot write there (Read-only file system)" in message and "writable" in message


# ---------------------------------------------------------------------- resuming from what the folder holds


def test_autoresume_over_only_damaged_checkpoints_names_them(tiny_corpus, reference, tmp_path, capsys):
    folder = _copy(reference, tmp_path)
    names = sorted(p.name for p in folder.glob("ep*-rank0.pt"))
    for name in names:
        _corrupt_largest_tensor(folder / name)
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 2)) == 2
    message = _one_error(capsys.readouterr().err)
    assert all(str(folder / name) in message for name in names) and "CRC" in message, message
    assert "/tmp/tmp" not in message and "move these files out of the folder" in message
    assert sorted(p.name for p in folder.glob("ep*-rank0.pt")) == names


def test_lr_lambdas_advice_under_autoresume_is_one_that_works(tiny_corpus, reference, tmp_path, capsys):
    folder = _copy(reference, tmp_path)
    newest = folder / f"ep0-ba{STEPS}-rank0.pt"
    _edit_checkpoint(newest, lambda c: c["state"]["schedulers"]["LambdaLR"].pop("lr_lambdas"))
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 2)) == 2
    message = _one_error(capsys.readouterr().err)
    assert message.startswith(f"error: {newest}: state.schedulers.LambdaLR lacks lr_lambdas"), message
    assert "move it out of the save folder" in message
    assert f"autoresume: false, load_path: {newest}, load_weights_only: true" in message
    newest.rename(tmp_path / newest.name)  # the advice: autoresume then continues from the previous checkpoint
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 2)) == 0
    assert [r["batch"] for r in fi.metrics_lines(folder)] == list(range(1, STEPS + 3))


def test_autoresume_without_optimizer_state_warns_that_moments_start_fresh(tiny_corpus, reference, tmp_path, recwarn):
    folder = _copy(reference, tmp_path)
    newest = folder / f"ep0-ba{STEPS}-rank0.pt"
    _edit_checkpoint(newest, lambda c: c["state"].pop("optimizers"))
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 1)) == 0
    said = [str(w.message) for w in recwarn if "Adam moments start fresh" in str(w.message)]
    assert len(said) == 1 and said[0].startswith(f"autoresume from {newest}: "), [str(w.message) for w in recwarn]
    assert [r["batch"] for r in fi.metrics_lines(folder)] == list(range(1, STEPS + 2))  # continued, not restarted


def test_load_path_without_optimizer_state_warns(tiny_corpus, reference, tmp_path, recwarn):
    start = tmp_path / "weights_and_time.pt"
    shutil.copy(reference / f"ep0-ba{STEPS}-rank0.pt", start)
    _edit_checkpoint(start, lambda c: c["state"].pop("optimizers"))
    argv = _argv(tiny_corpus, tmp_path / "run", steps=2, load_path=str(start), reset_time="true", autoresume="false")
    assert main([*argv, "--dry-run"]) == 0
    said = [str(w.message) for w in recwarn if "Adam moments start fresh" in str(w.message)]
    assert said and said[0].startswith(f"load_path {start} holds no optimizer state") and "load_weights_only" in said[0]
    recwarn.clear()
    assert main([*argv, "load_weights_only=true", "--dry-run"]) == 0  # said explicitly: nothing to warn about
    assert not [w for w in recwarn if "Adam moments" in str(w.message)]


def test_autoresume_from_a_weights_only_checkpoint_is_refused_keeping_the_run(tiny_corpus, reference, tmp_path, capsys):
    """A weights-only checkpoint has no step count: Composer would restart the run at step 0 over its own files."""
    folder = _copy(reference, tmp_path)
    newest = folder / f"ep0-ba{STEPS}-rank0.pt"
    _edit_checkpoint(newest, lambda c: c.update(state={k: c["state"][k] for k in ("model", "integrations", "metadata")}))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}
    assert main(_argv(tiny_corpus, folder, steps=STEPS + 2)) == 2
    message = _one_error(capsys.readouterr().err)
    assert f"autoresume from {newest}: the checkpoint holds the weights alone" in message
    assert f"load_path: {newest}, load_weights_only: true" in message
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
