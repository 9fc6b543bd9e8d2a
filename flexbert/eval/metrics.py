"""Task metrics by name, all from torchmetrics, and the form of the model's output each one reads.

| name      | problem type               | torchmetrics                       | reads                 |
|-----------|----------------------------|------------------------------------|-----------------------|
| accuracy  | single-label               | MulticlassAccuracy (micro)         | argmax class          |
| f1        | single-label, two classes  | BinaryF1Score (positive = label 1) | argmax class          |
| f1_macro  | single-label               | MulticlassF1Score (macro)          | argmax class          |
| matthews  | single-label               | MulticlassMatthewsCorrCoef         | argmax class          |
| pearson   | regression                 | PearsonCorrCoef                    | the single logit      |
| spearman  | regression                 | SpearmanCorrCoef                   | the single logit      |
| f1_micro  | multi-label                | MultilabelF1Score (micro, 0.5)     | sigmoid probabilities |
| f1_macro  | multi-label                | MultilabelF1Score (macro, 0.5)     | sigmoid probabilities |
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MultilabelF1Score,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from flexbert.schema import ConfigError

SINGLE, REGRESSION, MULTI = "single_label_classification", "regression", "multi_label_classification"

_BUILDERS: dict[str, dict[str, Callable[[int], Metric]]] = {
    SINGLE: {
        "accuracy": lambda n: MulticlassAccuracy(num_classes=n, average="micro"),
        "f1": lambda n: BinaryF1Score(),
        "f1_macro": lambda n: MulticlassF1Score(num_classes=n, average="macro"),
        "matthews": lambda n: MulticlassMatthewsCorrCoef(num_classes=n),
    },
    REGRESSION: {
        "pearson": lambda n: PearsonCorrCoef(),
        "spearman": lambda n: SpearmanCorrCoef(),
    },
    MULTI: {
        "f1_micro": lambda n: MultilabelF1Score(num_labels=n, average="micro", threshold=0.5),
        "f1_macro": lambda n: MultilabelF1Score(num_labels=n, average="macro", threshold=0.5),
    },
}

DEFAULT_METRICS = {SINGLE: ["accuracy", "f1_macro"], REGRESSION: ["pearson", "spearman"], MULTI: ["f1_micro", "f1_macro"]}


class MetricError(ConfigError):
    """A task's `metrics` list names a metric that does not apply to it."""


def metric_names(problem_type: str) -> list[str]:
    return list(_BUILDERS[problem_type])


def build_metrics(names: list[str], problem_type: str, num_labels: int, where: str) -> dict[str, Metric]:
    """{name: metric}; a name that does not fit the problem type fails naming `where` and the choices."""
    available = _BUILDERS[problem_type]
    out = {}
    for name in names:
        if name not in available:
            raise MetricError(f"{where}: metric '{name}' does not apply to {problem_type}; choose from {', '.join(available)}")
        if name == "f1" and num_labels != 2:
            raise MetricError(f"{where}: metric 'f1' is binary but the task has {num_labels} labels; use f1_macro")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Spearman's "keeps every prediction in memory" notice
            out[name] = available[name](num_labels)
    return out


def predictions(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    """What the metrics of `problem_type` read from the (B, num_labels) logits."""
    if problem_type == SINGLE:
        return logits.argmax(dim=-1)
    if problem_type == REGRESSION:
        return logits.reshape(-1).float()
    return torch.sigmoid(logits.float())


def targets(labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    if problem_type == REGRESSION:
        return labels.reshape(-1).float()
    return labels.long()
