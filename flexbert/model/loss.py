"""MLM losses (`loss_function`, `loss_kwargs`).

`cross_entropy`: mean token cross entropy over labels != ignore_index, with optional label smoothing and
z-loss (`lse_square_scale` * mean(logsumexp^2), which keeps logits from drifting).
`fa_cross_entropy`: the same loss through flash-attn's fused Triton kernel when installed and on CUDA,
else computed here -- so a config never depends on the machine.
Both also compute the loss straight from the decoder's input (`forward_linear`) when the logits are not wanted,
chunked, without the (N, V) logits tensor.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexbert.config import IGNORE_INDEX
from flexbert.model.linear_cross_entropy import linear_cross_entropy
from flexbert.model.registries import LOSSES



class CrossEntropyLoss(nn.Module):
    def __init__(self, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0, lse_square_scale: float = 0.0,
                 reduction: str = "mean", inplace_backward: bool = False):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss_kwargs.reduction: '{reduction}' is not one of mean, sum")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.lse_square_scale = lse_square_scale
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (N, V), labels (N,) -> scalar."""
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision -> fp32
        loss = F.cross_entropy(
            logits, labels, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, reduction=self.reduction
        )
        if self.lse_square_scale:
            keep = labels != self.ignore_index
            lse_sq = torch.logsumexp(logits[keep], dim=-1).pow(2)
            loss = loss + self.lse_square_scale * (lse_sq.mean() if self.reduction == "mean" else lse_sq.sum())
        return loss

    def forward_linear(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       labels: torch.Tensor) -> torch.Tensor:
        """The same loss of logits = F.linear(hidden, weight, bias), without materializing them (chunked; see
        flexbert.model.linear_cross_entropy). For training steps that do not need the logits."""
        return linear_cross_entropy(hidden, weight, bias, labels, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, lse_square_scale=self.lse_square_scale,
                                    reduction=self.reduction)


class FlashCrossEntropyLoss(CrossEntropyLoss):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.is_cuda:
            try:
                from flash_attn.losses.cross_entropy import CrossEntropyLoss as FlashCE  # type: ignore
            except Exception:
                FlashCE = None
            if FlashCE is not None:
                fused = FlashCE(
                    ignore_index=self.ignore_index,
                    label_smoothing=self.label_smoothing,
                    lse_square_scale=self.lse_square_scale,
                    reduction=self.reduction,
                )
                return fused(logits, labels)
        return super().forward(logits, labels)


LOSSES.add("cross_entropy", CrossEntropyLoss, "PyTorch cross entropy with optional z-loss and label smoothing")
LOSSES.add("fa_cross_entropy", FlashCrossEntropyLoss, "flash-attn's fused cross entropy on CUDA when installed, else the same loss")


def build_loss(config) -> nn.Module:
    """The config validated `loss_kwargs` against LOSS_KWARGS."""
    return LOSSES.get(config.loss_function)(**config.loss_kwargs)
