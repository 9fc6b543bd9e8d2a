"""Kill a training run at random moments, resume it with autoresume each time, compare with an uninterrupted run.

Each attempt runs the SAME command (`python main.py ...` or `composer -n 2 main.py ...`, `autoresume=true`) on the
tiny setup (tests/tiny_setup.py `tiny_run_overrides`) with dropout on in every block (`--dropout`, default 0.1)
and batch-size warmup on (the rows per step grow over the first ~`--warmup-tokens`), checkpoints every
`--save-interval` batches (default 3, so checkpoints fall inside and after the warmup, not on its steps).
An attempt that is to be killed is waited on until it has written a checkpoint beyond the one it resumed from; then
the whole process group gets SIGKILL (as a lost node would), at a moment drawn per attempt:
- `step`: a random step within the next save interval is chosen and the kill lands a random fraction of a step after
  that step was logged -- mid-step, mid-eval, or mid-save when the step was a checkpoint step;
- `save`: the moment the next checkpoint's partial file appears (mid-write, before the step's metrics line).
The last attempt runs to the end. PASS when, against an uninterrupted run of the same command:
- every tensor of the final checkpoint's `state.model` is bit-identical (torch.equal; max |diff| printed),
- the per-step train losses in metrics.jsonl are identical (no batch repeated or skipped),
- metrics.jsonl holds each step exactly once, in order.

    python benchmarks/fault_injection.py --kills 3 --world-size 2 [--data DIR] [--max-duration 12] [--seed 0]
    python benchmarks/fault_injection.py --ci          # the short variant CI runs: 1 process, 2 kills, 9 steps

Without --data a tiny corpus (stdlib docs, 512-token tokenizer, MDS at max_seq_len 64) is built first (~15 s).
Exit code 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]

LOSS_KEY = "loss/train/total"


def build_tiny_corpus(root: Path) -> Path:
    """The tiny corpus of tests/tiny_setup.py, built under `root`."""
    from tests.tiny_setup import build_tiny_corpus as build

    return build(root)


DROPOUT_KEYS = ("attention_probs_dropout_prob", "attn_out_dropout_prob", "embed_dropout_prob", "mlp_dropout_prob",
                "head_pred_dropout")


def dropout_overrides(p: float) -> dict[str, float]:
    """Dropout probability `p` in every block of the model (draws from torch's generator at every step)."""
    return {f"model.model_config.{key}": p for key in DROPOUT_KEYS}


def run_overrides(data: Path, folder: Path, max_duration: int, save_interval: int, **extra) -> list[str]:
    """Tiny settings, checkpoints every `save_interval` batches, autoresume on (harmless on an empty folder). The
    run file's loggers stay on: their state (the console summary's losses) is part of what a resume must restore."""
    from tests.tiny_setup import tiny_run_overrides

    values = dict(max_duration=f"{max_duration}ba", save_interval=f"{save_interval}ba",
                  eval_interval=f"{max_duration}ba", autoresume="true", log_to_console="false")
    values.update(extra)
    return tiny_run_overrides(data, folder, **values)


def experiment_overrides(dropout: float, warmup_tokens: Optional[str]) -> dict[str, object]:
    values: dict[str, object] = dict(dropout_overrides(dropout)) if dropout else {}
    if warmup_tokens:
        values["train_loader.batch_size_warmup_tokens"] = warmup_tokens
    return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(world_size: int, overrides: list[str]) -> list[str]:
    """The training command; a fresh rendezvous port each time (a killed run's port may linger in TIME_WAIT)."""
    if world_size == 1:
        return [sys.executable, "main.py", "yamls/demo.yaml", *overrides]
    composer = str(Path(sys.executable).parent / "composer")
    return [composer, "-n", str(world_size), "--master_port", str(free_port()), "main.py", "yamls/demo.yaml", *overrides]


def launch(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """Start `cmd` in its own session (so the launcher and all ranks can be killed together)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()  # the child holds its own descriptor


def newest_checkpoint_batch(folder: Path) -> int:
    """Batch of the newest `ep*-ba*-rank0.pt` in `folder` (0: none); written atomically, so complete."""
    from flexbert.checkpoints.crash_safe import CHECKPOINT_NAME  # torch-heavy module: not imported for --help

    if not folder.is_dir():
        return 0
    return max((int(m.group(2)) for m in map(CHECKPOINT_NAME.match, os.listdir(folder)) if m), default=0)


def last_logged_batch(folder: Path) -> int:
    """The last step in metrics.jsonl (0: none yet); a line being written is skipped."""
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["batch"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class _Progress:
    """Polls the run's folder: newest checkpoint, last logged step, and the wall time of one step."""

    def __init__(self, folder: Path):
        self.folder, self.step_times = folder, []
        self._last, self._fresh = None, True  # (step, time it was first seen); next increase includes start-up

    def poll(self) -> tuple[int, int]:
        step, now = last_logged_batch(self.folder), time.monotonic()
        if self._last is None or step < self._last[0]:  # first look, or the resumed run truncated the file
            self._last, self._fresh = (step, now), True
        elif step > self._last[0]:
            if not self._fresh:  # the first increase after (re)start includes start-up time: not a step time
                self.step_times.append((now - self._last[1]) / (step - self._last[0]))
            self._last, self._fresh = (step, now), False
        return newest_checkpoint_batch(self.folder), step

    def step_time(self, default: float) -> float:
        return sorted(self.step_times)[len(self.step_times) // 2] if self.step_times else default


def partial_checkpoint_exists(folder: Path) -> bool:
    """A checkpoint is being written (its `.partial-*` file exists; renamed onto its name when complete)."""
    from flexbert.checkpoints.crash_safe import PARTIAL_PREFIX

    try:
        return any(name.startswith(PARTIAL_PREFIX) and name.endswith(".pt") for name in os.listdir(folder))
    except FileNotFoundError:
        return False


def kill_during_save(proc: subprocess.Popen, folder: Path, timeout: float) -> Optional[dict]:
    """SIGKILL `proc`'s process group as soon as a checkpoint write is seen in progress, after the attempt wrote one
    checkpoint beyond the one it resumed from (so every attempt makes progress). None when the run ended first."""
    deadline, start = time.monotonic() + timeout, newest_checkpoint_batch(folder)
    while newest_checkpoint_batch(folder) <= start or not partial_checkpoint_exists(folder):
        if proc.poll() is not None:
            return None
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError(f"the run made no progress within {timeout:.0f} s")
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return {"mode": "save", "resumed_from": start, "killed_in_step": last_logged_batch(folder) + 1,
            "newest_checkpoint": newest_checkpoint_batch(folder)}


def kill_after_progress(proc: subprocess.Popen, folder: Path, rng: random.Random, max_delay: float,
                        timeout: float, max_duration: int, save_interval: int) -> Optional[dict]:
    """SIGKILL `proc`'s process group at a random moment after it wrote a checkpoint newer than the one it resumed
    from: pick a step b from that checkpoint c to c + save_interval - 1, wait until b is logged, then wait a random
    fraction of one step's time (at most max_delay) -- the kill lands anywhere in step b + 1, the save of
    checkpoint b included. Returns what happened, or None when the run ended first."""
    progress, deadline = _Progress(folder), time.monotonic() + timeout
    start, _ = progress.poll()

    def wait_until(done: Callable[[int, int], bool]) -> bool:
        while not done(*progress.poll()):
            if proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise TimeoutError(f"the run made no progress within {timeout:.0f} s")
            time.sleep(0.01)
        return True

    if not wait_until(lambda checkpoint, step: checkpoint > start):
        return None
    checkpoint = newest_checkpoint_batch(folder)
    target = rng.randint(checkpoint, max(checkpoint, min(checkpoint + save_interval, max_duration) - 1))
    if not wait_until(lambda _, step: step >= target):
        return None
    delay = rng.uniform(0.0, min(max_delay, progress.step_time(max_delay)))
    time.sleep(delay)
    if proc.poll() is not None:
        return None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return {"mode": "step", "resumed_from": start, "killed_in_step": last_logged_batch(folder) + 1,
            "delay_s": round(delay, 3),
            "newest_checkpoint": newest_checkpoint_batch(folder)}


def final_model_state(folder: Path) -> dict:
    from flexbert.checkpoints.safe_unpickle import safe_torch_load  # like every checkpoint reader: no code from the file
    from flexbert.checkpoints.crash_safe import LATEST

    return safe_torch_load(folder / LATEST)["state"]["model"]


def metrics_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def compare_weights(reference: dict, resumed: dict) -> dict[str, Optional[float]]:
    """name -> max |reference - resumed| (None where a tensor is missing or its shape differs)."""
    diffs: dict[str, Optional[float]] = {}
    for name in sorted(set(reference) | set(resumed)):
        a, b = reference.get(name), resumed.get(name)
        if a is None or b is None or a.shape != b.shape:
            diffs[name] = None
        else:
            diffs[name] = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return diffs


def metrics_problems(reference: list[dict], resumed: list[dict]) -> list[str]:
    problems = []
    steps = [r["batch"] for r in resumed]
    if steps != sorted(set(steps)):
        problems.append(f"metrics.jsonl steps are duplicated or out of order: {steps}")
    want = [(r["batch"], r[LOSS_KEY]) for r in reference if LOSS_KEY in r]
    got = [(r["batch"], r[LOSS_KEY]) for r in resumed if LOSS_KEY in r]
    if got != want:
        problems.append(f"per-step train losses differ:\n  uninterrupted {want}\n  resumed       {got}")
    return problems


@dataclass
class Result:
    passed: bool
    kills: list[dict] = field(default_factory=list)
    weight_diffs: dict[str, Optional[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_to_end(cmd_for: Callable[[], list[str]], log_path: Path, timeout: float) -> None:
    proc = launch(cmd_for(), log_path)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if code != 0:
        raise RuntimeError(f"run exited with {code}; log {log_path}:\n{log_path.read_text()[-4000:]}")


def compare_runs(reference: Path, folder: Path) -> tuple[dict[str, Optional[float]], list[str]]:
    """(per-tensor max |diff| of the final weights, problems); no problems = bit-identical weights and losses."""
    import torch

    ref_state, got_state = final_model_state(reference), final_model_state(folder)
    diffs = compare_weights(ref_state, got_state)
    unequal = [n for n in diffs if n not in ref_state or n not in got_state or ref_state[n].shape != got_state[n].shape
               or not torch.equal(ref_state[n], got_state[n])]
    problems = [f"{len(unequal)} tensors differ: {unequal[:8]}"] if unequal else []
    return diffs, problems + metrics_problems(metrics_lines(reference), metrics_lines(folder))


def run_experiment(data: Path, workdir: Path, *, world_size: int = 1, kills: int = 3, seed: int = 0,
                   max_duration: int = 12, save_interval: int = 2, max_delay: float = 1.5,
                   reference: Optional[Path] = None, recheck: bool = True, timeout: float = 300.0,
                   extra: Optional[dict] = None, save_kill_share: float = 0.0,
                   modes: Optional[list[str]] = None, log: Callable[[str], None] = print) -> Result:
    """Kill the run `kills` times at random moments, resume each time, compare with `reference` (an uninterrupted
    run's save folder with the same settings; run here first when None).

    extra: more overrides for every run (dropout, warmup: `experiment_overrides`). save_kill_share: the share of
    kills that land mid-save (`kill_during_save`) rather than at a random moment of a step; `modes` ("save" /
    "step" per attempt, repeated) fixes the choice instead.

    recheck: on a mismatch, run the uninterrupted command once more. If the two uninterrupted runs disagree, the
    baseline itself is not reproducible (seen only when the source tree was edited between runs: each process
    imports the code as it is at its start); the result then PASSes only if the resumed run equals the second
    uninterrupted run bit for bit, and a note says so."""
    rng, extra = random.Random(seed), dict(extra or {})
    workdir.mkdir(parents=True, exist_ok=True)

    def uninterrupted(name: str) -> Path:
        out = workdir / name
        log(f"{name} run ({world_size} process(es), {max_duration} batches) ...")
        run_to_end(lambda: command(world_size, run_overrides(data, out, max_duration, save_interval, **extra)),
                   workdir / f"{name}.log", timeout)
        return out

    reference = reference or uninterrupted("uninterrupted")
    folder = workdir / "interrupted"
    cmd_for = lambda: command(world_size, run_overrides(data, folder, max_duration, save_interval, **extra))  # noqa: E731
    result = Result(passed=False)
    for attempt in range(kills):
        proc = launch(cmd_for(), workdir / f"attempt{attempt}.log")
        mode = modes[attempt % len(modes)] if modes else ("save" if rng.random() < save_kill_share else "step")
        if mode == "save":
            killed = kill_during_save(proc, folder, timeout)
        else:
            killed = kill_after_progress(proc, folder, rng, max_delay, timeout, max_duration, save_interval)
        if killed is None:
            log(f"attempt {attempt}: finished before it could be killed (exit {proc.wait()})")
            break
        result.kills.append(killed)
        when = ("while writing a checkpoint" if killed["mode"] == "save" else
                f"{killed['delay_s']} s after step {killed['killed_in_step'] - 1} was logged")
        log(f"attempt {attempt} (resumed from ba{killed['resumed_from']}): SIGKILL in step {killed['killed_in_step']}, "
            f"{when}")
    log("final attempt: resume to the end ...")
    run_to_end(cmd_for, workdir / "final.log", timeout)

    result.weight_diffs, result.problems = compare_runs(reference, folder)
    if result.problems and recheck:
        second = uninterrupted("uninterrupted_again")
        baseline_diffs, baseline_problems = compare_runs(reference, second)
        if baseline_problems:
            worst = max((d for d in baseline_diffs.values() if d is not None), default=float("nan"))
            result.notes.append(f"two uninterrupted runs differ (max |diff| {worst:.3g}): this machine is not "
                                f"run-to-run deterministic; comparing with the second uninterrupted run")
            result.weight_diffs, result.problems = compare_runs(second, folder)
    if len(result.kills) < kills:
        result.problems.append(f"only {len(result.kills)} of {kills} kills happened: make the run longer")
    result.passed = not result.problems
    return result


def report(result: Result, log: Callable[[str], None] = print) -> None:
    width = max(map(len, result.weight_diffs), default=10)
    log(f"{'tensor':<{width}}  max |diff|")
    for name, diff in result.weight_diffs.items():
        log(f"{name:<{width}}  {'missing/shape' if diff is None else f'{diff:.3g}'}")
    for note in result.notes:
        log(f"note: {note}")
    for problem in result.problems:
        log(f"problem: {problem}")
    log(f"{len(result.kills)} kills: {result.kills}")
    log("PASS" if result.passed else "FAIL")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--data", type=Path, help="a tiny_corpus folder (tokenizer/ and mds/); built when omitted")
    parser.add_argument("--workdir", type=Path, help="where runs go (default: a temporary folder)")
    parser.add_argument("--max-duration", type=int, default=12, help="batches")
    parser.add_argument("--save-interval", type=int, default=3, help="batches between checkpoints [3]")
    parser.add_argument("--max-delay", type=float, default=1.5, help="longest wait after a checkpoint before a kill (s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout in every block [0.1]")
    parser.add_argument("--warmup-tokens", default="2500tok", help="batch-size warmup length [2500tok]")
    parser.add_argument("--save-kill-share", type=float, default=0.4, help="share of kills landing mid-save [0.4]")
    parser.add_argument("--ci", action="store_true", help="the short variant: 1 process, 2 kills (one mid-save), "
                                                          "9 steps, checkpoints every 4")
    args = parser.parse_args(argv)
    if args.ci:
        args.world_size, args.kills, args.max_duration, args.save_interval = 1, 2, 9, 4
    with tempfile.TemporaryDirectory(prefix="fault_injection_") as tmp:
        workdir = args.workdir or Path(tmp)
        data = args.data or build_tiny_corpus(Path(tmp) / "data")
        start = time.time()
        result = run_experiment(data, workdir, world_size=args.world_size, kills=args.kills, seed=args.seed,
                                max_duration=args.max_duration, save_interval=args.save_interval,
                                max_delay=args.max_delay, save_kill_share=args.save_kill_share,
                                modes=["save", "step"] if args.ci else None,
                                extra=experiment_overrides(args.dropout, args.warmup_tokens))
        report(result)
        print(f"({time.time() - start:.0f} s)")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
