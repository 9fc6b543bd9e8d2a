"""Sharded (torch.distributed.checkpoint) checkpoints under the safe loader and autoresume
(flexbert/checkpoints/safe_unpickle.py, flexbert/checkpoints/crash_safe.py): the `.metadata` index and every non-tensor value
of a `.distcp` file pass an allow-list before torch unpickles them in full; a folder whose index is missing or
truncated is not resumed from. The 2-rank round trip through Composer's reader is in test_distributed_fsdp.py."""

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dist_cp

from flexbert.checkpoints.safe_unpickle import (UnreadableCheckpointError, UnsafeCheckpointError, checkpoint_refusal,
                                    validate_for_composer)
from flexbert.checkpoints.crash_safe import LATEST, find_resume_checkpoint, repair_latest


class RunsCode:
    """A value whose unpickling calls a function: what a crafted checkpoint would carry."""

    def __reduce__(self):
        return (os.getpid, ())


def _save(folder, state):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group: torch notes that it saves as a single process
        dist_cp.save(state, storage_writer=dist_cp.FileSystemWriter(str(folder)), no_dist=True)
    return folder


def _all_ranges(folder):
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own file: a full unpickle is fine here
    return [(info.offset, info.length) for info in metadata.storage_data.values()]


def test_index_and_plain_values_pass_and_code_is_refused(tmp_path):
    good = _save(tmp_path / "good", {"w": torch.ones(3), "step": 6, "name": "run", "rows": [[1, 2, 3]]})
    assert validate_for_composer(str(good / ".metadata"))
    assert validate_for_composer(str(good / "__0_0.distcp"), _all_ranges(good))

    bad = _save(tmp_path / "bad", {"w": torch.ones(3), "payload": RunsCode()})
    assert validate_for_composer(str(bad / ".metadata"))  # the index itself is clean ...
    with pytest.raises(UnsafeCheckpointError, match="getpid"):  # ... the value it points to is not
        validate_for_composer(str(bad / "__0_0.distcp"), _all_ranges(bad))

    (tmp_path / "forged").mkdir()
    (tmp_path / "forged" / ".metadata").write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(UnsafeCheckpointError, match="getpid.* is not a torch.distributed.checkpoint index class"):
        validate_for_composer(str(tmp_path / "forged" / ".metadata"))
    (tmp_path / "forged" / ".metadata").write_bytes((good / ".metadata").read_bytes()[:40])  # a killed writer
    with pytest.raises(UnreadableCheckpointError):
        validate_for_composer(str(tmp_path / "forged" / ".metadata"))


def test_autoresume_finds_the_newest_complete_sharded_folder(tmp_path):
    """Composer names sharded checkpoints `ep{e}-ba{b}/` and points `latest-rank0.pt` at the folder."""
    run = tmp_path / "run"
    _save(run / "ep0-ba2", {"w": torch.ones(3)})
    _save(run / "ep0-ba4", {"w": torch.ones(3)})
    os.symlink("ep0-ba4", run / LATEST)
    assert find_resume_checkpoint(run) == run / LATEST  # latest names a complete folder
    # a crash while ep0-ba6 was written (no index yet) and while `latest` was re-pointed (link gone)
    (run / "ep0-ba6").mkdir()
    (run / "ep0-ba6" / "__0_0.distcp").write_bytes(b"partial")
    os.remove(run / LATEST)
    assert find_resume_checkpoint(run) == run / "ep0-ba4"
    assert repair_latest(run) == run / "ep0-ba4" and os.readlink(run / LATEST) == "ep0-ba4"
    assert find_resume_checkpoint(tmp_path / "fresh") is None


class TouchesMarker:
    """A value whose unpickling creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_index(folder, relative_path):
    """Point every storage entry of the folder's `.metadata` at `relative_path` (a crafted index)."""
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    for info in metadata.storage_data.values():
        info.relative_path = relative_path
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def _load_through_composer(folder, monkeypatch):
    """What Composer's `load_path` / autoresume does with a sharded folder, with our guard installed."""
    from composer.utils.checkpoint import FileSystemReaderWithValidation

    from flexbert.checkpoints.safe_unpickle import COMPOSER_VALIDATION_ENV, install_composer_guard

    monkeypatch.delenv(COMPOSER_VALIDATION_ENV, raising=False)
    install_composer_guard()
    target = {"w": torch.zeros(3), "payload": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist_cp.load(target, storage_reader=FileSystemReaderWithValidation(str(folder)), no_dist=True)
    return target


@pytest.mark.parametrize("spelling", ["./__0_0.distcp", "sub/__0_0.distcp", "sub/../__0_0.distcp"])
def test_payload_behind_any_path_spelling_is_refused(tmp_path, monkeypatch, spelling):
    """The index may name its data file `./__0_0.distcp` or `sub/__0_0.distcp` (with a clean `.metadata` planted in
    `sub/`): torch's reader opens `folder / relative_path` either way, so the blob it unpickles must be checked."""
    marker = tmp_path / "payload-ran"
    folder = _save(tmp_path / "ckpt", {"w": torch.ones(3), "payload": TouchesMarker(marker)})
    if spelling.startswith("sub/") and ".." not in spelling:
        (folder / "sub").mkdir()
        os.rename(folder / "__0_0.distcp", folder / "sub" / "__0_0.distcp")
        _save(tmp_path / "clean", {"w": torch.ones(3)})  # an index with tensors only, planted next to the data
        (folder / "sub" / ".metadata").write_bytes((tmp_path / "clean" / ".metadata").read_bytes())
    elif ".." in spelling:
        (folder / "sub").mkdir()
    _rewrite_index(folder, spelling)
    with pytest.raises(BaseException) as refused:  # torch wraps what the reader raised in a CheckpointException
        _load_through_composer(folder, monkeypatch)
    assert not marker.exists(), "the payload ran"
    reason = checkpoint_refusal(refused.value)
    assert isinstance(reason, UnsafeCheckpointError) and "`io.open`" in str(reason) and "\n" not in str(reason)


@pytest.mark.parametrize("escape", ["../outside/__0_0.distcp", "ABSOLUTE"])
def test_index_naming_a_file_outside_the_folder_is_refused(tmp_path, monkeypatch, escape):
    marker = tmp_path / "payload-ran"
    _save(tmp_path / "outside", {"w": torch.ones(3), "payload": TouchesMarker(marker)})
    folder = _save(tmp_path / "ckpt", {"w": torch.ones(3), "payload": 1})
    relative = str(tmp_path / "outside" / "__0_0.distcp") if escape == "ABSOLUTE" else escape
    _rewrite_index(folder, relative)
    with pytest.raises(UnsafeCheckpointError, match="outside the checkpoint folder"):
        validate_for_composer(str(folder / ".metadata"))
    with pytest.raises(BaseException) as refused:
        _load_through_composer(folder, monkeypatch)
    assert not marker.exists(), "the payload ran"
    assert "outside the checkpoint folder" in str(checkpoint_refusal(refused.value))


def test_clean_checkpoint_loads_through_composers_reader(tmp_path, monkeypatch):
    folder = _save(tmp_path / "ckpt", {"w": torch.arange(3.0), "payload": "run-name"})
    _rewrite_index(folder, "./__0_0.distcp")  # a harmless spelling of the same file still loads
    loaded = _load_through_composer(folder, monkeypatch)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["payload"] == "run-name"
