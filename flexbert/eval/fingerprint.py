"""What a (task, seed) result was computed from, by content: a finished result is reused only if its fingerprint
equals the one computed now.

The starting point counts by its bytes, not its path: retraining into the same checkpoint path, or replacing the
files of a Hugging Face folder, changes the fingerprint and the rerun recomputes. A folder counts by the files
that hold its weights, config and tokenizer (names and bytes). Data files, a local tokenizer and a local dataset
folder count by content too; every setting of the task that decides the result (trainer_kwargs, model_config
overrides, optimizer, schedule, precision, algorithms, metrics, seed) by value. Files are read in chunks (a
checkpoint can be many GB) and each digest is cached for this process only, keyed by (path, size, mtime, inode),
so a file rewritten in place is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

CHUNK = 8 << 20
_digests: dict[tuple, str] = {}

# The files of a Hugging Face folder that decide the model a run starts from (weights, config, tokenizer).
_FOLDER_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "tokenizer.model")


def file_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _folder_files(folder: Path, weights_only: bool) -> list[Path]:
    if not weights_only:  # a dataset folder: everything in it
        return sorted(p for p in folder.rglob("*") if p.is_file())
    names = set(_FOLDER_FILES)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                names.update(str(v) for v in json.loads((folder / index).read_text())["weight_map"].values())
            except (ValueError, KeyError, AttributeError):
                pass  # a damaged index is refused when the model is loaded; its bytes are hashed either way
    return sorted(folder / name for name in names if Path(name).name == name and (folder / name).is_file())


def content_sha256(path: str | os.PathLike, weights_only: bool = True) -> str:
    """The digest of a file's bytes, or of a folder's (relative name, file digest) list."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in _folder_files(path, weights_only):
        digest.update(f"{file.relative_to(path)}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _local_content(name: Optional[str], weights_only: bool = True) -> Optional[str]:
    """Content digest of a local path; None for a name that is not one (a hub or cache name counts by value)."""
    if name and Path(name).exists():
        return content_sha256(name, weights_only)
    return None


def starting_point(spec) -> dict[str, Any]:
    """Where fine-tuning starts: the path, the content digest of the checkpoint or folder (its architecture
    decides a random-init model too), and whether its weights are used."""
    path = spec.starting_point
    return {"path": path, "sha256": _local_content(path), "random_init": not (path and spec.use_pretrained)}


def task_fingerprint(spec, task, seed: int, start: Optional[dict[str, Any]] = None) -> str:
    data = dict(task.data)
    for key in ("train", "validation"):
        if data.get(key):
            data[f"{key}_sha256"] = _local_content(data[key])
    if data.get("dataset"):
        data["dataset_sha256"] = _local_content(data["dataset"], weights_only=False)
    start = start or starting_point(spec)
    if task.type == "retrieval":
        return _retrieval_fingerprint(spec, task, seed, start, data)
    payload = {"task": [task.trainer, task.model_config, data, task.metrics], "seed": seed,
               "start": {"sha256": start["sha256"], "random_init": start["random_init"]},
               "model_config": spec.model_config, "optimizer": spec.optimizer, "scheduler": spec.scheduler,
               "algorithms": spec.algorithms, "precision": spec.precision, "max_seq_len": spec.max_seq_len,
               "tokenizer": [spec.tokenizer_name, _local_content(spec.tokenizer_name)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _retrieval_fingerprint(spec, task, seed: int, start: dict[str, Any], data: dict[str, Any]) -> str:
    """A zero-shot retrieval result depends on the encoder, the folder's files and the scoring settings only:
    optimizer, schedule and trainer settings train nothing there, so changing them reruns nothing; a fine-tuned
    one (data.train) on those settings and the pairs' content too."""
    data["folder_sha256"] = _local_content(data["folder"], weights_only=False)
    payload = {"task": ["retrieval", task.retrieval, task.model_config, data, task.metrics], "seed": seed,
               "start": {"sha256": start["sha256"], "random_init": start["random_init"]},
               "model_config": spec.model_config, "tokenizer": [spec.tokenizer_name, _local_content(spec.tokenizer_name)]}
    if task.trainer:  # fine-tuned: the training settings decide the result too
        payload.update(trainer=task.trainer, optimizer=spec.optimizer, scheduler=spec.scheduler,
                       algorithms=spec.algorithms, precision=spec.precision)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
