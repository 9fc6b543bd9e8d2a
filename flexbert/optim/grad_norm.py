"""Gradient-norm logging with at most one host sync per logged step: `grad_norms`, `total_grad_norm`, `LogGradNorm`.

`torch._foreach_norm` computes every tensor's L2 norm in one launch per (device, dtype) bucket; the norms are
stacked into one fp32 vector and reduced on device, so nothing leaves the accelerator until the logger reads the
result (a single `.tolist()`). Composer's own `OptimizerMonitor` calls `.item()` per tensor and reads gradients at
BATCH_END, after `optimizer.step()` -- too late for optimi's foreach / Kahan paths, which reuse `p.grad` as
scratch. `LogGradNorm` reads them at Event.AFTER_TRAIN_BATCH: all microbatches are accumulated, DDP has reduced,
AMP has unscaled, and the optimizer has not stepped (Composer runs that event before `optimizer.step()`, also
when the step takes a closure).

The schema's callback `log_grad_norm: {batch_log_interval}` (registered in flexbert.train.callbacks).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist


__all__ = ["LogGradNorm", "grad_norms", "total_grad_norm"]


def _local(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 gradients are DTensors; the norm of this rank's shard is what gets reduced below.
    return t.to_local() if hasattr(t, "to_local") else t


def grad_norms(grads: Sequence[torch.Tensor | None], device: torch.device | None = None) -> torch.Tensor:
    """L2 norm of each tensor, as one fp32 vector [len(grads)] on `device` (default: the first tensor's). No host
    sync. A None entry (a parameter this rank holds no gradient for) has norm 0."""
    present = [i for i, g in enumerate(grads) if g is not None]
    if device is None:
        device = grads[present[0]].device if present else torch.device("cpu")
    norms = torch.zeros(len(grads), dtype=torch.float32, device=device)  # [n]
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i in present:
        buckets[(grads[i].device, grads[i].dtype)].append(i)
    for (_, dtype), idx in buckets.items():
        # accumulate bf16/fp16 norms in fp32: a bf16 sum of squares is off in the third digit
        acc = torch.float32 if dtype.itemsize < 4 else None
        bucket = torch._foreach_norm([_local(grads[i]) for i in idx], 2, dtype=acc)  # n_bucket 0-d tensors
        norms[torch.tensor(idx, device=device)] = torch.stack(bucket).to(device, torch.float32)
    return norms


def total_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """sqrt(sum of squares) over all gradients of `params` (0-d fp32 tensor, stays on device)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(grad_norms(grads))


class LogGradNorm(Callback):
    """Logs `grad_norm/total` and, with `per_layer=True`, `grad_norm/<parameter name>` for every parameter.

    Args:
        batch_log_interval: log on batches whose index (batches completed before it) is a multiple of this.
        per_layer: also log each parameter tensor's norm (Composer's "layer" = parameter name).
    """

    def __init__(self, batch_log_interval: int = 1, per_layer: bool = False):
        if batch_log_interval < 1:
            raise ValueError(f"log_grad_norm.batch_log_interval must be >= 1, got {batch_log_interval}")
        self.batch_log_interval = batch_log_interval
        self.per_layer = per_layer

    def after_train_batch(self, state: State, logger: Logger) -> None:
        if state.timestamp.batch.value % self.batch_log_interval != 0:
            return
        if state.fsdp_enabled:
            # Each rank holds a shard of every gradient -- with `use_orig_params` an empty one, `grad` None, for a
            # parameter outside its shard. The vector covers every trainable parameter on every rank (zero where
            # this rank holds nothing), so the all-reduce has the same shape everywhere; the sum of the squared
            # shard norms over ranks is each parameter's squared norm.
            named = [(n, p.grad) for n, p in state.model.named_parameters() if p.requires_grad]
            if not named:
                return
            device = next(state.model.parameters()).device
            squares = grad_norms([g for _, g in named], device=device).square()
            dist.all_reduce(squares, reduce_operation="SUM")
            norms = squares.sqrt()
        else:
            named = [(n, p.grad) for n, p in state.model.named_parameters() if p.grad is not None]
            if not named:
                return
            norms = grad_norms([g for _, g in named])  # [n]
        total = torch.linalg.vector_norm(norms)
        if not self.per_layer:
            logger.log_metrics({"grad_norm/total": total.item()})
            return
        values = torch.cat([total.reshape(1), norms]).tolist()  # the one host sync
        metrics = {"grad_norm/total": values[0]}
        metrics.update({f"grad_norm/{name}": v for (name, _), v in zip(named, values[1:])})
        logger.log_metrics(metrics)
