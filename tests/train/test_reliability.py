"""Reliability: a run killed anywhere resumes exactly; failed saves, non-finite losses and bad input end the run with
one clear line, never a hang, never a damaged checkpoint.

The reference for every resume is an uninterrupted run of the same settings; equality is torch.equal on every
tensor of the final checkpoint's `state.model` and exact equality of the per-step train losses in metrics.jsonl.
Kills are real SIGKILLs of `python main.py` subprocesses; save failures are injected by replacing torch.save.
"""

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from composer.core import Callback

from benchmarks import fault_injection as fi
from flexbert.checkpoints.crash_safe import CHECKPOINT_NAME, LATEST
from flexbert.train.trainer import main
from tests.helpers import ROOT, UNINTERRUPTED_EVERY, UNINTERRUPTED_STEPS

DEMO = str(ROOT / "yamls" / "demo.yaml")
STEPS, EVERY = UNINTERRUPTED_STEPS, UNINTERRUPTED_EVERY  # batches per run, batches between checkpoints


def _argv(data, folder, steps: int = STEPS, **extra) -> list[str]:
    return [DEMO, *fi.run_overrides(data, folder, steps, EVERY, **extra)]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _checkpoint_files(folder: Path) -> dict[int, Path]:
    return {int(m.group(2)): folder / m.group(0) for m in map(CHECKPOINT_NAME.match, os.listdir(folder)) if m}


def _assert_same_weights(reference: Path, folder: Path) -> None:
    a, b = fi.final_model_state(reference), fi.final_model_state(folder)
    assert a.keys() == b.keys()
    unequal = [name for name in a if not torch.equal(a[name], b[name])]
    assert not unequal, f"tensors differ from the uninterrupted run: {unequal}"


def _assert_every_checkpoint_loads(folder: Path) -> None:
    """What a crash must never leave: a file under a checkpoint's name (or `latest`) that does not load."""
    for path in [*_checkpoint_files(folder).values(), folder / LATEST]:
        _load(path)


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith("error: ")]


class _Inject(Callback):
    """Test-only fault at a chosen training step, counted here (batch_start events), not read from Composer."""

    def __init__(self, step: int, action):
        self.step, self.action, self.seen = step, action, 0

    def batch_start(self, state, logger):
        self.seen += 1

    def after_forward(self, state, logger):
        if self.seen == self.step and self.action == "inf":
            state.outputs["loss"] = state.outputs["loss"] * float("inf")

    def batch_end(self, state, logger):
        if self.seen == self.step and callable(self.action):
            self.action()


@pytest.fixture
def inject(monkeypatch):
    """inject(step, action): add an _Inject callback to the run that main() builds next."""
    import flexbert.train.callbacks as callbacks

    def add(step, action):
        original = callbacks.build_callbacks
        monkeypatch.setattr(callbacks, "build_callbacks", lambda section: [*original(section), _Inject(step, action)])

    return add


@pytest.fixture(scope="module")
def reference(uninterrupted_run):
    """The uninterrupted run of `_argv`'s settings (shared with other files): checkpoints every 2 batches, the demo
    keeps the last two."""
    folder = uninterrupted_run
    assert sorted(_checkpoint_files(folder)) == [STEPS - EVERY, STEPS]
    return folder


def _truncated_copy(tiny_corpus, tmp_path) -> tuple[Path, Path]:
    """A private copy of the MDS data (the corpus is shared) and its train shard."""
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus / "mds", data / "mds")
    os.symlink(tiny_corpus / "tokenizer", data / "tokenizer")
    shards = sorted((data / "mds" / "train").glob("*.mds"))
    assert shards
    return data, shards[0]


# ------------------------------------------------------------------------------------------ crash and resume


@pytest.mark.slow
def test_sigkill_at_random_moment_then_autoresume_is_bit_exact(tiny_corpus, reference, tmp_path):
    seed = random.randrange(1 << 16)  # printed on failure: rerun with this seed to reproduce the kill timing
    result = fi.run_experiment(tiny_corpus, tmp_path, world_size=1, kills=1, seed=seed, max_duration=STEPS,
                               save_interval=EVERY, max_delay=1.0, reference=reference, log=lambda msg: None)
    assert result.passed, (seed, result.kills, result.problems)
    assert max(result.weight_diffs.values()) == 0.0
    lines = fi.metrics_lines(tmp_path / "interrupted")
    assert [r["batch"] for r in lines] == list(range(1, STEPS + 1))  # every step once: none repeated or lost


KILL_DURING_SAVE = textwrap.dedent("""
    import io, os, signal, sys, torch
    real_save, calls = torch.save, [0]
    def save(obj, f, *args, **kwargs):  # the second full checkpoint: write half of it, then die like kill -9
        if isinstance(obj, dict) and "rng" in obj:
            calls[0] += 1
            if calls[0] == 2:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
    from flexbert.train.trainer import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tiny_corpus, reference, tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *_argv(tiny_corpus, folder)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert sorted(_checkpoint_files(folder)) == [EVERY]  # the half-written second checkpoint has no checkpoint name
    assert os.readlink(folder / LATEST) == _checkpoint_files(folder)[EVERY].name
    _assert_every_checkpoint_loads(folder)
    assert _load(folder / LATEST)["state"]["timestamp"]["Timestamp"]["batch"] == EVERY
    assert [p for p in os.listdir(folder) if p.startswith(".partial-")], "the killed write left its partial file"

    assert main(_argv(tiny_corpus, folder)) == 0  # the same command, autoresume=true
    _assert_same_weights(reference, folder)
    assert fi.metrics_problems(fi.metrics_lines(reference), fi.metrics_lines(folder)) == []
    assert not [p for p in os.listdir(folder) if p.startswith(".partial-")]  # cleaned up on resume
    _assert_every_checkpoint_loads(folder)


def test_disk_full_while_saving_is_a_clear_error_and_keeps_checkpoints(tiny_corpus, tmp_path, monkeypatch, capsys):
    folder, real_save, calls = tmp_path / "run", torch.save, [0]

    def save(obj, f, *args, **kwargs):  # the second checkpoint: the disk fills up after some bytes
        if isinstance(obj, dict) and "rng" in obj:
            calls[0] += 1
            if calls[0] == 2:
                f.write(b"PK\x03\x04" + bytes(1000))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    start = time.monotonic()
    assert main(_argv(tiny_corpus, folder)) == 1
    assert time.monotonic() - start < 60
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert os.strerror(errno.ENOSPC) in lines[0] and f"ep0-ba{2 * EVERY}-rank0.pt" in lines[0]
    assert f"ep0-ba{EVERY}-rank0.pt" in lines[0]  # names the checkpoint that is still good
    assert sorted(_checkpoint_files(folder)) == [EVERY]
    assert os.readlink(folder / LATEST) == f"ep0-ba{EVERY}-rank0.pt"
    assert not [p for p in os.listdir(folder) if p.startswith(".partial-")]
    _assert_every_checkpoint_loads(folder)


def test_killed_after_its_last_checkpoint_the_rerun_is_a_no_op(tiny_corpus, reference, tmp_path, capsys):
    """A kill between the final checkpoint and process exit: the rerun must not fail ('No training would occur')."""
    folder = tmp_path / "run"
    shutil.copytree(reference, folder, symlinks=True)
    before = (folder / "metrics.jsonl").read_text()
    assert main(_argv(tiny_corpus, folder)) == 0
    assert "nothing to do" in capsys.readouterr().out
    _assert_same_weights(reference, folder)
    assert (folder / "metrics.jsonl").read_text() == before


def test_missing_latest_link_resumes_from_newest_complete_checkpoint(reference, tmp_path):
    """A kill between Composer's os.remove(latest) and os.symlink(latest): autoresume must not restart at 0."""
    from flexbert.checkpoints.crash_safe import find_resume_checkpoint, repair_latest

    folder = tmp_path / "run"
    shutil.copytree(reference, folder, symlinks=True)
    os.remove(folder / LATEST)
    newest = folder / f"ep0-ba{STEPS}-rank0.pt"
    (folder / f".partial-1-ep0-ba{STEPS + EVERY}-rank0.pt").write_bytes(newest.read_bytes()[:1000])
    assert find_resume_checkpoint(folder) == newest
    assert repair_latest(folder) == newest
    assert os.readlink(folder / LATEST) == newest.name
    assert not [p for p in os.listdir(folder) if p.startswith(".partial-")]
    os.remove(folder / LATEST)
    os.symlink("ep0-ba999-rank0.pt", folder / LATEST)  # dangling
    assert repair_latest(folder) == newest and os.readlink(folder / LATEST) == newest.name
    assert find_resume_checkpoint(tmp_path / "empty") is None and repair_latest(tmp_path / "empty") is None


def test_non_finite_loss_stops_naming_the_step(tiny_corpus, tmp_path, inject, capsys):
    folder, bad_step = tmp_path / "run", 2 * EVERY + 1
    inject(bad_step, "inf")
    assert main(_argv(tiny_corpus, folder)) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "non-finite loss (inf)" in lines[0] and f"at step {bad_step} " in lines[0]
    assert [r["batch"] for r in fi.metrics_lines(folder)] == list(range(1, bad_step))
    assert sorted(_checkpoint_files(folder)) == [EVERY, 2 * EVERY]
    _assert_every_checkpoint_loads(folder)
    last = _load(folder / LATEST)["state"]
    assert last["timestamp"]["Timestamp"]["batch"] == 2 * EVERY
    assert all(torch.isfinite(t).all() for t in last["model"].values())


class _Snapshot(Callback):
    """Test-only: the weights, Adam moments and optimizer step counter at the end of each step (batch_end)."""

    def __init__(self):
        self.seen, self.states = 0, {}

    def batch_start(self, state, logger):
        self.seen += 1

    def batch_end(self, state, logger):
        optimizer = state.optimizers[0]
        moments = [optimizer.state[p]["exp_avg"].clone() for g in optimizer.param_groups for p in g["params"]
                   if "exp_avg" in optimizer.state[p]]
        self.states[self.seen] = ({k: v.clone() for k, v in state.model.state_dict().items()}, moments,
                                  [int(g["step"]) for g in optimizer.param_groups])


def test_non_finite_loss_skips_the_batch_when_allowed(tiny_corpus, tmp_path, inject, monkeypatch):
    import flexbert.train.callbacks as callbacks

    snapshot = _Snapshot()
    original = callbacks.build_callbacks
    monkeypatch.setattr(callbacks, "build_callbacks", lambda section: [*original(section), snapshot])
    folder, bad_step = tmp_path / "run", 3
    inject(bad_step, "inf")
    assert main(_argv(tiny_corpus, folder, max_nonfinite_skips=1)) == 0
    records = fi.metrics_lines(folder)
    assert [r["batch"] for r in records] == list(range(1, STEPS + 1))  # the data moved on; no step repeated
    assert [r.get("nonfinite_loss/skipped_batches") for r in records] == [None, None, 1, None, None, None]
    before, skipped, after = (snapshot.states[s] for s in (bad_step - 1, bad_step, bad_step + 1))
    for name, value in before[0].items():  # nothing moved: weights, moments, step counter
        assert torch.equal(skipped[0][name], value), name
    assert all(torch.equal(a, b) for a, b in zip(before[1], skipped[1])) and len(before[1]) == len(skipped[1]) > 0
    assert skipped[2] == before[2]
    assert after[2] == [n + 1 for n in skipped[2]]  # the next batch trains normally
    assert any(not torch.equal(after[0][k], skipped[0][k]) for k in after[0])
    _assert_every_checkpoint_loads(folder)
    last = _load(folder / LATEST)["state"]
    assert last["callbacks"]["NonFiniteLossGuard"]["skipped"] == 1  # resumes with the count
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_non_finite_losses_beyond_the_allowed_skips_stop_the_run(tiny_corpus, tmp_path, inject, capsys):
    folder = tmp_path / "run"
    inject(2, "inf")
    inject(4, "inf")
    assert main(_argv(tiny_corpus, folder, max_nonfinite_skips=1)) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "at step 4 " in lines[0] and "after skipping 1 non-finite batches" in lines[0], lines
    assert [r["batch"] for r in fi.metrics_lines(folder)] == [1, 2, 3]
    _assert_every_checkpoint_loads(folder)


def test_max_nonfinite_skips_must_be_a_count(tiny_corpus, tmp_path, capsys):
    assert main(_argv(tiny_corpus, tmp_path / "run", max_nonfinite_skips=-1)) == 2  # a setup error
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "max_nonfinite_skips" in lines[0] and "-1" in lines[0], lines


def _skip_agreement_worker(rank: int, world: int, port: int, results) -> None:
    """One rank of a gloo group: only rank 0 sees a non-finite loss; both must drop their gradients."""
    import torch.distributed as torch_dist
    from composer.devices import DeviceCPU

    from flexbert.train.callbacks import NonFiniteLossGuard

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = torch.nn.Linear(3, 2)
        model.weight.grad = torch.ones_like(model.weight)
        state = type("State", (), {})()
        state.device, state.model = DeviceCPU(), model
        state.loss = torch.tensor(float("nan") if rank == 0 else 1.0)
        state.timestamp = type("Timestamp", (), {"batch": 7, "token": 700})()
        guard = NonFiniteLossGuard(max_skips=1)
        guard.batch_start(state, None)
        guard.after_loss(state, None)
        guard.after_backward(state, None)
        skipped = (guard._skip_batch, model.weight.grad is None)
        guard.skipped = 1  # the limit is reached: the next non-finite batch stops every rank, not only rank 0
        guard.batch_start(state, None)
        guard.after_loss(state, None)
        try:
            guard.after_backward(state, None)
            stopped = None
        except FloatingPointError as err:
            stopped = str(err).split(" at step")[0]
        results[rank] = (*skipped, stopped)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_skips_the_batch_on_every_rank():
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_skip_agreement_worker, args=(2, fi.free_port(), results), nprocs=2, join=True)
        assert dict(results) == {0: (True, True, "non-finite loss (nan)"),
                                 1: (True, True, "non-finite loss on another rank")}


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides,expected", [
    (["max_duraton=3ba"], ["max_duraton", "did you mean 'max_duration'"]),
    (["optimizer.lrr=0.1"], ["optimizer.lrr", "did you mean 'lr'"]),
    (["train_loader.num_workers=two"], ["train_loader.num_workers", "two"]),
    (["max_duration=10bananas"], ["max_duration", "10bananas", "not a Composer duration"]),
    (["precision=fp64"], ["precision", "fp64", "amp_bf16"]),
    (["model.model_config.mlp_layer=gluu"], ["mlp_layer", "did you mean 'glu'"]),
    (["train_loader.dataset.split=trian"], ["trian", "train, validation"]),
    (["model.model_config.vocab_size=256"], ["vocab_size", "512"]),
])
def test_setup_errors_are_one_line_exit_2(tiny_corpus, tmp_path, capsys, overrides, expected):
    start = time.monotonic()
    assert main([*_argv(tiny_corpus, tmp_path / "run"), *overrides]) == 2
    assert time.monotonic() - start < 30
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and all(text in lines[0] for text in expected), lines


def test_missing_data_folder_and_truncated_shard_name_the_file(tiny_corpus, tmp_path, capsys):
    assert main(_argv(tiny_corpus, tmp_path / "a", data_local=str(tmp_path / "nowhere"))) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "nowhere" in lines[0] and "does not exist" in lines[0]

    data, shard = _truncated_copy(tiny_corpus, tmp_path)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    assert main(_argv(data, tmp_path / "b")) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(shard) in lines[0] and "truncated" in lines[0]


def test_checkpoint_of_another_architecture_is_refused(tiny_corpus, reference, tmp_path, capsys):
    argv = _argv(tiny_corpus, tmp_path / "run", load_path=str(reference / LATEST),
                 **{"model.model_config.hidden_size": 128, "autoresume": "false"})
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "checkpoint" in lines[0] and "hidden_size: run file 128 vs checkpoint 64" in err


def test_token_ids_outside_the_vocabulary_stop_the_run(tiny_corpus, tmp_path, capsys):
    """Shards written with a bigger tokenizer than the run's: the error surfaces in fit, exit 1, naming the id."""
    from streaming import MDSWriter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")
    too_big = len(tok) + 100
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    os.symlink(tiny_corpus / "tokenizer", tmp_path / "tokenizer")
    for split in ("train", "validation"):
        with MDSWriter(out=str(data / split), columns={"input_ids": "ndarray:uint16"}) as writer:
            for _ in range(40):
                body = rng.integers(5, len(tok), 60)
                body[7] = too_big
                writer.write({"input_ids": np.concatenate([[tok.cls_token_id], body, [tok.sep_token_id]]).astype(np.uint16)})
    argv = _argv(tmp_path, tmp_path / "run", data_local=str(data))
    assert main(argv) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"token id {too_big}" in lines[0] and "vocabulary" in lines[0]


def test_corrupted_shard_mid_run_with_prefetch_thread_exits_fast(tiny_corpus, tmp_path, inject, capsys):
    data, shard = _truncated_copy(tiny_corpus, tmp_path)
    corrupted_at = []

    def corrupt():
        with open(shard, "r+b") as f:
            f.truncate(8)  # the offset table is gone: every later read of this shard fails
        corrupted_at.append(time.monotonic())

    inject(2, corrupt)
    outcome = {}

    def run():
        outcome["code"] = main(_argv(data, tmp_path / "run", steps=1000,
                                     **{"train_loader.num_workers": 2}))
        outcome["end"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the run hangs after its shard was corrupted"
    assert outcome["code"] == 1 and corrupted_at
    assert outcome["end"] - corrupted_at[0] < 30
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(shard) in lines[0] and "corrupted" in lines[0]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_while_a_refused_run_exits_adds_no_traceback(tmp_path):
    """A launcher SIGTERMs the other ranks as soon as one exits (the next test). A rank refusing the run at that
    moment -- its error line printed, the interpreter running its exit handlers -- ends without a traceback under
    that line (Composer's SIGTERM handler would raise SystemExit inside the exit handlers)."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, os, signal, sys, time
        import composer  # installs Composer's SIGTERM handler, as in every rank
        from flexbert.train.trainer import main
        # the launcher's SIGTERM, arriving while the interpreter runs its exit handlers (the last registered runs first)
        atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))
        sys.exit(main([{str(ROOT / "yamls" / "demo.yaml")!r}, "optimizer.lrr=1e-3"]))
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert _error_lines(proc.stderr) and all("did you mean" in line for line in _error_lines(proc.stderr))
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr[-3000:])


def test_world_size_that_does_not_divide_the_batch(tiny_corpus, tmp_path):
    composer = str(Path(sys.executable).parent / "composer")
    argv = _argv(tiny_corpus, tmp_path / "run", global_train_batch_size=3, device_train_microbatch_size=1,
                 global_eval_batch_size=2, device_eval_batch_size=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    start = time.monotonic()
    proc = subprocess.run([composer, "-n", "2", "--master_port", str(fi.free_port()), "main.py", *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    output = proc.stderr + proc.stdout
    # The launcher SIGTERMs the other rank as soon as one exits, so its exit code depends on which rank was first.
    assert proc.returncode != 0 and time.monotonic() - start < 120, (proc.returncode, output[-3000:])
    lines = _error_lines(output)
    assert lines and all("global_train_batch_size 3 does not divide by the world size 2" in line for line in lines)
