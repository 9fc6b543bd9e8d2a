"""Texts -> one vector each, from the unpadded encoder: the single-vector (DPR-style) embedder of retrieval.

A batch of texts is tokenized (special tokens added, cut at `max_seq_len`), packed into one row without padding
(`cu_seqlens`), run through `FlexBertModel`, and each text's token states are pooled:
- `mean`: the average over all its tokens, [CLS] and [SEP] included -- sentence-transformers' mean pooling, which
  averages over the attention mask, and the mask covers the special tokens;
- `cls`: the state of its first token.
Texts are batched in length order (less work per batch for the attention kernels) and returned in input order.
The forward runs in the run's precision (Composer's autocast context: bf16 on a GPU under amp_bf16, as training and
the kernels expect); pooling and the returned vectors are float32.
"""

from __future__ import annotations

from typing import Sequence

import torch

POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str) -> torch.Tensor:
    """(T, H) packed token states -> (texts, H)."""
    if pooling == "cls":
        return hidden[cu_seqlens[:-1].long()]
    if pooling == "mean":
        lengths = cu_seqlens.diff().long()
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
        sums = torch.zeros(len(lengths), hidden.shape[1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, owner, hidden.float())
        return sums / lengths.unsqueeze(1)
    raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")


@torch.no_grad()
def encode(model, tokenizer, texts: Sequence[str], pooling: str = "mean", max_seq_len: int = 512,
           batch_size: int = 32, precision: str = "fp32") -> torch.Tensor:
    """(len(texts), hidden) float32 embeddings of `texts` by `model` (a FlexBertModel), in input order."""
    from composer.core.precision import get_precision_context

    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    ids = tokenizer(list(texts), truncation=True, max_length=max_seq_len, add_special_tokens=True)["input_ids"]
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.config.hidden_size, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            lengths = torch.tensor([len(ids[i]) for i in batch], dtype=torch.int32)
            cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)).to(device)
            row = torch.tensor([token for i in batch for token in ids[i]], dtype=torch.long, device=device)
            with get_precision_context(precision):
                hidden = model(row.unsqueeze(0), cu_seqlens=cu_seqlens, max_seqlen=int(lengths.max()))
            out[batch] = pool(hidden, cu_seqlens, pooling).float().cpu()
    finally:
        model.train(was_training)
    return out


__all__ = ["POOLINGS", "pool", "encode"]
