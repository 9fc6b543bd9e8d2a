"""GLUE and SuperGLUE tasks by name, read through the `datasets` library (from its local cache, or from a folder
written by `DatasetDict.save_to_disk`), with each benchmark's customary metrics.

Only the sentence(-pair) classification and regression tasks fit a sequence classifier; MultiRC, ReCoRD, COPA
and the diagnostic sets have other formats and are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flexbert.errors import DataError
from flexbert.eval.metrics import REGRESSION, SINGLE
from flexbert.eval.task_data import Fields, TaskData, build_task_data


@dataclass(frozen=True)
class GlueTask:
    dataset: str
    config: str
    text_field: str
    text_pair_field: Optional[str]
    problem_type: str
    num_labels: int
    metrics: tuple[str, ...]
    validation_split: str = "validation"


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("glue", "cola", "sentence", None, SINGLE, 2, ("matthews",)),
    "sst2": GlueTask("glue", "sst2", "sentence", None, SINGLE, 2, ("accuracy",)),
    "mrpc": GlueTask("glue", "mrpc", "sentence1", "sentence2", SINGLE, 2, ("accuracy", "f1")),
    "qqp": GlueTask("glue", "qqp", "question1", "question2", SINGLE, 2, ("accuracy", "f1")),
    "stsb": GlueTask("glue", "stsb", "sentence1", "sentence2", REGRESSION, 1, ("pearson", "spearman")),
    "mnli": GlueTask("glue", "mnli", "premise", "hypothesis", SINGLE, 3, ("accuracy",), "validation_matched"),
    "qnli": GlueTask("glue", "qnli", "question", "sentence", SINGLE, 2, ("accuracy",)),
    "rte": GlueTask("glue", "rte", "sentence1", "sentence2", SINGLE, 2, ("accuracy",)),
    "wnli": GlueTask("glue", "wnli", "sentence1", "sentence2", SINGLE, 2, ("accuracy",)),
    "boolq": GlueTask("super_glue", "boolq", "question", "passage", SINGLE, 2, ("accuracy",)),
    "cb": GlueTask("super_glue", "cb", "premise", "hypothesis", SINGLE, 3, ("accuracy", "f1_macro")),
    "wic": GlueTask("super_glue", "wic", "sentence1", "sentence2", SINGLE, 2, ("accuracy",)),
    "axb": GlueTask("super_glue", "axb", "sentence1", "sentence2", SINGLE, 2, ("matthews",), "test"),
}
UNSUPPORTED = {"multirc": "answers are scored per question", "record": "a span-extraction task",
               "copa": "a multiple-choice task", "wsc": "a coreference task with span indices",
               "axg": "a diagnostic test set", "ax": "a diagnostic test set without labels"}


def _open(dataset: str, config: str, where: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{where}: reading '{dataset}' needs the `datasets` package (pip install datasets), "
                        "or give the task local files under `data:`") from None
    if Path(dataset).is_dir():
        return datasets.load_from_disk(dataset)
    try:
        return datasets.load_dataset(dataset, config)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: dataset '{dataset}' ({config}) is not in the local `datasets` cache and cannot be "
                        f"downloaded here ({first}); give the task local files under `data:`") from None


def read_glue_task(name: str, dataset: Optional[str] = None) -> TaskData:
    """A GLUE / SuperGLUE task's train and validation splits; `dataset` overrides where they are read from."""
    task = GLUE_TASKS[name]
    source = dataset or task.dataset
    where = f"task {name}"
    splits = _open(source, task.config, where)
    fields = Fields(task.text_field, task.text_pair_field, "label")
    rows = {}
    for split in ("train", task.validation_split):
        if split not in splits:
            raise DataError(f"{where}: dataset '{source}' has no '{split}' split (it has: {', '.join(splits)})")
        records = []
        for number, record in enumerate(splits[split]):
            at = f"{source}/{task.config}:{split}:row {number}"
            for field in filter(None, (fields.text_field, fields.text_pair_field, fields.label_field)):
                if record.get(field) is None:
                    raise DataError(f"{at}: field '{field}' is missing")
            label = float(record["label"]) if task.problem_type == REGRESSION else int(record["label"])
            records.append((at, record[fields.text_field], record.get(fields.text_pair_field) if fields.text_pair_field else None, label))
        if not records:
            raise DataError(f"{where}: the {split} split of '{source}' has no records")
        rows[split] = records
    labels = None if task.problem_type == REGRESSION else list(range(task.num_labels))
    return build_task_data(rows["train"], rows[task.validation_split], task.problem_type, labels, "label")
