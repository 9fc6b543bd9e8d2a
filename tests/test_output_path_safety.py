"""Planted files and names that would make a tool write outside its output folder: a `.lock` symlink (or hard
link) in a save / sweep folder (flexbert/folder_lock.py), and eval task names used as path components
(flexbert/eval/spec.py)."""

import os

import pytest

from flexbert.eval.spec import EvalConfigError, _build, TOP_LEVEL
from flexbert.folder_lock import LOCK_NAME, FolderBusyError, hold_folder, release_folder


@pytest.mark.parametrize("link", ["symlink", "dangling symlink", "hard link"])
def test_lock_does_not_follow_a_planted_link(tmp_path, link):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    folder = tmp_path / "run"
    folder.mkdir()
    if link == "symlink":
        os.symlink(victim, folder / LOCK_NAME)
    elif link == "dangling symlink":  # O_CREAT through it would create the target
        os.symlink(tmp_path / "created-elsewhere", folder / LOCK_NAME)
    else:
        os.link(victim, folder / LOCK_NAME)
    with pytest.raises(FolderBusyError, match=f"{LOCK_NAME}.*(link).*remove it"):
        hold_folder(folder, "training run", "r")
    release_folder(folder)
    assert victim.read_text() == "the user's file\n"
    assert not (tmp_path / "created-elsewhere").exists()


def test_a_plain_lock_file_is_still_taken(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")  # left by an earlier run: only a name to lock
    assert hold_folder(tmp_path, "training run", "r") == tmp_path / LOCK_NAME
    release_folder(tmp_path)


def _spec(tmp_path, task_name):
    cfg = {**TOP_LEVEL, "base_run_name": "e", "model": {"model_config": {"hidden_size": 8}},
           "tasks": {task_name: {"data": {"train": "t.jsonl", "validation": "v.jsonl"}}}}
    return _build(cfg, "eval.yaml", str(tmp_path / "out"), require_start=False)


@pytest.mark.parametrize("name", ["../../X/t", "/abs", "a/b", "..", ".hidden", "sp ace", ""])
def test_task_names_that_are_not_plain_folder_names_are_refused(tmp_path, name):
    with pytest.raises(EvalConfigError, match="task name .* letters, digits"):
        _spec(tmp_path, name)


def test_ordinary_task_names_are_accepted(tmp_path):
    for name in ("mnli", "sst-2", "my_task.v2", "STS_B"):
        assert _spec(tmp_path, name).tasks[0].name == name
