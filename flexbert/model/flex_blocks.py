"""FlexAttention block masks for packed documents: which (query block, key block) tiles a kernel must visit.

FlexAttention (`torch.nn.attention.flex_attention`) computes attention tile by tile, BLOCK x BLOCK tokens, over
the tiles a `BlockMask` lists, and applies its `mask_mod` only on "partial" tiles (tiles listed as "full" need no
mask at all). For packed documents with document ids sorted along the sequence, both lists follow from each
block's first and last document, so they are built here from O(blocks^2) small tensors -- never from a T x T mask,
which `create_block_mask` evaluates (96 x 1024 packed tokens would be a 9.6 GB boolean tensor).

The packed length is padded to a multiple of BLOCK (FlexAttention's compiled kernels need whole blocks); the
padding tokens form one extra document after the last one, so no real query sees them and no padding row is empty
(an all-masked row has no softmax).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

BLOCK = 128  # FlexAttention's default sparse block size: the tile both the mask and its kernels use


def padded_length(num_tokens: int) -> int:
    """The packed length rounded up to whole blocks (one block at least)."""
    return max(1, -(-num_tokens // BLOCK)) * BLOCK


def flex_head_dim(head_dim: int) -> int:
    """The head dim FlexAttention's compiled kernels take: a power of two, 16 at least. Smaller or odd heads are
    zero-padded to it -- zero columns add nothing to q . k, and the output's extra columns are dropped."""
    return max(16, 1 << (head_dim - 1).bit_length())


def document_mask_mod(doc: torch.Tensor, window: Optional[int]):
    """mask_mod(b, h, q, k): key k is visible from query q iff both are in the same document and, with a window,
    |q - k| <= window (positions inside one packed document differ as their packed indices do)."""
    if window is None:
        def same_document(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]

        return same_document

    def same_document_in_window(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & ((q_idx - kv_idx).abs() <= window)

    return same_document_in_window


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nb, nb) bool tiles -> BlockMask's (1, 1, nb) counts and (1, 1, nb, nb) key-block indices, listed ones first."""
    counts = tiles.sum(-1, dtype=torch.int32)
    indices = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[None, None], indices[None, None]


def packed_block_mask(doc_ids: torch.Tensor, num_docs: int, window: Optional[int]) -> BlockMask:
    """The BlockMask of packed documents `doc_ids` ((T,) int64, sorted, 0..num_docs-1) for a global layer
    (window None) or a local one (|i - j| <= window), over padded_length(T) tokens."""
    T = doc_ids.numel()
    padded = padded_length(T)
    nb = padded // BLOCK
    doc = F.pad(doc_ids, (0, padded - T), value=num_docs)  # padding: one more document
    first, last = doc.view(nb, BLOCK)[:, 0], doc.view(nb, BLOCK)[:, -1]
    # Sorted ids: two blocks share a document iff their [first, last] document ranges overlap; a tile needs no
    # mask iff both blocks lie inside one and the same document.
    visited = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    one_doc = first == last
    full = one_doc[:, None] & one_doc[None, :] & (first[:, None] == first[None, :])
    if window is not None:
        blocks = torch.arange(nb, device=doc.device)
        apart = (blocks[:, None] - blocks[None, :]).abs()  # tiles d blocks apart: |i - j| spans d*B -+ (B - 1)
        visited &= (apart * BLOCK - (BLOCK - 1)).clamp(min=0) <= window
        full &= apart * BLOCK + (BLOCK - 1) <= window
    partial = visited & ~full
    return BlockMask.from_kv_blocks(*_ordered(partial), *_ordered(full), BLOCK_SIZE=BLOCK,
                                    mask_mod=document_mask_mod(doc, window), seq_lengths=(padded, padded))


def cpu_backward_supported() -> bool:
    """Whether this torch runs FlexAttention's backward on the CPU: torch 2.7 does (eager), later releases refuse
    inputs that require grad there ("FlexAttention does not support backward on CPU")."""
    from torch.nn.attention.flex_attention import flex_attention

    x = torch.zeros(1, 1, BLOCK, 16, requires_grad=True)
    try:
        flex_attention(x, x, x)
    except NotImplementedError:
        return False
    return True
