"""A naive per-document PyTorch stand-in for `flash_attn.flash_attn_varlen_func`: the same signature and masking,
so the flash-attn adapter's calling conventions are tested on CPU (`FlashAttnAdapter(2, varlen_func=...)`)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def reference_varlen_attention(
    q: torch.Tensor,  # (Tq, H, D)
    k: torch.Tensor,  # (Tk, H, D)
    v: torch.Tensor,  # (Tk, H, D)
    cu_seqlens_q: torch.Tensor,  # (B+1,) int32
    cu_seqlens_k: torch.Tensor,  # (B+1,) int32
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes=None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor:  # (Tq, H, D)
    """Naive per-document `flash_attn_varlen_func`: same arguments, same masking, math in the input dtype.

    flash-attn's masking rule (queries aligned to the END of the key sequence): key j is visible from query i
    iff i + sk - sq - left <= j <= i + sk - sq + right, with -1 meaning unbounded and causal meaning right = 0.
    """
    if softcap != 0.0 or alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError("reference_varlen_attention implements neither softcap, alibi nor attn probs")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32:
            raise TypeError(f"{name} must be int32 like flash-attn requires, got {cu.dtype}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    left, right = window_size
    if causal:
        right = 0
    outs = []
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(bounds_q) - 1):
        qd = q[bounds_q[b]: bounds_q[b + 1]].transpose(0, 1)  # (H, Lq, D)
        kd = k[bounds_k[b]: bounds_k[b + 1]].transpose(0, 1)  # (H, Lk, D)
        vd = v[bounds_k[b]: bounds_k[b + 1]].transpose(0, 1)  # (H, Lk, D)
        lq, lk = qd.shape[1], kd.shape[1]
        assert lq <= max_seqlen_q and lk <= max_seqlen_k, "a document is longer than max_seqlen"
        rel = torch.arange(lk, device=q.device)[None, :] - torch.arange(lq, device=q.device)[:, None] - (lk - lq)
        visible = torch.ones(lq, lk, dtype=torch.bool, device=q.device)  # (Lq, Lk)
        if left >= 0:
            visible &= rel >= -left
        if right >= 0:
            visible &= rel <= right
        scores = (qd @ kd.transpose(1, 2)) * scale  # (H, Lq, Lk)
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        probs = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
        outs.append((probs @ vd).transpose(0, 1))  # (Lq, H, D)
    return torch.cat(outs, 0) if outs else q.new_zeros(q.shape)
