"""A FlexBERT classifier as a Composer model whose evaluation metrics are the task's."""

from __future__ import annotations

from typing import Any, Optional

from composer.models import HuggingFaceModel
from composer.models import huggingface as composer_huggingface

from flexbert.eval.metrics import predictions, targets


class ClassifierComposerModel(HuggingFaceModel):
    def __init__(self, model, tokenizer, metrics: dict, problem_type: str):
        # An encoder is no causal LM; Composer's check imports every causal-LM class of transformers (seconds).
        is_causal_lm = composer_huggingface._is_registered_causal_lm
        composer_huggingface._is_registered_causal_lm = lambda model: False
        try:
            super().__init__(model, tokenizer=tokenizer, use_logits=True, shift_labels=False)
        finally:
            composer_huggingface._is_registered_causal_lm = is_causal_lm
        self.val_metrics = dict(metrics)  # keyed by the task's metric names, not by class name
        self.problem_type = problem_type

    def eval_forward(self, batch, outputs: Optional[Any] = None):
        outputs = outputs if outputs is not None else self.forward(batch)
        self.labels = batch["labels"]
        return outputs["logits"]

    def update_metric(self, batch: Any, outputs: Any, metric) -> dict:
        metric.update(predictions(outputs, self.problem_type).to(metric.device),
                      targets(self.labels, self.problem_type).to(metric.device))
        return {}
