"""Sharded (torch.distributed.checkpoint) checkpoints under the safe loader and autoresume
(flexbert/safe_unpickle.py, flexbert/train/checkpoint_safety.py): the `.metadata` index and every non-tensor value
of a `.distcp` file pass an allow-list before torch unpickles them in full; a folder whose index is missing or
truncated is not resumed from. The 2-rank round trip through Composer's reader is in test_distributed_fsdp.py."""

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dist_cp

from flexbert.safe_unpickle import UnreadableCheckpointError, UnsafeCheckpointError, validate_for_composer
from flexbert.train.checkpoint_safety import LATEST, find_resume_checkpoint, repair_latest


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
