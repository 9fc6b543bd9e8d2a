"""Classification heads on the FlexBERT encoder: one label (or score) per sequence, or one per token.

Same parameters and math as transformers' `ModernBertForSequenceClassification` / `...ForTokenClassification`:
encoder -> pool (sequence models: `pooling_type` cls = first token, mean = average of the real tokens) ->
`head` (dense -> activation -> norm) -> dropout -> `classifier`. The head is configured by the schema's
`head_class_*` keys (ModernBERT: `head_class_norm: true` and the `classifier_*` keys of its config).
Parameter names: `bert.*` (ModernBERT `model.*`), `head.dense`, `head.norm`, `classifier` -- the same `head.*`
names as the MLM head, so fine-tuning from an MLM checkpoint starts from its head, as transformers does.

Losses follow `config.problem_type`, or transformers' rule when it is unset: one label -> regression (MSE),
integer labels -> single-label (cross entropy), otherwise multi-label (BCE with logits).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from flexbert import hf_interop
from flexbert.config import IGNORE_INDEX
from flexbert.model.init import initialize
from flexbert.model.modeling import (
    FlexBertBackbone,
    FlexBertHead,
    FlexBertPreTrainedModel,
    _check_config_ready,
    _IGNORED_KWARGS,
    pack_inputs,
)
from flexbert.model.packed import PackedSequences

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def pool(hidden: torch.Tensor, packed: PackedSequences, pooling_type: str) -> torch.Tensor:
    """(T, H) packed tokens -> (B, H): one vector per sequence."""
    starts = packed.cu_seqlens[:-1].long()
    if pooling_type == "cls":
        return hidden[starts]
    lengths = packed.cu_seqlens.diff().long()
    sequence_of_token = torch.repeat_interleave(torch.arange(lengths.numel(), device=hidden.device), lengths,
                                                output_size=hidden.shape[0])
    if pooling_type == "mean":
        sums = hidden.new_zeros(lengths.numel(), hidden.shape[1]).index_add_(0, sequence_of_token, hidden)
        return sums / lengths.clamp(min=1).unsqueeze(1).to(hidden.dtype)
    if pooling_type == "max":
        out = hidden.new_full((lengths.numel(), hidden.shape[1]), float("-inf"))
        return out.scatter_reduce(0, sequence_of_token.unsqueeze(1).expand_as(hidden), hidden, reduce="amax")
    raise ValueError(f"model_config.pooling_type '{pooling_type}' is unknown; choose cls, mean or max")


def problem_type_of(config, labels: torch.Tensor) -> str:
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    if problem_type == "regression":
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.reshape(-1), labels.reshape(-1).to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), ignore_index=IGNORE_INDEX)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class _ClassifierBase(FlexBertPreTrainedModel):
    hf_architecture = ""  # the transformers class save_pretrained writes

    def __init__(self, config):
        _check_config_ready(config)
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = FlexBertBackbone(config)
        self.head = FlexBertHead(config, "class")
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        initialize(self, config)
        self.post_init()

    def _encode(self, input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids, kwargs):
        unknown = set(kwargs) - _IGNORED_KWARGS
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward got unexpected inputs: {sorted(unknown)}")
        packed, ids = pack_inputs(input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids)
        return packed, self.bert(ids, packed)

    # Hugging Face interop: a ModernBERT folder loads (backbone, and head + classifier when it has them), and
    # save_pretrained writes one that transformers' Auto classes load without remote code.
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if hf_interop.is_modernbert_folder(pretrained_model_name_or_path):
            return hf_interop.load_modernbert_folder(pretrained_model_name_or_path, model_class=cls, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, flexbert_format: bool = False, **kwargs):
        if flexbert_format:
            return super().save_pretrained(save_directory, *args, **kwargs)
        return hf_interop.save_modernbert_folder(self, save_directory, **kwargs)


class FlexBertForSequenceClassification(_ClassifierBase):
    """One label per sequence: logits (B, num_labels), B = rows of a padded batch or documents of a packed one."""

    hf_architecture = "ModernBertForSequenceClassification"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        max_seqlen: Optional[int] = None,
        position_ids: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        packed, hidden = self._encode(input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids, kwargs)
        logits = self.classifier(self.head(pool(hidden, packed, self.config.pooling_type)))
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, problem_type_of(self.config, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)


class FlexBertForTokenClassification(_ClassifierBase):
    """One label per token: logits (B, S, num_labels) for padded input, (T, num_labels) for packed input.
    Labels -100 are ignored."""

    hf_architecture = "ModernBertForTokenClassification"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        max_seqlen: Optional[int] = None,
        position_ids: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        packed, hidden = self._encode(input_ids, attention_mask, cu_seqlens, max_seqlen, position_ids, kwargs)
        logits = self.classifier(self.head(hidden))  # (T, num_labels)
        loss = None
        if labels is not None:
            flat = packed.unpad(labels) if cu_seqlens is None else labels.reshape(-1)[: logits.shape[0]]
            loss = F.cross_entropy(logits, flat.long(), ignore_index=IGNORE_INDEX)
        if cu_seqlens is None:
            logits = packed.pad(logits)
        return TokenClassifierOutput(loss=loss, logits=logits)
