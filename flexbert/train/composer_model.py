"""FlexBertForMaskedLM as a Composer model.

Built on Composer's HuggingFaceModel, so checkpoints have the released layout: weights under `state.model`
as `model.bert...`, and the model config under `integrations.huggingface.model.config.content`.
What differs from the base class is only what packing changes: the labels that go with the logits (packed
or masked-only logits), the FLOP count of a batch for MFU, and training steps without logits when no training
metric needs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import HuggingFaceModel
from composer.models import huggingface as composer_huggingface

from flexbert.model.flops import training_flops

IGNORE_INDEX = -100


def _metrics():
    return [LanguageCrossEntropy(ignore_index=IGNORE_INDEX), MaskedAccuracy(ignore_index=IGNORE_INDEX)]


class FlexBertComposerModel(HuggingFaceModel):
    def __init__(self, model, tokenizer=None, disable_train_metrics: bool = False):
        # Composer checks whether the model is a causal LM by importing every causal-LM class of transformers (~4 s per
        # process, and one of them starts an inductor compile worker). An encoder is none; skip the check.
        is_causal_lm = composer_huggingface._is_registered_causal_lm
        composer_huggingface._is_registered_causal_lm = lambda model: False
        try:
            super().__init__(
                model,
                tokenizer=tokenizer,
                use_logits=True,
                metrics=None if disable_train_metrics else _metrics(),
                eval_metrics=_metrics(),
                shift_labels=False,
            )
        finally:
            composer_huggingface._is_registered_causal_lm = is_causal_lm

    def forward(self, batch):
        """Training steps whose outputs no training metric reads compute the loss without the logits (chunked;
        the (tokens, vocab) logits are the largest tensors of a step). Evaluation always gets logits."""
        if self.model.training and self.train_metrics is None and isinstance(batch, Mapping) and "labels" in batch:
            batch = {**batch, "return_logits": False}
        return super().forward(batch)

    def eval_forward(self, batch, outputs: Optional[Any] = None):
        outputs = outputs if outputs is not None else self.forward(batch)
        logits = outputs["logits"]
        self.labels = aligned_labels(batch, logits, self.model.config.masked_prediction)
        return logits

    def update_metric(self, batch: Any, outputs: Any, metric) -> dict:
        metric.update(outputs, self.labels.to(outputs.device))
        return {}

    def flops_per_batch(self, batch) -> int:  # training steps only (the speed monitor)
        return training_flops(self.model, batch, head_on_labelled_only=self.model.config.masked_prediction
                              or self.train_metrics is None)


def aligned_labels(batch, logits: torch.Tensor, masked_prediction: bool) -> torch.Tensor:
    """The labels that correspond row by row to `logits` in each of the model's output forms."""
    labels = batch["labels"]
    if logits.dim() == 3:  # padded output (B, S, V), incl. pad_logits
        return labels
    flat = labels.reshape(-1)
    if masked_prediction:  # the head ran on masked positions only (forward had the labels)
        return flat[flat != IGNORE_INDEX]
    return flat[: logits.shape[0]]  # packed row: the real tokens come first, padding after cu_seqlens[-1]
