"""Model FLOPs of a training step, for throughput and MFU accounting (Composer's SpeedMonitor reads
`flops_per_batch`).

Counted: every matmul (2 FLOPs per multiply-add), forward + backward = 3x forward.
- dense layers: 2 * (non-embedding weight count) per token (the embedding lookup is not a matmul);
- attention: QK^T and PV over the pairs actually visible -- per document, and within the window on local
  layers (`attention_flops`), so packing and sliding windows are accounted for honestly;
- MLM head and decoder: on the positions the head runs on (all tokens, or masked ones with masked_prediction).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from flexbert.config import IGNORE_INDEX


def visible_pairs(doc_lengths: Sequence[int] | torch.Tensor, window: Optional[int]) -> int:
    """Number of (query, key) pairs with both in one document and |i - j| <= window.

    Per document of length L with m = min(window, L - 1): L query-key pairs at distance 0 plus 2 (L - d) at each
    distance d = 1..m, i.e. L (2m + 1) - m (m + 1); global attention is L^2."""
    L = torch.as_tensor(doc_lengths, dtype=torch.int64)
    if window is None:
        return int((L * L).sum())
    m = torch.clamp(torch.minimum(L - 1, torch.full_like(L, window)), min=0)
    return int((L * (2 * m + 1) - m * (m + 1)).sum())


def attention_flops(doc_lengths: Sequence[int] | torch.Tensor, num_heads: int, head_dim: int,
                    window: Optional[int]) -> int:
    """Forward matmul FLOPs of QK^T and PV in one layer: 2 matmuls x 2 FLOPs (mul + add) x head_dim per visible
    pair per head. Takes document lengths; use `lengths_from_cu_seqlens` for boundaries. Backward is 2x this."""
    return 4 * num_heads * head_dim * visible_pairs(doc_lengths, window)


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
        head_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
    head = _linear_params(model.head) + _linear_params(model.decoder)
    forward = 2 * encoder * tokens + 2 * head * head_tokens
    for layer in range(config.num_hidden_layers):
        window = None if config.is_global_layer(layer) else config.local_window
        forward += attention_flops(lengths, config.num_attention_heads, config.head_dim, window)
    return 3 * forward
