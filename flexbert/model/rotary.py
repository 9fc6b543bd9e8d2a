"""Rotary position embeddings (RoPE) in pure PyTorch, over packed tokens.

Follows the NeoX "rotate half" layout used by ModernBERT (dimension i pairs with i + rope_dim/2), with the
GPT-J interleaved layout (2i pairs with 2i+1) as an option. Only the first `rope_dim` channels of each head
rotate (partial rotary); the rest pass through. Optional xPos scaling (`rotary_emb_scale_base`): queries are
multiplied by scale^(pos/scale_base) and keys divided by it, so relative decay depends on distance only.
Frequencies are computed in fp32 from the theta given at call time, so changing theta between phases
really changes the model (in the reference framework a new theta only changed an attribute).
"""

from __future__ import annotations

from typing import Optional

import torch


def inverse_frequencies(rope_dim: int, theta: float, device=None) -> torch.Tensor:
    """(rope_dim/2,) fp32: theta^(-2i/rope_dim)."""
    exponents = torch.arange(0, rope_dim, 2, dtype=torch.int64, device=device).float() / rope_dim
    return 1.0 / (theta**exponents)


def rope_tables(
    position_ids: torch.Tensor, rope_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, rope_dim/2) for positions (T,)."""
    angles = position_ids.float()[:, None] * inverse_frequencies(rope_dim, theta, position_ids.device)[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def xpos_scale(position_ids: torch.Tensor, rope_dim: int, scale_base: float, dtype: torch.dtype) -> torch.Tensor:
    """(T, rope_dim/2) xPos factors ((2i + 0.4 d) / 1.4 d)^(pos / scale_base)."""
    base = (torch.arange(0, rope_dim, 2, device=position_ids.device, dtype=torch.float32) + 0.4 * rope_dim) / (1.4 * rope_dim)
    return (base[None, :] ** (position_ids.float()[:, None] / scale_base)).to(dtype)


def _rotate_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NeoX rotation of x (T, ..., D) by the tables (T, 1.., rope_dim/2), written into `out` (fresh if None):
    out1 = x1 cos -/+ x2 sin, out2 = x2 cos +/- x1 sin (the sign flips for the inverse rotation)."""
    half = cos.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    x1, x2, o1, o2 = x[..., :half], x[..., half : 2 * half], out[..., :half], out[..., half : 2 * half]
    sign = 1.0 if inverse else -1.0
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=-sign)
    if 2 * half < x.shape[-1]:
        out[..., 2 * half :] = x[..., 2 * half :]  # partial rotary: the rest passes through
    return out


class _RotateHalves(torch.autograd.Function):
    """The rotation is orthogonal, so its backward is the inverse rotation of the gradient: nothing but the tables
    is saved, and neither pass builds temporaries or a cat (the plain-op version makes six of them)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate_halves(x, cos, sin, inverse=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate_halves(grad, cos, sin, inverse=True), None, None


def _heads(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:  # (T, 3 * heads * hd) -> (T, 3, heads, hd)
    return qkv.view(qkv.shape[0], 3, num_heads, qkv.shape[1] // (3 * num_heads))


class _RotateQKInPlace(torch.autograd.Function):
    """Rotates the query and key thirds of a fused (T, 3 * heads * head_dim) projection in place: the projection's
    output is needed by nothing else (a Linear saves its input, not its output), so no rotated copy is allocated.
    The backward writes the inverse rotation of the q/k gradient and the v gradient into one fresh buffer."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, num_heads):
        ctx.save_for_backward(cos, sin)
        ctx.num_heads = num_heads
        qk = _heads(qkv, num_heads)[:, :2]  # (T, 2, heads, head_dim)
        half = cos.shape[-1]
        x1, x2 = qk[..., :half], qk[..., half : 2 * half]
        x1_before = x1.clone()
        x1.mul_(cos).addcmul_(x2, sin, value=-1.0)  # x1 cos - x2 sin
        x2.mul_(cos).addcmul_(x1_before, sin, value=1.0)  # x2 cos + x1 sin
        ctx.mark_dirty(qkv)
        return qkv

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # (T, 3 * heads * head_dim)
        cos, sin = ctx.saved_tensors
        grad_in = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        g, gi = _heads(grad.contiguous(), ctx.num_heads), _heads(grad_in, ctx.num_heads)
        _rotate_halves(g[:, :2], cos, sin, inverse=True, out=gi[:, :2])
        gi[:, 2] = g[:, 2]
        return grad_in, None, None, None


def _table_shape(cos: torch.Tensor, x_dim: int) -> tuple[int, ...]:
    return (cos.shape[0],) + (1,) * (x_dim - 2) + (cos.shape[-1],)  # broadcast over heads (and q/k)


def rotate_qk_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """In-place NeoX RoPE on the q and k parts of a fused projection qkv (T, 3 * heads * head_dim), laid out
    [Q | K | V] with head-major heads; returns qkv. cos, sin: (T, rope_dim/2)."""
    table = _table_shape(cos, 4)
    return _RotateQKInPlace.apply(qkv, cos.reshape(table), sin.reshape(table), num_heads)


def apply_rope(
    x: torch.Tensor,  # (T, ..., D): e.g. (T, H, D), or (T, 2, H, D) to rotate queries and keys in one op
    cos: torch.Tensor,  # (T, rope_dim/2)
    sin: torch.Tensor,  # (T, rope_dim/2)
    interleaved: bool = False,
    scale: Optional[torch.Tensor] = None,  # (T, rope_dim/2) xPos factors, or None
) -> torch.Tensor:
    rope_dim = 2 * cos.shape[-1]
    table_shape = _table_shape(cos, x.dim())
    cos, sin = cos.reshape(table_shape), sin.reshape(table_shape)
    fusable = not interleaved and scale is None and not (cos.requires_grad or sin.requires_grad)
    if fusable and not torch.compiler.is_compiling():  # under torch.compile, the plain ops below fuse by themselves
        return _RotateHalves.apply(x, cos, sin)  # the ModernBERT case, fused
    if scale is not None:
        scale = scale.reshape(table_shape)
        cos, sin = cos * scale, sin * scale
    # split, not slicing: a slice's backward zero-fills the full tensor; with full rotary there is nothing to split
    rot, rest = (x, x[..., :0]) if rope_dim == x.shape[-1] else x.split([rope_dim, x.shape[-1] - rope_dim], dim=-1)
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated
