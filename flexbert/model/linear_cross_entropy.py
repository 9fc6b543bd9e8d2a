"""Decoder projection + cross entropy in row chunks, without materializing the (N, V) logits.

At vocab 50368 the logits of the masked tokens are the largest tensors of a step: the ~2458 masked tokens (30%) of
one 8192-token document give a ~495 MB fp32 (N, V) block, and plain autograd keeps three of them alive at the start of
the backward pass (the saved log-softmax, its gradient, the logits' gradient). Here the loss is computed `chunk`
rows at a time, and when gradients are wanted, each chunk's gradients with respect to the hidden states, the
decoder weight and bias are formed in the same pass (the loss is the last op of the step, so its upstream gradient
is a scalar that the backward pass only has to multiply in). Peak extra memory: one (chunk, V) block plus a
weight-sized fp32 gradient accumulator. The FLOPs are those of the unfused path (no recompute).

Per kept row i (label y_i != ignore_index), with logits z, lse = logsumexp(z), smoothing e, z-loss scale s:
    loss_i = (1 - e) (lse - z_y) + e (lse - mean_j z_j) + s lse^2
    dloss_i / dz_j = softmax(z)_j (1 + 2 s lse) - (1 - e) [j = y] - e / V
reduction 'mean' divides the sum over kept rows by their count (as F.cross_entropy and the z-loss term do).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from flexbert.config import IGNORE_INDEX

CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MiB in fp32; 333 rows at vocab 50368


def default_chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab_size)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, label_smoothing, lse_square_scale, reduction, chunk):
        n, vocab = hidden.shape[0], weight.shape[0]
        keep = labels != ignore_index
        kept = int(keep.sum())  # one host sync per step
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        any_grad = want_hidden or want_weight or want_bias
        # 'mean' over zero kept rows is 0/0 = nan, as in F.cross_entropy; the gradients are then zero
        scale = (1.0 / kept if kept else 0.0) if reduction == "mean" else 1.0
        acc = torch.promote_types(weight.dtype, torch.float32)  # softmax and accumulators: fp32 at least
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if want_weight else None
        grad_bias = torch.zeros(vocab, dtype=acc, device=hidden.device) if want_bias else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        device = hidden.device.type
        # matmuls in the autocast dtype under AMP (cast once here, not per chunk), else in the weight's dtype
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        with torch.autocast(device, enabled=False):
            w, hid = weight.to(compute), hidden.to(compute)
            b = bias.to(compute) if bias is not None else None
            for start in range(0, n, chunk):
                rows = slice(start, min(start + chunk, n))
                h, y, k = hid[rows], labels[rows], keep[rows]
                logits = F.linear(h, w, b).to(acc)  # (c, V): the one chunk-sized buffer; everything below is in place
                target = y.masked_fill(~k, 0)[:, None]
                row_loss = -logits.gather(1, target).squeeze(1)
                if label_smoothing:
                    row_loss = (1 - label_smoothing) * row_loss - label_smoothing * logits.mean(dim=-1)
                row_max = logits.amax(dim=-1, keepdim=True)
                exp = logits.sub_(row_max).exp_()
                sum_exp = exp.sum(dim=-1, keepdim=True)
                lse = (sum_exp.log() + row_max).squeeze(1)  # (c,) logsumexp without a second (c, V) buffer
                row_loss += lse
                if lse_square_scale:
                    row_loss = row_loss + lse_square_scale * lse.square()
                total += row_loss.masked_fill(~k, 0).sum()
                if not any_grad:
                    continue
                grad = exp.div_(sum_exp)  # softmax
                if lse_square_scale:
                    grad.mul_(1 + 2 * lse_square_scale * lse[:, None])
                if label_smoothing:
                    grad.sub_(label_smoothing / vocab)
                grad.scatter_add_(1, target, grad.new_full(target.shape, -(1 - label_smoothing)))
                grad.mul_(k[:, None].to(grad.dtype) * scale)  # ignored rows contribute nothing
                if want_bias:
                    grad_bias += grad.sum(0)
                grad = grad.to(compute)
                if want_hidden:
                    if grad_hidden.dtype == compute:
                        torch.mm(grad, w, out=grad_hidden[rows])
                    else:
                        grad_hidden[rows] = grad @ w
                if want_weight:
                    if grad_weight.dtype == compute:
                        torch.addmm(grad_weight, grad.t(), h, out=grad_weight)  # in place: no (V, H) temporary
                    else:  # half-precision matmul, fp32 accumulator
                        grad_weight += grad.t() @ h
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.has = (want_hidden, want_weight, want_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total / kept if reduction == "mean" else total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        # Scaled in place: no second weight-sized buffer at the start of the backward pass. A second backward through
        # the same graph (retain_graph) is refused by autograd's saved-tensor version check.
        saved = iter(ctx.saved_tensors)
        grads = []
        for has, dtype in zip(ctx.has, ctx.dtypes):
            grads.append(next(saved).mul_(grad_loss).to(dtype) if has else None)
        return (*grads, None, None, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0,
                         lse_square_scale: float = 0.0, reduction: str = "mean",
                         chunk_rows: Optional[int] = None) -> torch.Tensor:
    """cross_entropy(F.linear(hidden, weight, bias), labels) [+ z-loss] for hidden (N, H), weight (V, H), labels
    (N,), computed `chunk_rows` rows at a time. Differentiable once, for a backward pass straight from the loss
    (the usual training step); not for double backward."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, ignore_index, label_smoothing,
                                     lse_square_scale, reduction, chunk)
