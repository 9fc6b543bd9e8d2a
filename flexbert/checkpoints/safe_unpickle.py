"""Opening Composer checkpoints without letting them run code: `torch.load(weights_only=True)` plus an allow-list.

What a Composer checkpoint pickles besides tensors (the released files were written by Composer 0.24 / torch 2.4 /
numpy 1.26; checked opcode by opcode against a checkpoint Composer 0.32 writes here):
- numpy arrays and dtypes: the numpy RNG state in `rng` (`np.random.get_state()`), metric values Composer
  0.16+ stored as arrays. An array pickles as `_reconstruct(ndarray, ...)` + `dtype(...)`; numpy 1.x names the
  function `numpy.core.multiarray._reconstruct`, numpy 2.x `numpy._core.multiarray._reconstruct`. torch matches
  allow-list entries by the name written in the pickle, so both names are listed, each bound to numpy 2's
  function (numpy 2 still reads numpy 1 array pickles; only the module moved). Scalars (`...multiarray.scalar`)
  likewise. Unpickling a dtype sets state on an instance of its DType class (`numpy.dtypes.UInt32DType`, ...),
  so the numeric, bool, str and bytes DType classes are listed too.
- `datetime.timedelta` (the wall-clock fields of `state.timestamp`) and `torch.torch_version.TorchVersion`
  (`state.metadata.torch_version`).
Nothing else: no `object` dtype, no arbitrary classes. A checkpoint naming any other global is refused with a
message naming that global.

How Composer's own loader fits in. Composer 0.32 opens every monolithic checkpoint through
`composer.utils.checkpoint.safe_torch_load` (despite the name, "safe" there means catching old-version errors) ->
`_torch_load_with_validation` -> `torch.load(..., weights_only=False)`, i.e. a full unpickler. Before that call
it runs the function named by the environment variable `CHECKPOINT_VALIDATION_FUNCTION`
(`validate(path, specs) -> bool`) on the local file (also after downloading a remote one).
`install_composer_guard()` points that variable at `validate_for_composer`, which opens the file with the
restricted unpickler first and raises `UnsafeCheckpointError` if it names anything outside the allow-list. The file therefore only reaches the full unpickler after the restricted one accepted every global it
references: the full unpickler then calls exactly those allowed functions. Why this and not the alternatives:
- it uses the hook Composer offers, so it covers every load Composer does (load_path, autoresume, URIs), with no
  patching of Composer and no rewritten copy of a multi-GB file;
- the check is cheap: with `mmap=True` torch maps the tensor data instead of reading it, so validating a
  checkpoint costs about one parse of its pickle, not a second copy of its tensors.
A validation function the user had set already is kept and called after ours. Not covered: a file replaced
between the check and the load.

Sharded (FSDP `state_dict_type: sharded`) checkpoints are folders written by torch.distributed.checkpoint: a
`.metadata` pickle (the index) and one `__<rank>_0.distcp` per rank. Composer reads them through
`FileSystemReaderWithValidation`, which calls the same validation function on `.metadata` (torch then opens it with
a full `pickle.load`) and on each `.distcp` file with the byte ranges it will read. In a `.distcp`, tensors are
`torch.load`ed by torch with `weights_only=True`; every other value (timestamps, RNG states, loader states, ...)
is a `torch.save`d blob that torch opens with `weights_only=False`. So:
- `.metadata` must pass a restricted unpickler that knows only the checkpoint index classes of
  torch.distributed.checkpoint, torch sizes / dtypes / layouts and posix paths;
- every data file the index names must lie inside the checkpoint folder. torch opens `folder / relative_path`
  as written, so `./__0_0.distcp`, `sub/__0_0.distcp` and `sub/../__0_0.distcp` all reach a file; each name is
  resolved (symlinks too) and one that is absolute or leaves the folder is refused;
- each non-tensor blob of a `.distcp` that will be read must pass `safe_torch_load`, like a monolithic
  checkpoint. Which ranges are blobs is taken from the index torch itself reads (the `.metadata` Composer
  validated first, in the same process), matched by the resolved file name, never from a `.metadata` found next
  to the data file. A range that index does not name is refused; a data file no checked index names has every
  range checked (a tensor is a `torch.save`d blob too and passes).
"""

from __future__ import annotations

import datetime
import io
import os
import pickle
import re
import zipfile
from typing import Any, Optional, Sequence

import numpy as np
import torch

# The env var Composer reads; where a previously set function is kept so that ours can chain to it.
COMPOSER_VALIDATION_ENV = "CHECKPOINT_VALIDATION_FUNCTION"
CHAINED_VALIDATION_ENV = "FLEXBERT_CHAINED_CHECKPOINT_VALIDATION"
_THIS_VALIDATOR = f"{__name__}.validate_for_composer"

_NUMPY_FUNCTIONS = ("_reconstruct", "scalar")  # ndarray / numpy-scalar rebuilders
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x, numpy 2.x spelling
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64", "complex64", "complex128", "str", "bytes")  # not `object`


class UnreadableCheckpointError(ValueError):
    """The file is not a torch checkpoint at all (neither torch's zip format nor a legacy pickle)."""


class UnsafeCheckpointError(UnreadableCheckpointError):
    """The file's pickle names a Python object outside the allow-list."""


def allowed_globals() -> list[Any]:
    """Entries for `torch.serialization.safe_globals`: objects, or (object, name-in-pickle) pairs."""
    from numpy._core import multiarray  # numpy >= 2 (the project pins numpy 2.x)

    allowed: list[Any] = [datetime.timedelta, torch.torch_version.TorchVersion, np.ndarray, np.dtype]
    # Unpickling a dtype restores its state on an instance of its DType class (numpy >= 1.20), so BUILD needs them.
    allowed += [type(np.dtype(name)) for name in _DTYPES]
    for module in _NUMPY_MODULES:
        for name in _NUMPY_FUNCTIONS:
            allowed.append((getattr(multiarray, name), f"{module}.{name}"))
    return allowed


def safe_torch_load(path, map_location: str = "cpu", mmap: bool = False, *, name: Optional[str] = None) -> Any:
    """`torch.load` with `weights_only=True` and the allow-list; refusals become UnsafeCheckpointError.

    `path` is a file name or a binary file object (then `name` says what it is in messages). mmap=True maps tensor
    data lazily (zip-format files only; older formats are read normally)."""
    is_file = not isinstance(path, (str, os.PathLike))
    name = name or str(path)
    is_zip = zipfile.is_zipfile(path)
    if is_file:
        path.seek(0)
        first = path.read(1)
        path.seek(0)
    else:
        with open(path, "rb") as file:
            first = file.read(1)
    if not is_zip and first != b"\x80":  # PROTO opcode: how every pickle since protocol 2 starts
        raise UnreadableCheckpointError(f"{name}: not a torch checkpoint (neither a zip archive nor a pickle)")
    mmap = mmap and is_zip and not is_file
    with torch.serialization.safe_globals(allowed_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"{name}: refused by the safe loader: {_refusal_reason(str(err))} (Composer checkpoints need only "
                f"tensors, numpy arrays, timedelta and TorchVersion; this file names something else)"
            ) from None


def _refusal_reason(text: str) -> str:
    """What torch's page of advice says was refused: the blocked global by name when it names one (torch words it
    differently for a blocked module, `GLOBAL posix.system whose module posix is blocked`, and for a global outside
    its allow-list, `Unsupported global: GLOBAL fractions.Fraction ...`)."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it references the Python global `{found.group(1)}`, which is not on the allow-list"
    found = re.search(r"WeightsUnpickler error: (.*)", text)
    reason = found.group(1).strip() if found else text.strip().splitlines()[0]
    return reason.split(" Please use `torch.serialization")[0]


# What the `.metadata` index of a torch.distributed.checkpoint folder may name (torch 2.4-2.7 write these).
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_METADATA_GLOBALS = {
    *((_METADATA_MODULE, name) for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                            "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                                            "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # layout by name: torch.strided, ...
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # the checkpoint id (the folder it was written to)
    ("collections", "OrderedDict"),
}
METADATA_FILENAME = ".metadata"


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _METADATA_GLOBALS or is_dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"`{module}.{name}` is not a torch.distributed.checkpoint index class")


def load_sharded_metadata(path) -> Any:
    """The `.metadata` index of a sharded checkpoint, through the restricted unpickler above."""
    try:
        with open(path, "rb") as file:
            return _MetadataUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
        kind = UnsafeCheckpointError if "not a torch.distributed.checkpoint" in str(err) else UnreadableCheckpointError
        raise kind(f"{path}: refused by the safe loader: {err}") from None


# realpath of a checkpoint folder whose `.metadata` passed -> {realpath of a data file it names -> {(offset, length):
# whether torch unpickles that range in full (anything but a tensor)}}. Filled when Composer validates `.metadata`,
# which torch reads (on every rank) before any data file.
_CHECKED_INDEXES: dict[str, dict[str, dict[tuple[int, int], bool]]] = {}


def _data_file_inside(folder: str, relative_path: Any, index_path) -> str:
    """The resolved path of a data file the index names, refused when it is not a plain name inside `folder`."""
    resolved = os.path.realpath(os.path.join(folder, relative_path)) if isinstance(relative_path, str) else None
    if resolved is None or os.path.isabs(relative_path) or os.path.commonpath([folder, resolved]) != folder:
        raise UnsafeCheckpointError(
            f"{index_path}: names the data file {relative_path!r}, outside the checkpoint folder '{folder}'; refusing "
            f"to read it (torch writes every data file inside the folder: re-save the checkpoint)")
    return resolved


def _check_sharded_index(index_path) -> None:
    """Load the index through the restricted unpickler, check every data file name, remember which ranges are blobs."""
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    metadata = load_sharded_metadata(index_path)
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise UnreadableCheckpointError(f"{index_path}: not a torch.distributed.checkpoint index (no storage table)")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(index_path)))
    files: dict[str, dict[tuple[int, int], bool]] = {}
    for index, info in metadata.storage_data.items():
        ranges = files.setdefault(_data_file_inside(folder, info.relative_path, index_path), {})
        is_blob = not isinstance(metadata.state_dict_metadata.get(index.fqn), TensorStorageMetadata)
        span = (info.offset, info.length)
        ranges[span] = ranges.get(span, False) or is_blob
    _CHECKED_INDEXES[folder] = files


def _validate_sharded_blobs(path, specs: Sequence[tuple[int, int]]) -> None:
    """Every range of the `.distcp` file `path` that torch will unpickle in full passes `safe_torch_load`."""
    resolved = os.path.realpath(path)
    named = [files[resolved] for files in _CHECKED_INDEXES.values() if resolved in files]
    to_check = list(specs)
    if named:
        for offset, length in specs:
            if not any((offset, length) in ranges for ranges in named):
                raise UnsafeCheckpointError(
                    f"{path}: bytes {offset}..{offset + length} are not named by the checked {METADATA_FILENAME} "
                    f"index of this checkpoint; refusing to read them (re-save the checkpoint)")
        to_check = [span for span in specs if any(ranges.get(span) for ranges in named)]
    with open(path, "rb") as file:
        for offset, length in to_check:
            file.seek(offset)
            safe_torch_load(io.BytesIO(file.read(length)), name=f"{path} (bytes {offset}..{offset + length})")


def damaged_member(path: str | os.PathLike) -> Optional[str]:
    """Why a torch zip checkpoint cannot be trusted, or None when it is whole: no central directory (written last,
    so a truncated file has none), or a member whose bytes fail the CRC-32 torch wrote for it (corrupted tensor
    data, which torch itself would load without complaint). Reads the whole file once."""
    if os.path.isdir(path):  # a sharded checkpoint folder: its `.metadata` index is written last
        try:
            load_sharded_metadata(os.path.join(path, METADATA_FILENAME))
            return None
        except (OSError, UnreadableCheckpointError) as err:
            return f"its {METADATA_FILENAME} index does not read ({err})"
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                return "an empty archive"
            bad = archive.testzip()
            return None if bad is None else f"member '{bad}' fails its CRC check (corrupted data)"
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as err:
        return f"not a complete zip archive ({err})"


def validate_for_composer(path, specs: Optional[Sequence[tuple[int, int]]] = None) -> bool:
    """Composer's `CHECKPOINT_VALIDATION_FUNCTION`: True when the file passes the restricted unpickler.

    `specs` (byte ranges) is given for the `.distcp` files of sharded checkpoints, `.metadata` is their index."""
    if specs is not None:
        _validate_sharded_blobs(path, specs)
    elif os.path.basename(path) == METADATA_FILENAME:
        _check_sharded_index(path)
    elif os.path.isfile(path):
        problem = damaged_member(path) if zipfile.is_zipfile(path) else None
        if problem:  # torch would load flipped tensor bytes silently
            raise UnreadableCheckpointError(f"{path}: damaged checkpoint: {problem}")
        try:
            safe_torch_load(path, mmap=True)
        except UnreadableCheckpointError:
            raise
        except Exception as err:
            raise UnreadableCheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    chained = os.environ.get(CHAINED_VALIDATION_ENV)
    if chained:
        from importlib import import_module

        module, _, name = chained.rpartition(".")
        return bool(getattr(import_module(module), name)(path, specs))
    return True


def checkpoint_refusal(err: BaseException) -> Optional[UnreadableCheckpointError]:
    """The refusal behind `err`, if any: torch.distributed.checkpoint wraps what a reader raised, per rank, in a
    `CheckpointException` (a BaseException whose text is a traceback), so the one-line reason is dug out here."""
    seen: list[BaseException] = [err]
    while seen:
        current = seen.pop()
        if isinstance(current, UnreadableCheckpointError):
            return current
        seen += [wrapped[0] for wrapped in (getattr(current, "failures", None) or {}).values()
                 if isinstance(wrapped, tuple) and wrapped and isinstance(wrapped[0], BaseException)]
        seen += [cause for cause in (current.__cause__, current.__context__) if cause is not None]
    return None


def install_composer_guard() -> None:
    """Make every checkpoint Composer opens in this process (and its children) pass `validate_for_composer`."""
    current = os.environ.get(COMPOSER_VALIDATION_ENV)
    if current == _THIS_VALIDATOR:
        return
    if current:
        os.environ[CHAINED_VALIDATION_ENV] = current
    os.environ[COMPOSER_VALIDATION_ENV] = _THIS_VALIDATOR
