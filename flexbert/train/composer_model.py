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
from torchmetrics import Metric

from flexbert.config import IGNORE_INDEX
from flexbert.model.flops import training_flops



class MeanBatchLoss(Metric):
    """The mean over batches of the model's own loss (label smoothing and z-loss included), without
    recomputing anything from the logits."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sum_loss", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("batches", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor) -> None:
        self.sum_loss += loss.detach().to(self.sum_loss)
        self.batches += 1

    def compute(self) -> torch.Tensor:
        return (self.sum_loss / self.batches).float()


# Logged as `LanguageCrossEntropy`, the recomputed metric's name, so the metric keys match the reference framework's.
BatchMeanLanguageCrossEntropy = type("LanguageCrossEntropy", (MeanBatchLoss,), {"__module__": __name__})


def _metrics(recompute_metric_loss: bool):
    loss = (LanguageCrossEntropy(ignore_index=IGNORE_INDEX) if recompute_metric_loss
            else BatchMeanLanguageCrossEntropy())
    return [loss, MaskedAccuracy(ignore_index=IGNORE_INDEX)]


class FlexBertComposerModel(HuggingFaceModel):
    """recompute_metric_loss: LanguageCrossEntropy per token from the logits (true) or the mean of the batches'
    losses (false: the model's loss as trained, label smoothing and z-loss included)."""

    def __init__(self, model, tokenizer=None, disable_train_metrics: bool = False, recompute_metric_loss: bool = True):
        # Composer checks whether the model is a causal LM by importing every causal-LM class of transformers (~4 s per
        # process, and one of them starts an inductor compile worker). An encoder is none; skip the check.
        is_causal_lm = composer_huggingface._is_registered_causal_lm
        composer_huggingface._is_registered_causal_lm = lambda model: False
        try:
            super().__init__(
                model,
                tokenizer=tokenizer,
                use_logits=True,
                metrics=None if disable_train_metrics else _metrics(recompute_metric_loss),
                eval_metrics=_metrics(recompute_metric_loss),
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
        self.batch_loss = outputs.get("loss")
        return logits

    def update_metric(self, batch: Any, outputs: Any, metric) -> dict:
        if isinstance(metric, MeanBatchLoss):
            metric.update(self.batch_loss)
        else:
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
