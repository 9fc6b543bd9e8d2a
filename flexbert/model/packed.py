"""Packing metadata, computed once per batch and handed to every block.

The encoder always runs on packed tokens `(T, hidden)`: the real tokens of several documents concatenated.
`PackedSequences` holds the document boundaries (`cu_seqlens`), the longest document, per-token positions
(restarting at 0 in every document), how to put outputs back into the caller's padded shape, and a small
per-batch cache (RoPE tables, kernel gather indices) so no layer recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


class BatchCache:
    """Values derived from one batch (RoPE tables, masks, gather indices), built on first use and shared by every
    layer that asks with the same key. The subclass declares `cache: dict`."""

    cache: dict

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


@dataclass
class PackedSequences(BatchCache):
    cu_seqlens: torch.Tensor  # (B+1,) int32, cu_seqlens[0] = 0, cu_seqlens[-1] = T
    max_seqlen: int
    position_ids: torch.Tensor  # (T,) int64
    indices: torch.Tensor  # (T,) int64: where each packed token sits in the flattened (batch * seq_len) input
    batch_size: int  # the caller's padded shape, restored by `pad`
    seq_len: int
    cache: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.indices.shape[0]

    @classmethod
    def from_attention_mask(cls, attention_mask: torch.Tensor) -> "PackedSequences":
        """Padded (B, S) input: keep the positions where attention_mask is 1, documents = rows."""
        batch, seq = attention_mask.shape
        mask = attention_mask.bool()
        seqlens = mask.sum(dim=1, dtype=torch.int32)  # (B,)
        indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()  # (T,)
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
        # Positions count real tokens only, so left padding and right padding give the same result.
        position_ids = (torch.cumsum(mask, dim=1) - 1).flatten()[indices]
        return cls(cu_seqlens, int(seqlens.max()), position_ids, indices, batch, seq)

    @classmethod
    def from_cu_seqlens(
        cls,
        cu_seqlens: torch.Tensor,
        max_seqlen: Optional[int],
        seq_len: int,
        position_ids: Optional[torch.Tensor] = None,
    ) -> "PackedSequences":
        """One packed row of `seq_len` slots: documents at [cu[i], cu[i+1]), padding after cu[-1]."""
        cu_seqlens = cu_seqlens.to(torch.int32).flatten()
        if cu_seqlens.numel() and int(cu_seqlens[0]) != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {cu_seqlens[:4].tolist()}...")
        lengths = cu_seqlens.diff()
        total = int(cu_seqlens[-1])
        if total > seq_len:
            raise ValueError(f"cu_seqlens ends at {total}, beyond the {seq_len} input positions")
        if max_seqlen is None:
            max_seqlen = int(lengths.max()) if lengths.numel() else 0
        indices = torch.arange(total, device=cu_seqlens.device)
        if position_ids is None:
            starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths.long(), output_size=total)
            position_ids = indices - starts
        else:
            position_ids = position_ids.flatten()[:total].long()
        return cls(cu_seqlens, int(max_seqlen), position_ids, indices, 1, seq_len)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, ...) -> (T, ...)."""
        return x.reshape(self.batch_size * self.seq_len, *x.shape[2:])[self.indices]

    def pad(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(T, ...) -> (B, S, ...), `fill` at padding positions."""
        out = x.new_full((self.batch_size * self.seq_len, *x.shape[1:]), fill)
        out[self.indices] = x
        return out.view(self.batch_size, self.seq_len, *x.shape[1:])

