"""Rotary position embeddings (RoPE) in pure PyTorch, over packed tokens.

Follows the NeoX "rotate half" layout used by ModernBERT (dimension i pairs with i + rope_dim/2), with the
GPT-J interleaved layout (2i pairs with 2i+1) as an option. Only the first `rope_dim` channels of each head
rotate (partial rotary); the rest pass through. Optional xPos scaling (`rotary_emb_scale_base`): queries are
multiplied by scale^(pos/scale_base) and keys divided by it, so relative decay depends on distance only.
Frequencies are computed in fp32 from the theta given at call time, so changing theta between phases
really changes the model (the reference's theta schedule only changed an attribute).
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


def apply_rope(
    x: torch.Tensor,  # (T, ..., D): e.g. (T, H, D), or (T, 2, H, D) to rotate queries and keys in one op
    cos: torch.Tensor,  # (T, rope_dim/2)
    sin: torch.Tensor,  # (T, rope_dim/2)
    interleaved: bool = False,
    scale: Optional[torch.Tensor] = None,  # (T, rope_dim/2) xPos factors, or None
) -> torch.Tensor:
    rope_dim = 2 * cos.shape[-1]
    rot, rest = x[..., :rope_dim], x[..., rope_dim:]
    table_shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[-1],)  # broadcast over heads (and q/k)
    cos, sin = cos.reshape(table_shape), sin.reshape(table_shape)
    if scale is not None:
        scale = scale.reshape(table_shape)
        cos, sin = cos * scale, sin * scale
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated
