"""Shared helpers for the corpus-preparation tools in `data_prep/`.

Inside:
- `DataError` (an input problem, reported as `file:line: message`) and `run_main` (turns it into one
  line on stderr and exit code 2 instead of a traceback wall);
- `atomic_output_dir`: build an output folder under a temporary sibling name and rename it into place
  only when everything succeeded, so an interrupted run never leaves a folder that looks complete;
- `expand_inputs` / `iter_documents`: the document readers shared by `train_tokenizer.py` and
  `tokenize_to_mds.py` (.txt, .md, .rst, .jsonl, .parquet, folders, globs);
- `progress`, `folder_size`, `human_bytes`: progress bar and summary formatting.

Input formats (one rule for every tool):
- `.jsonl`: one JSON object per line; the document is the string in `--text-field`. Blank lines are ignored.
- `.txt`, `.md`, `.rst` (text files): `--txt-doc file` (default) makes the whole file one document, as a page of
  prose or a README is; `--txt-doc paragraph` one document per blank-line-separated paragraph; `--txt-doc line`
  one document per line (blank lines are empty documents).
- `.parquet`: one document per row, from the `--text-field` column.
Records are numbered from 1 (`file:line` for text formats, `file:row` for parquet).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

from flexbert.errors import DataError  # noqa: F401 -- the tools raise and catch this one

TEXT_SUFFIXES = (".txt", ".md", ".rst")
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")


def _file_system_failure(err: BaseException) -> Optional[str]:
    """'cannot write FILE: No space left on device' for an OSError (full disk, read-only folder, quota, size limit)
    or for the Rust tokenizers' re-raise of one (`Exception: No space left on device (os error 28)`); else None."""
    if isinstance(err, OSError) and err.errno is not None:
        where = f" {err.filename}" if err.filename else ""
        return f"cannot write{where}: {err.strerror or err}"
    if re.search(r"\(os error \d+\)", str(err)):
        return f"cannot write the output: {str(err).strip().splitlines()[0]}"
    return None


def run_main(body: Callable[[], int], prog: str) -> int:
    """Run a tool's body; input errors become one stderr line and exit code 2, Ctrl-C exit code 130.

    Anything else is a bug in the tool and keeps its traceback.
    """
    try:
        return body()
    except DataError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 -- only file-system failures are turned into a line; the rest re-raise
        reason = _file_system_failure(err)
        if reason is None:
            raise
        print(f"{prog}: error: {reason}; nothing was replaced (a previous output, if any, is intact)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was written", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------------
# Atomic output folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


OWNER_MARKER = ".data_prep-owner.json"  # written inside every OUT.tmp-<pid> / OUT.old-<pid> folder a tool makes


def _write_marker(folder: Path, out: Path, kind: str, tool: str) -> None:
    """Sign `folder` as this process's `kind` ("tmp" or "old") folder for OUT."""
    info = {"tool": tool, "kind": kind, "pid": os.getpid(), "out": os.path.realpath(out),
            "written": datetime.datetime.now().isoformat(timespec="seconds")}
    (folder / OWNER_MARKER).write_text(json.dumps(info) + "\n", encoding="utf-8")


def _marker(folder: Path) -> Optional[dict]:
    try:
        info = json.loads((folder / OWNER_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _gone(pid) -> bool:
    """The process `pid` has ended (an earlier process that had our pid has ended too)."""
    return isinstance(pid, int) and (pid == os.getpid() or not _pid_alive(pid))


def _leftovers(out: Path, kind: str, tool: str) -> List[Path]:
    """`OUT.<kind>-<pid>` folders a data_prep tool made for OUT in a process that is gone, oldest first. Folders
    that merely share the name pattern are the user's: they are left alone, with a note."""
    found = []
    for path in out.parent.glob(f"{glob.escape(out.name)}.{kind}-*"):
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit():
            continue
        info = _marker(path) if path.is_dir() and not path.is_symlink() else None
        ours = bool(info) and info.get("kind") == kind and info.get("pid") == int(pid) \
            and info.get("out") == os.path.realpath(out)
        if not ours:
            print(f"{tool}: note: left {path} alone: it is named like an interrupted run's leftover, but holds no "
                  f"{OWNER_MARKER} written for {out} by data_prep", file=sys.stderr)
        elif _gone(int(pid)):  # a live one is another run at work
            found.append(path)
    return sorted(found, key=lambda path: path.stat().st_mtime)


def recover_interrupted_swap(out: Path, tool: str) -> None:
    """Undo what a kill during the final swap of `atomic_output_dir` left, so OUT is the last complete output.

    The swap signs OUT and renames it to `OUT.old-<pid>`, renames `OUT.tmp-<pid>` (signed when created) to OUT, then
    deletes the old one. Killed between the two renames, OUT is missing: the old output is moved back (the new one
    is not trusted: a `.tmp-` folder may just as well be an unfinished build). Killed after them, the `.old-` folder
    is garbage. Unfinished `.tmp-` folders of dead processes are deleted. Only folders signed by a data_prep tool for
    this OUT, by a process that is gone, are touched; a marker left inside OUT by a kill is removed."""
    olds = _leftovers(out, "old", tool)
    if olds and not out.exists():
        newest = olds.pop()
        newest.rename(out)
        print(f"{tool}: recovered {out} from {newest.name}, left by an interrupted run", file=sys.stderr)
    info = _marker(out) if out.is_dir() else None
    if info and info.get("out") == os.path.realpath(out) and _gone(info.get("pid")):  # killed mid-swap
        os.remove(out / OWNER_MARKER)
    for path in olds + _leftovers(out, "tmp", tool):
        shutil.rmtree(path, ignore_errors=True)


def check_disjoint(out: Path, inputs: Sequence[os.PathLike | str]) -> None:
    """Refuse an output folder that equals, contains or lies inside an input: replacing it would delete the input,
    and writing inside an input would feed the output into the next read of that input."""
    target = Path(os.path.realpath(out))
    for given in inputs:
        text = str(given)
        if glob.has_magic(text):  # the fixed part of a pattern is the folder it reads
            text = text[: min(text.index(c) for c in "*?[" if c in text)]
            text = text if text.endswith(os.sep) else os.path.dirname(text)
        source = Path(os.path.realpath(text or "."))
        if target == source:
            raise DataError(f"--out {out} is the input {given}; choose a separate output folder")
        if source.is_relative_to(target):
            raise DataError(f"--out {out} contains the input {given}; replacing it would delete the input")
        if target.is_relative_to(source):
            raise DataError(f"--out {out} is inside the input {given}; choose a folder outside the input")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing non-empty folder (or any file) unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output path exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_output_dir(out: os.PathLike, overwrite: bool = False, *, inputs: Sequence[os.PathLike | str],
                      tool: str) -> Iterator[Path]:
    """Yield a fresh temporary sibling `OUT.tmp-<pid>`; on success it is renamed to `OUT`.

    On any exception (including KeyboardInterrupt) the temporary folder is removed and `OUT` is left
    untouched. A run killed with SIGKILL leaves only the `.tmp-<pid>` folder, which no reader mistakes
    for a finished output; killed during the final swap it leaves `OUT.old-<pid>`, which the next run
    moves back (`recover_interrupted_swap`). Both carry OWNER_MARKER (tool, pid, time), which is what lets a later
    run touch them. `inputs` (files, folders, globs: everything the tool reads) must not overlap OUT; every tool
    names them, so that no `--overwrite` can delete what it reads.
    """
    out = Path(out)
    check_disjoint(out, inputs)
    recover_interrupted_swap(out, tool)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists() or tmp.is_symlink():  # ours would have been deleted above: this one is the user's
        raise DataError(f"{tmp} exists and was not made by data_prep; move it away and rerun")
    tmp.mkdir()
    try:
        _write_marker(tmp, out, "tmp", tool)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Move the old folder aside first so there is never a moment with a half-replaced OUT.
    old = None
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        if old.exists() or old.is_symlink():
            raise DataError(f"{old} exists and was not made by data_prep; move it away and rerun")
        _write_marker(out, out, "old", tool)  # signed before the rename, so the renamed folder is always signed
        out.rename(old)
    tmp.rename(out)
    os.remove(out / OWNER_MARKER)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Readers


def expand_inputs(args: Sequence[str]) -> List[Path]:
    """Turn files, folders (searched recursively) and glob patterns into a list of input files.

    Folder and glob contents are sorted so the document order (and so every output) is reproducible.
    """
    files: List[Path] = []

    def from_folder(folder: Path) -> List[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)

    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = from_folder(path)
            if not found:
                raise DataError(f"folder has no {'/'.join(SUPPORTED_SUFFIXES)} files", path)
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUPPORTED_SUFFIXES:
                raise DataError(f"unsupported file type '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}", path)
            files.append(path)
        elif glob.has_magic(arg):
            found = []
            for match in sorted(glob.glob(arg, recursive=True)):
                match_path = Path(match)
                if match_path.is_dir():
                    found.extend(from_folder(match_path))
                elif match_path.suffix in SUPPORTED_SUFFIXES:
                    found.append(match_path)
            if not found:
                raise DataError(f"glob '{arg}' matches no {'/'.join(SUPPORTED_SUFFIXES)} files")
            files.extend(found)
        else:
            raise DataError("input not found (not a file, folder or glob that matches)", path)
    return files


@dataclass
class Document:
    text: str
    path: Path
    line: int  # 1-based line (text formats) or row (parquet)


@dataclass
class BadRecords:
    """Collects record-level errors when `skip` is set, otherwise raises the first one."""

    skip: bool = False
    count: int = 0
    examples: List[str] = field(default_factory=list)
    max_examples: int = 5

    def report(self, err: DataError) -> None:
        if not self.skip:
            raise err
        self.count += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    def print_examples(self, prog: str) -> None:
        for example in self.examples:
            print(f"{prog}: skipped bad record: {example}", file=sys.stderr)
        if self.count > len(self.examples):
            print(f"{prog}: ... and {self.count - len(self.examples)} more bad records", file=sys.stderr)


def _iter_jsonl(path: Path, text_field: str, bad: BadRecords) -> Iterator[Document]:
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.report(DataError(f"invalid UTF-8 at byte {err.start} of the line", path, line_no))
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                bad.report(DataError(f"invalid JSON ({err.msg} at column {err.colno})", path, line_no))
                continue
            if not isinstance(record, dict):
                bad.report(DataError(f"expected a JSON object, got {type(record).__name__}", path, line_no))
                continue
            if text_field not in record:
                keys = ", ".join(sorted(record)[:8])
                bad.report(DataError(f"missing field '{text_field}' (keys: {keys}); set --text-field", path, line_no))
                continue
            text = record[text_field]
            if not isinstance(text, str):
                bad.report(DataError(f"field '{text_field}' is {type(text).__name__}, expected a string", path, line_no))
                continue
            yield Document(text, path, line_no)


def _iter_txt(path: Path, txt_doc: str, bad: BadRecords) -> Iterator[Document]:
    if txt_doc == "file":
        data = path.read_bytes()
        try:
            yield Document(data.decode("utf-8"), path, 1)
        except UnicodeDecodeError as err:
            line_no = data[: err.start].count(b"\n") + 1
            bad.report(DataError("invalid UTF-8", path, line_no))
        return
    if txt_doc == "paragraph":
        yield from _iter_paragraphs(path, bad)
        return
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.report(DataError(f"invalid UTF-8 at byte {err.start} of the line", path, line_no))
                continue
            yield Document(text.rstrip("\r\n"), path, line_no)


def _iter_paragraphs(path: Path, bad: BadRecords) -> Iterator[Document]:
    """Runs of non-blank lines, each numbered by its first line."""
    lines: List[str] = []
    first = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                bad.report(DataError(f"invalid UTF-8 at byte {err.start} of the line", path, line_no))
                continue
            if text.strip():
                first = first if lines else line_no
                lines.append(text)
            elif lines:
                yield Document("\n".join(lines), path, first)
                lines = []
    if lines:
        yield Document("\n".join(lines), path, first)


def _iter_parquet(path: Path, text_field: str, bad: BadRecords) -> Iterator[Document]:
    import pyarrow.parquet as pq  # imported here: only parquet inputs pay for it

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"cannot read parquet file ({err})", path) from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise DataError(f"no column '{text_field}' (columns: {', '.join(names)}); set --text-field", path)
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                kind = "null" if value is None else type(value).__name__
                bad.report(DataError(f"column '{text_field}' is {kind}, expected a string", path, row))
                continue
            yield Document(value, path, row)


def iter_documents(
    files: Iterable[Path], text_field: str = "text", txt_doc: str = "file", bad: Optional[BadRecords] = None
) -> Iterator[Document]:
    """Yield every document of every file in order; record errors go to `bad` (raise by default)."""
    bad = bad if bad is not None else BadRecords()
    for path in files:
        if path.suffix == ".jsonl":
            yield from _iter_jsonl(path, text_field, bad)
        elif path.suffix in TEXT_SUFFIXES:
            yield from _iter_txt(path, txt_doc, bad)
        elif path.suffix == ".parquet":
            yield from _iter_parquet(path, text_field, bad)
        else:
            raise DataError(f"unsupported file type '{path.suffix}'", path)


def argument_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A script's parser: the first paragraph of its module docstring as description, everything after the usage
    line as epilog."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_input_arguments(parser) -> None:
    """The input options shared by the tools that read documents."""
    parser.add_argument("--text-field", default="text", help="JSONL field / parquet column holding the text [text]")
    parser.add_argument(
        "--txt-doc",
        choices=("file", "paragraph", "line"),
        default="file",
        help="text files (.txt/.md/.rst): the whole file is one document (file), or each blank-line-separated "
             "paragraph (paragraph), or each line (line) [file]",
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")


# --------------------------------------------------------------------------------------------------
# Progress and summaries


def progress(desc: str, unit: str, quiet: bool = False, total: Optional[int] = None):
    """A tqdm bar on stderr (nothing when `quiet`)."""
    from tqdm import tqdm

    return tqdm(desc=desc, unit=unit, total=total, disable=quiet, mininterval=0.5, dynamic_ncols=True, unit_scale=True)


def folder_size(path: os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"
