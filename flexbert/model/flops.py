"""Model FLOPs of a training step, for throughput and MFU accounting (Composer's SpeedMonitor reads
`flops_per_batch`).

Counted: every matmul (2 FLOPs per multiply-add), forward + backward = 3x forward.
- dense layers: 2 * (non-embedding weight count) per token (the embedding lookup is not a matmul);
- attention: QK^T and PV over the pairs actually visible -- per document, and within the window on local
  layers (`attention_kernels.attention_flops`), so packing and sliding windows are accounted for honestly;
- MLM head and decoder: on the positions the head runs on (all tokens, or masked ones with masked_prediction).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from flexbert.model.attention_kernels import attention_flops


def _linear_params(module: torch.nn.Module) -> int:
    # From the layer's declared shape, not `weight.numel()`: under FSDP a rank's weight is its shard (or empty).
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def document_lengths(batch: Mapping[str, torch.Tensor]) -> list[int]:
    """Lengths of the real documents of a batch in either input form."""
    if "cu_seqlens" in batch:
        cu = batch["cu_seqlens"]
        rows = cu if cu.dim() == 2 else cu[None]
        lengths: list[int] = []
        for row in rows:
            row = row[row >= 0]
            lengths.extend(int(x) for x in row.diff() if x > 0)
        return lengths
    mask = batch.get("attention_mask")
    if mask is None:
        return [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]
    return [int(n) for n in mask.sum(dim=1) if n > 0]


def training_flops(model, batch: Mapping[str, torch.Tensor], head_on_labelled_only: Optional[bool] = None) -> int:
    """Forward + backward FLOPs of `model` (a FlexBertForMaskedLM) on `batch`. The head runs on the labelled tokens
    only with `masked_prediction`, or in a step without logits (`head_on_labelled_only=True`)."""
    config = model.config
    lengths = document_lengths(batch)
    tokens = sum(lengths)
    encoder = _linear_params(model.bert.encoder)
    head_tokens = tokens
    if head_on_labelled_only is None:
        head_on_labelled_only = config.masked_prediction
    if head_on_labelled_only and "labels" in batch:
        head_tokens = int((batch["labels"] != -100).sum())
    head = _linear_params(model.head) + _linear_params(model.decoder)
    forward = 2 * encoder * tokens + 2 * head * head_tokens
    for layer in range(config.num_hidden_layers):
        window = None if config.is_global_layer(layer) else config.local_window
        forward += attention_flops(lengths, config.num_attention_heads, config.head_dim, window)
    return 3 * forward
