"""Crash-safe checkpoint files: atomic writes, a `latest` link that names a complete file, clear save errors.

What Composer 0.32 does by itself (monolithic, non-FSDP checkpoints):
- `composer.utils.checkpoint._write_checkpoint_file` opens the FINAL name (`ep{e}-ba{b}-rank0.pt`) with
  `open(name, 'wb')` and `torch.save`s into it. A kill or a full disk mid-write leaves a partial file under a
  checkpoint's name: it fails to load, and with `save_overwrite: false` it blocks the resumed run
  (`FileExistsError ... may conflict with a future checkpoint`). Nothing is fsynced.
- `CheckpointSaver._save_checkpoint` updates `latest-rank0.pt` only after the write returned, so `latest` never
  points to a partial file -- but it does so with `os.remove(link)` then `os.symlink(...)`: a kill between the two
  leaves no `latest`, and autoresume silently starts the run again from batch 0.
- Only rank 0 writes (and only `latest-rank0.pt` exists); autoresume reads rank 0's link on every rank.

What this module adds (installed by `build_trainer`):
- `install_atomic_checkpoint_writes()`: Composer's writer is wrapped so that it writes a hidden
  `.partial-<pid>-NAME` next to the final name (same extension, so Composer picks the same format), fsyncs it,
  `os.replace`s it onto NAME and fsyncs the folder. A name that exists is therefore always complete. On failure
  the partial file is removed and `CheckpointSaveError` says which file, why (e.g. "No space left on device")
  and which checkpoint `latest` still names.
- `find_resume_checkpoint(folder)` / `repair_latest(folder)`: what autoresume will load -- `latest-rank0.pt` when
  it names a complete checkpoint, else the newest complete `ep*-ba*-rank0.pt` file or, with FSDP sharded
  checkpoints (`fsdp_config.state_dict_type: sharded`), `ep*-ba*` folder (the kill-between-remove-and-symlink
  case). A sharded folder is complete when its `.metadata` index reads: torch.distributed.checkpoint writes it
  last, after every rank's `.distcp` file, and Composer points `latest-rank0.pt` at the folder. `repair_latest` (rank 0, before the Trainer reads the link) re-points the link atomically (temporary
  link + `os.replace`) and deletes partial files left by killed writers.
- `check_some_checkpoint_intact(folder)`: when every checkpoint in the folder is damaged, autoresume stops naming
  them (Composer would open `latest` itself and fail on its temporary copy of the file).
- `count_earlier_checkpoints(trainer)`: Composer's `CheckpointSaver` rotates (`save_num_checkpoints_to_keep`)
  only the checkpoints its own process wrote; on a resume, the checkpoints the killed attempts wrote are added to
  its list, oldest first, so the folder ends with the same number as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

from flexbert.checkpoints.safe_unpickle import damaged_member

log = logging.getLogger(__name__)

LATEST = "latest-rank0.pt"  # Composer's default `save_latest_filename` for rank 0
CHECKPOINT_NAME = re.compile(r"^ep(\d+)-ba(\d+)-rank0\.pt$")  # Composer's default `save_filename` for rank 0
SHARDED_CHECKPOINT_NAME = re.compile(r"^ep(\d+)-ba(\d+)$")  # Composer's default `fsdp_config.sharded_ckpt_prefix_dir`
PARTIAL_PREFIX = ".partial-"
_MARK = "_flexbert_atomic"


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the files already in the save folder are untouched."""


def _fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some filesystems do not open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync unsupported (some network filesystems): atomicity holds, durability is best effort
    finally:
        os.close(fd)


def describe_latest(folder: str | os.PathLike) -> str:
    """`latest-rank0.pt -> ep0-ba4-rank0.pt`, or what is wrong with it, for error messages."""
    link = Path(folder) / LATEST
    if not link.is_symlink() and not link.exists():
        return f"no {LATEST} in '{folder}'"
    target = os.readlink(link) if link.is_symlink() else link.name
    return f"'{link}' -> {target}"


def _write_failure(err: BaseException, folder: str) -> Optional[str]:
    """Why writing failed, when `err` is a failed write: an OSError (ENOSPC, EACCES, EROFS, EFBIG, ...), or the
    RuntimeError torch's zip writer raises after one (`[enforce fail at inline_container.cc] unexpected pos ...` /
    `PytorchStreamWriter failed writing file`), which carries the OSError as its context when Python raised it."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return f"{seen.strerror or seen}{f' (errno {seen.errno})' if seen.errno else ''}"
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if isinstance(err, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter failed" in text):
        with contextlib.suppress(OSError):
            import shutil

            free = shutil.disk_usage(folder).free
            return f"the file system refused the write ({free / 2**20:.0f} MiB free on it; full disk, quota or limit?)"
        return "the file system refused the write (full disk, quota or limit?)"
    return None


def atomic_write(write, state_dict: dict[str, Any], filename: str) -> None:
    """`write(state_dict, path)` into a partial file next to `filename`, then rename it onto `filename`."""
    folder, name = os.path.split(os.path.abspath(filename))
    partial = os.path.join(folder, f"{PARTIAL_PREFIX}{os.getpid()}-{name}")
    try:
        write(state_dict, partial)
        _fsync_path(partial)
        os.replace(partial, filename)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(partial)
        reason = _write_failure(err, folder)
        if reason is not None:
            raise CheckpointSaveError(
                f"could not write checkpoint '{filename}': {reason}; nothing was replaced, the earlier checkpoints are "
                f"intact ({describe_latest(folder)}). Free space or fix the folder, then rerun with autoresume=true."
            ) from err
        raise
    _fsync_path(folder, directory=True)


def install_atomic_checkpoint_writes() -> None:
    """Route every monolithic checkpoint Composer writes in this process through `atomic_write` (idempotent)."""
    from composer.utils import checkpoint

    original = checkpoint._write_checkpoint_file
    if getattr(original, _MARK, False):
        return

    def _write_checkpoint_file(state_dict: dict[str, Any], filename: str) -> None:
        atomic_write(original, state_dict, filename)

    setattr(_write_checkpoint_file, _MARK, True)
    _write_checkpoint_file.__doc__ = original.__doc__
    # `_save_checkpoint` looks the writer up as a module global at call time, so replacing it here covers it.
    checkpoint._write_checkpoint_file = _write_checkpoint_file


def is_complete(path: str | os.PathLike) -> bool:
    """A torch zip checkpoint that is complete and whose every member matches its checksum, or a sharded checkpoint
    folder whose `.metadata` index (written last) reads."""
    return damaged_member(path) is None


def _checkpoints(folder: Path) -> list[tuple[int, int, Path]]:
    found = []
    for entry in os.listdir(folder):
        match = CHECKPOINT_NAME.match(entry) if (folder / entry).is_file() else None
        match = match or (SHARDED_CHECKPOINT_NAME.match(entry) if (folder / entry).is_dir() else None)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), folder / entry))
    return sorted(found)


def find_resume_checkpoint(folder: str | os.PathLike | None) -> Optional[Path]:
    """The checkpoint autoresume should continue from: `latest` when it names a complete checkpoint, otherwise the
    newest complete `ep*-ba*-rank0.pt` file or `ep*-ba*` sharded folder; None when there is none (a fresh run).
    Reads only; same answer on every rank."""
    if not folder or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    link = folder / LATEST
    if link.exists() and is_complete(link):
        return link
    for _, _, path in reversed(_checkpoints(folder)):
        problem = damaged_member(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def repair_latest(folder: str | os.PathLike | None) -> Optional[Path]:
    """Rank 0, before autoresume: make `latest-rank0.pt` name `find_resume_checkpoint(folder)` and delete the
    partial files of killed writers. Returns the checkpoint the run will resume from (None: fresh start)."""
    if not folder or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    for entry in os.listdir(folder):
        if entry.startswith(PARTIAL_PREFIX):
            log.warning("removing %s: a checkpoint write that never finished", folder / entry)
            with contextlib.suppress(OSError):
                os.remove(folder / entry)
    target = find_resume_checkpoint(folder)
    link = folder / LATEST
    if target is None or target == link:
        return target
    log.warning("%s was missing or incomplete; resuming from %s, the newest complete checkpoint", link, target.name)
    temporary = folder / f"{PARTIAL_PREFIX}{os.getpid()}-{LATEST}"
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)
    os.symlink(target.name, temporary)
    os.replace(temporary, link)  # atomic: readers see the old link or the new one, never none
    _fsync_path(str(folder), directory=True)
    return target


def check_some_checkpoint_intact(folder: str | os.PathLike | None) -> None:
    """Autoresume found nothing to resume from (`find_resume_checkpoint` is None): fine when the folder holds no
    checkpoint, an error naming each damaged one when it holds only damaged ones."""
    from flexbert.checkpoints.loading import CheckpointError

    if not folder or not Path(folder).is_dir():
        return
    folder = Path(folder)
    paths = [path for _, _, path in _checkpoints(folder)]
    if not paths and (folder / LATEST).exists():
        paths = [(folder / LATEST).resolve()]
    if paths:
        damage = "; ".join(f"{path}: {damaged_member(path)}" for path in reversed(paths))
        raise CheckpointError(
            f"autoresume: no intact checkpoint in '{folder}' ({damage}); restore an intact copy, or move these files "
            f"out of the folder to start the run again from step 0")


def count_earlier_checkpoints(trainer) -> None:
    """Give the trainer's CheckpointSaver the checkpoints already in its folder up to the resumed step (written by
    earlier, killed attempts of this run), oldest first, so that `save_num_checkpoints_to_keep` counts them.
    Later ones are left out: the run writes those names again."""
    from composer.callbacks import CheckpointSaver
    from composer.utils import dist, format_name_with_dist

    resumed_at = int(trainer.state.timestamp.batch)
    sharded = trainer.state.fsdp_sharded_state_dict_enabled
    for saver in trainer.state.callbacks:
        if not isinstance(saver, CheckpointSaver) or saver.num_checkpoints_to_keep < 0 or saver.saved_checkpoints:
            continue
        folder = Path(format_name_with_dist(str(saver.folder), trainer.state.run_name))
        if "://" in str(folder) or not folder.is_dir() or (dist.get_global_rank() != 0 and not sharded):
            continue
        # Composer records a checkpoint by the file it wrote; a sharded one by a file inside its folder (it removes
        # the folder).
        saver.saved_checkpoints = [str(path / "__0_0.distcp" if path.is_dir() else path)
                                   for _, batch, path in _checkpoints(folder) if batch <= resumed_at]
