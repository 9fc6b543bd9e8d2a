"""Normalization layers by schema name (`normalization`, `norm_kwargs: {eps, bias}`).

`triton_layernorm` / `triton_rmsnorm` use flash-attn's fused Triton kernels when they are installed and the
tensor is on CUDA; otherwise they compute the same math in PyTorch, so a config never depends on the machine.
Parameter names (`weight`, `bias`) are those of torch.nn.LayerNorm, as in released checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn as nn

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


def build_norm(config, dim: int | None = None) -> nn.Module:
    return NORMS.get(config.normalization)(dim or config.hidden_size, config.norm_eps(), config.norm_bias())

