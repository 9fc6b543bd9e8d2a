"""`--out s3://bucket/prefix` for the data_prep tools: build locally, then publish to the object store.

`output_folder(out, ...)` is `atomic_output_dir` for a local OUT. For an `s3://` OUT it
- checks the location first (bucket, credentials, endpoint: one line in seconds, before any work is done) and
  refuses a prefix that already holds objects unless `overwrite` (the local rule: never replace silently);
- yields a temporary local folder; the tool writes its output there;
- on success uploads it with mosaicml-streaming's `CloudUploader` (the uploader its `MDSWriter` uses), every
  `index.json` after the shards it lists and `manifest.json` last: a reader never sees a split whose shards are not
  all there. With `overwrite` the old index files are deleted before any shard is replaced, and objects the new
  output does not have are deleted after it is complete.
On failure nothing new is readable: the old split (or none) stays, and the local folder is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, Sequence

from data_prep._io import DataError, atomic_output_dir

# flexbert.data.remote is imported where it is used: importing the flexbert.data package loads torch, and a tool's
# --help (or a local --out) must not wait for that.

INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.json"


def upload_order(folder: Path) -> List[str]:
    """Relative paths of the files in `folder`: shards first, then every index.json, manifest.json last."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def rank(name: str) -> int:
        base = os.path.basename(name)
        return 2 if name == MANIFEST_FILE else 1 if base == INDEX_FILE else 0

    return sorted(files, key=lambda name: (rank(name), name))


def _delete(uri: str, keys: Sequence[str]) -> None:
    from flexbert.data.remote import s3_client, split_s3_uri

    if not keys:
        return
    bucket, _ = split_s3_uri(uri)
    client = s3_client()
    for start in range(0, len(keys), 1000):  # the most one request may delete
        chunk = [{"Key": key} for key in keys[start:start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})


def publish(local: Path, uri: str, overwrite: bool, tool: str) -> None:
    """Upload the files of `local` under `uri` in `upload_order`; see the module docstring."""
    from streaming.base.storage import CloudUploader

    from flexbert.data.remote import RemoteStoreError, describe_failure, endpoint_of, s3_client, split_s3_uri

    # exist_ok: the local folder is full by design (it is what we upload); streaming would log a warning saying so.
    upload_log = logging.getLogger("streaming.base.storage.upload")
    level = upload_log.level
    upload_log.setLevel(logging.ERROR)
    try:
        uploader = CloudUploader.get(out=(str(local), uri), keep_local=True, exist_ok=True)
    finally:
        upload_log.setLevel(level)
    _, prefix = split_s3_uri(uri)
    existing = uploader.list_objects() if overwrite else []
    names = upload_order(local)
    new_keys = {"/".join(filter(None, (prefix, name))) for name in names}
    try:
        _delete(uri, [key for key in existing if os.path.basename(key) in (INDEX_FILE, MANIFEST_FILE)])
        for name in names:
            uploader.upload_file(name)
        _delete(uri, [key for key in existing if key not in new_keys])
    except Exception as err:  # noqa: BLE001 -- an object-store failure becomes one line; anything else re-raises
        line = describe_failure(err, uri, split_s3_uri(uri)[0], endpoint_of(s3_client()))
        if line is None:
            raise
        raise RemoteStoreError(f"{line}; the upload stopped: no split it wrote is readable (index files go "
                               f"last), rerun with --overwrite") from None
    print(f"{tool}: uploaded {len(names)} files to {uri}")


def check_target(uri: str, overwrite: bool, option: str) -> None:
    """Before any work: `uri` is an s3:// location we can list, and empty unless `overwrite` (`option` names the
    command-line option that gave it)."""
    from flexbert.data.remote import check_s3_location, split_s3_uri

    if not str(uri).startswith("s3://"):
        raise DataError(f"{option} {uri}: only local folders and s3:// locations are supported")
    if not split_s3_uri(uri)[1]:  # --overwrite of a whole bucket would delete everything else in it
        raise DataError(f"{option} {uri}: give a prefix inside the bucket, e.g. {uri.rstrip('/')}/mds")
    existing = check_s3_location(uri)
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise DataError(f"{option} {uri} already holds objects ({shown}); pass --overwrite to replace them")


@contextlib.contextmanager
def output_folder(out: str, overwrite: bool, *, inputs: Sequence[os.PathLike | str], tool: str) -> Iterator[Path]:
    """The folder a tool writes its output into: `atomic_output_dir(out)` for a local OUT, a temporary folder
    published to the object store on success for `s3://` (see the module docstring)."""
    if "://" not in str(out):
        with atomic_output_dir(out, overwrite, inputs=inputs, tool=tool) as tmp:
            yield tmp
        return
    check_target(out, overwrite, option="--out")
    with tempfile.TemporaryDirectory(prefix=f"{tool}-") as tmp:
        yield Path(tmp)
        publish(Path(tmp), out, overwrite, tool)
