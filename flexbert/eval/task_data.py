"""Task examples from local files (JSONL, CSV, TSV, parquet), checked record by record.

A task's `data` section names a `train` and a `validation` file and the fields to read: `text_field`, optional
`text_pair_field`, `label_field`. A record without a field, a label the task does not know, a regression label
that is not a number, or a split with no record fails at once with `file:line: ...` naming the field -- before
any model is built. Labels: the `labels` list gives the classes in order (class i = labels[i]); without it the
distinct training labels, sorted, are the classes. Multi-label records hold a list of labels (in CSV/TSV a
string, split at `label_separator`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from flexbert.errors import DataError
from flexbert.eval.metrics import MULTI, REGRESSION, SINGLE

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass
class Example:
    text: str
    text_pair: Optional[str]
    label: Any  # class index (single-label), float (regression), list of class indices (multi-label)


@dataclass
class TaskData:
    train: list[Example]
    validation: list[Example]
    labels: list  # class names in index order; [] for regression

    @property
    def num_labels(self) -> int:
        return max(1, len(self.labels))


def _check_utf8(path: Path) -> None:
    """Text task files are UTF-8: name the line of the first byte that is not."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8") from None


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, record) for each record; `where` is `file:line` (parquet: `file:row N`)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type '{suffix}'; use one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such task file")
    if suffix != ".parquet":
        _check_utf8(path)
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not a JSON object ({err.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}: not a JSON object")
                yield f"{path}:{number}", record
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for record in reader:
                yield f"{path}:{reader.line_num}", {k: v for k, v in record.items() if v is not None}
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"{path}: not a readable parquet file ({first}); rewrite it, or give the task "
                            "as .jsonl / .csv / .tsv") from None
        for number, record in enumerate(table.to_pylist()):
            yield f"{path}:row {number}", record


@dataclass
class Fields:
    text_field: str = "text"
    text_pair_field: Optional[str] = None
    label_field: str = "label"
    label_separator: str = ","


def _text(record: dict, field: str, where: str) -> str:
    if field not in record or record[field] is None:
        raise DataError(f"{where}: field '{field}' is missing (fields: {', '.join(map(str, record)) or 'none'})")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be text, got {type(value).__name__}")
    return value


def _raw_label(record: dict, fields: Fields, where: str, problem_type: str):
    if fields.label_field not in record or record[fields.label_field] in (None, ""):
        raise DataError(f"{where}: field '{fields.label_field}' is missing (fields: {', '.join(map(str, record)) or 'none'})")
    value = record[fields.label_field]
    if problem_type == REGRESSION:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: field '{fields.label_field}' must be a number for regression, got {value!r}") from None
    if problem_type == MULTI:
        if isinstance(value, str):
            return [v.strip() for v in value.split(fields.label_separator) if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where}: field '{fields.label_field}' must be a list of labels for multi-label, got {value!r}")
        return list(value)
    if isinstance(value, (list, dict)):
        raise DataError(f"{where}: field '{fields.label_field}' must be one label, got {value!r}")
    return value


def _read_split(path: Path, fields: Fields, problem_type: str, split: str) -> list[tuple[str, str, Optional[str], Any]]:
    rows = []
    for where, record in read_records(path):
        text = _text(record, fields.text_field, where)
        pair = _text(record, fields.text_pair_field, where) if fields.text_pair_field else None
        rows.append((where, text, pair, _raw_label(record, fields, where, problem_type)))
    if not rows:
        raise DataError(f"{path}: the {split} split has no records")
    return rows


def _label_key(value) -> str:
    return str(value)


def build_task_data(train_rows, validation_rows, problem_type: str, labels: Optional[list], label_field: str) -> TaskData:
    """Examples with labels mapped to class indices; an unknown label fails naming the record."""
    if problem_type == REGRESSION:
        convert = lambda rows: [Example(t, p, float(y)) for _, t, p, y in rows]  # noqa: E731
        return TaskData(convert(train_rows), convert(validation_rows), [])
    if labels is None:
        seen = {(_label_key(v), v) for _, _, _, y in train_rows for v in (y if problem_type == MULTI else [y])}
        labels = [v for _, v in sorted(seen, key=lambda kv: kv[0])]
    index = {_label_key(v): i for i, v in enumerate(labels)}

    def class_of(value, where):
        key = _label_key(value)
        if key not in index:
            known = ", ".join(map(_label_key, labels[:20]))
            raise DataError(f"{where}: field '{label_field}' has unknown label {value!r} (labels: {known})")
        return index[key]

    def convert(rows):
        out = []
        for where, text, pair, y in rows:
            label = [class_of(v, where) for v in y] if problem_type == MULTI else class_of(y, where)
            out.append(Example(text, pair, label))
        return out

    return TaskData(convert(train_rows), convert(validation_rows), list(labels))


def read_local_task(train: str, validation: str, fields: Fields, problem_type: str, labels: Optional[list],
                    base: Path = Path(".")) -> TaskData:
    """The train and validation files of a task, resolved against `base` when relative."""
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in (train, validation)]
    train_rows = _read_split(paths[0], fields, problem_type, "train")
    validation_rows = _read_split(paths[1], fields, problem_type, "validation")
    return build_task_data(train_rows, validation_rows, problem_type, labels, fields.label_field)


__all__ = ["Example", "Fields", "TaskData", "read_local_task", "build_task_data", "read_records", "SINGLE"]
