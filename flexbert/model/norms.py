"""Normalization layers by schema name (`normalization`, `norm_kwargs: {eps, bias}`).

`triton_layernorm` / `triton_rmsnorm` use flash-attn's fused Triton kernels when they are installed and the
tensor is on CUDA; otherwise they compute the same math in PyTorch, so a config never depends on the machine.
Parameter names (`weight`, `bias`) are those of torch.nn.LayerNorm, as in released checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexbert.model.registries import NORMS


def _fused_kernels():
    try:
        from flash_attn.ops.triton.layer_norm import layer_norm_fn, rms_norm_fn  # type: ignore
    except Exception:  # not installed (CPU machines): the PyTorch path below is the same math
        return None
    return layer_norm_fn, rms_norm_fn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (+ bias). Computed in fp32 for stability, cast back."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out = out.to(x.dtype) * self.weight
        return out + self.bias if self.bias is not None else out


class _TritonMixin:
    """Dispatch to flash-attn's fused norm on CUDA when available; same parameters either way."""

    fused_index = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = _fused_kernels() if x.is_cuda else None
        if kernels is None:
            return super().forward(x)  # type: ignore[misc]
        return kernels[self.fused_index](x, self.weight, self.bias, eps=self.eps)


class TritonLayerNorm(_TritonMixin, nn.LayerNorm):
    fused_index = 0


class TritonRMSNorm(_TritonMixin, RMSNorm):
    fused_index = 1


NORMS.add("layernorm", lambda dim, eps, bias: nn.LayerNorm(dim, eps=eps, bias=bias), "LayerNorm (ModernBERT: no bias, eps 1e-5)")
NORMS.add("rmsnorm", lambda dim, eps, bias: RMSNorm(dim, eps=eps, bias=bias), "RMSNorm: scale by the root mean square, no centering")
NORMS.add(
    "triton_layernorm",
    lambda dim, eps, bias: TritonLayerNorm(dim, eps=eps, bias=bias),
    "LayerNorm via flash-attn's fused Triton kernel on CUDA when installed, else PyTorch",
)
NORMS.add(
    "triton_rmsnorm",
    lambda dim, eps, bias: TritonRMSNorm(dim, eps=eps, bias=bias),
    "RMSNorm via flash-attn's fused Triton kernel on CUDA when installed, else PyTorch",
)


class _LayerNormLinear(torch.autograd.Function):
    """linear(layer_norm(x)) keeping x and the norm's statistics for the backward pass, not the normalized
    activations that the linear layer would keep: those are recomputed there (H floats a token less memory for one
    more normalization; the same matmuls)."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, weight, bias):
        normed, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        ctx.has_bias = bias is not None
        return F.linear(normed, weight, bias)  # under AMP, in the autocast dtype

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad: (T, out)
        x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        compute = grad.dtype  # the forward's output dtype (bf16 under AMP); backward runs outside autocast
        normed = (x - mean).mul_(rstd)  # recomputed
        if norm_weight is not None:
            normed.mul_(norm_weight)
        if norm_bias is not None:
            normed.add_(norm_bias)
        grad_weight = (grad.t() @ normed.to(compute)).to(weight.dtype)
        del normed
        grad_bias = grad.sum(0).to(weight.dtype) if ctx.has_bias else None
        grad_normed = (grad @ weight.to(compute)).to(x.dtype)
        grad_x, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_layer_norm_backward(
            grad_normed, x, (x.shape[-1],), mean, rstd, norm_weight, norm_bias,
            [ctx.needs_input_grad[0], norm_weight is not None and ctx.needs_input_grad[1],
             norm_bias is not None and ctx.needs_input_grad[2]])
        return grad_x, grad_norm_weight, grad_norm_bias, None, grad_weight, grad_bias


def normed_linear(x: torch.Tensor, norm: nn.Module, linear: nn.Linear) -> torch.Tensor:
    """linear(norm(x)): the input projection of a pre-norm block. For torch's LayerNorm (ModernBERT's), the
    normalized activations are recomputed in the backward pass instead of kept; other norms run as they are."""
    # same math as norm(x) only where autocast would not change the norm's dtype (it runs LayerNorm in fp32)
    same_dtype = x.dtype == norm.weight.dtype if type(norm) is nn.LayerNorm else False
    eager = not torch.compiler.is_compiling()  # torch.compile's partitioner recomputes the norm by itself
    if eager and same_dtype and x.dim() == 2 and (x.dtype in (torch.float32, torch.float64)
                                                  or not torch.is_autocast_enabled(x.device.type)):
        return _LayerNormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)
    return linear(norm(x))


def build_norm(config, dim: int | None = None) -> nn.Module:
    return NORMS.get(config.normalization)(dim or config.hidden_size, config.norm_eps(), config.norm_bias())

