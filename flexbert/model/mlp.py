"""MLP blocks (`mlp_layer`). Parameter names match released checkpoints: `Wi` (input), `Wo` (output).

- `mlp`:  Wo(drop(act(Wi x)))                                  Wi: H -> I
- `glu`:  Wo(drop(act(a) * g)), (a, g) = Wi x split in halves   Wi: H -> 2I (ModernBERT's GeGLU)
- `parallel_glu`: the GLU of a parallel layer; its input projection is part of the layer's fused `Wqkvff`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexbert.model.activations import build_activation
from flexbert.model.norms import normed_linear
from flexbert.model.registries import MLPS


class _MLPBase(nn.Module):
    fused_input = False  # True: the layer computes Wi as part of a fused projection and passes its output
    gated = False

    def __init__(self, config):
        super().__init__()
        self.act = build_activation(config.hidden_act)
        self.drop = nn.Dropout(config.mlp_dropout_prob) if config.mlp_dropout_prob > 0 else nn.Identity()
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_out_bias)

    def activate(self, projected: torch.Tensor) -> torch.Tensor:
        if self.gated:
            if isinstance(self.act, (nn.GELU, nn.SiLU)) and not torch.compiler.is_compiling():
                return _GatedActivation.apply(projected, self.act)
            inp, gate = projected.chunk(2, dim=-1)
            return self.act(inp) * gate
        return self.act(projected)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None) -> torch.Tensor:
        """(T, H) -> (T, H); for fused-input MLPs, x is the (T, 2I) slice of the fused projection. `norm`: the pre-norm
        of x, applied here together with Wi (see norms.normed_linear)."""
        if self.fused_input:
            if norm is not None:
                raise ValueError("a fused-input MLP gets its slice of the projection; its layer applies the norm")
            projected = x
        else:
            projected = self.Wi(x) if norm is None else normed_linear(x, norm, self.Wi)
        # Eager mode only: under torch.compile the plain ops are fused, and the compiler's own partitioner already
        # recomputes cheap elementwise results in the backward instead of saving them.
        fusable = self.gated and isinstance(self.drop, nn.Identity) and isinstance(self.act, (nn.GELU, nn.SiLU))
        if fusable and not torch.compiler.is_compiling():
            return _GatedLinear.apply(projected, self.Wo.weight, self.Wo.bias, self.act)
        return self.Wo(self.drop(self.activate(projected)))


def _activation(x: torch.Tensor, act: nn.Module, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(x) for GELU / SiLU by the functional op (module hooks must not fire inside an autograd Function),
    written into `out` when given."""
    if isinstance(act, nn.GELU):
        return torch._C._nn.gelu(x, approximate=act.approximate, **({"out": out} if out is not None else {}))
    return torch._C._nn.silu(x, **({"out": out} if out is not None else {}))


def _activation_backward_(grad: torch.Tensor, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """grad *= act'(x), in place."""
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_backward.grad_input(grad, x, approximate=act.approximate, grad_input=grad)
    return torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=grad)


class _GatedActivation(torch.autograd.Function):
    """act(a) * g for (a, g) = the halves of the (T, 2I) input projection (GELU or SiLU) -- the same math as the
    plain ops, with fewer fresh (T, I) buffers: the product is formed in place, act(a) is recomputed in the
    backward instead of kept (I floats a token less memory), and both halves' gradients are written into one
    (T, 2I) buffer (no cat)."""

    @staticmethod
    def forward(ctx, projected, act):
        ctx.act = act
        ctx.save_for_backward(projected)
        inp, gate = projected.chunk(2, dim=-1)
        return _activation(inp, act).mul_(gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad: (T, I)
        (projected,) = ctx.saved_tensors
        return _GatedActivation.backward_from(grad, projected, ctx.act), None

    @staticmethod
    def backward_from(grad: torch.Tensor, projected: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """Gradient of act(a) * g with respect to the (T, 2I) projection, given the gradient of the product."""
        inp, gate = projected.chunk(2, dim=-1)
        grad_projected = torch.empty_like(projected, memory_format=torch.contiguous_format)  # (T, 2I)
        grad_inp, grad_gate = grad_projected.chunk(2, dim=-1)
        _activation(inp, act, out=grad_gate).mul_(grad)  # d/dg = act(a) * grad
        torch.mul(grad, gate, out=grad_inp)
        _activation_backward_(grad_inp, inp, act)  # d/da = grad * g * act'(a)
        return grad_projected


class _GatedLinear(torch.autograd.Function):
    """Wo(act(a) * g) for (a, g) = the halves of the (T, 2I) input projection: the GLU and its output projection in
    one step that keeps only the projection (and Wo's weight) for the backward pass. The (T, I) product -- which
    nn.Linear would keep as its input -- is recomputed there from the projection instead: I floats a token less
    memory for one more activation, and the same matmuls."""

    @staticmethod
    def forward(ctx, projected, weight, bias, act):
        ctx.act = act
        ctx.save_for_backward(projected, weight)
        ctx.has_bias = bias is not None
        inp, gate = projected.chunk(2, dim=-1)
        return F.linear(_activation(inp, act).mul_(gate), weight, bias)  # under AMP, in the autocast dtype

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad: (T, H)
        projected, weight = ctx.saved_tensors
        inp, gate = projected.chunk(2, dim=-1)
        compute = grad.dtype  # the forward's output dtype (bf16 under AMP); backward runs outside autocast
        product = _activation(inp, ctx.act).mul_(gate).to(compute)  # (T, I), recomputed
        grad_weight = (grad.t() @ product).to(weight.dtype)
        del product
        grad_bias = grad.sum(0).to(weight.dtype) if ctx.has_bias else None
        grad_product = (grad @ weight.to(compute)).to(projected.dtype)  # (T, I)
        return _GatedActivation.backward_from(grad_product, projected, ctx.act), grad_weight, grad_bias, None


@MLPS.register("mlp", "Linear -> activation -> Linear (BERT)")
class MLP(_MLPBase):
    def __init__(self, config):
        super().__init__(config)
        self.Wi = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_in_bias)


@MLPS.register("glu", "gated linear unit: Wi -> (input, gate), act(input) * gate -> Wo (ModernBERT's GeGLU)")
class GLU(_MLPBase):
    gated = True

    def __init__(self, config):
        super().__init__(config)
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_in_bias)


@MLPS.register("parallel_glu", "GLU whose input projection is fused with attention's Wqkv (parallel_prenorm)")
class ParallelGLU(_MLPBase):
    gated = True
    fused_input = True
