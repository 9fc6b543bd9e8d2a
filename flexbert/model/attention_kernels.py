"""Attention kernels over packed (unpadded) tokens, one signature, one registry (`model_config.attn_kernel`).

Every kernel computes, for packed q, k, v of shape (T, H, D) holding several documents back to back
(boundaries `cu_seqlens`), softmax(q k^T / sqrt(D)) v where key j is visible from query i iff both are in the
same document and, on local layers, |i - j| <= window (ModernBERT: sliding_window 128 -> window 64, the
flash-attn `window_size=(64, 64)` convention of the recipe). Signature:

    kernel(q, k, v, cu_seqlens, max_seqlen, window, dropout_p=0.0, *, index=None) -> (T, H, D)

`index` is an optional `PackedIndex`: the batch's gather/scatter maps and masks, computed once per forward by
the model (`PackedIndex.from_cu_seqlens`) and shared by every layer (masks are cached on it per window).

Kernels: `eager` (naive per-document softmax, the definition of correctness), `sdpa` (global: one unmasked SDPA
call per run of equal-length documents, or a padded batch with a key-padding mask when there are very many; local:
padded batch with a dense band mask), `sliding_window` (blocked local attention, cost linear in T), `flash_attn2`,
`flash_attn3` (flash-attn varlen, see `flash_attn_adapter`), `flex_attention` (PyTorch FlexAttention over block
masks of the packed documents, see `flex_blocks`; compiled on CUDA). `select_kernel` resolves 'auto'.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from flexbert.model.flash_attn_adapter import FlashAttnAdapter, flash_attn_available, unavailable_reason
from flexbert.model.flex_blocks import BLOCK as FLEX_BLOCK
from flexbert.model.flex_blocks import flex_head_dim, packed_block_mask
from flexbert.model.packed import BatchCache
from flexbert.registry import Registry

ATTENTION_KERNELS = Registry("attention kernel", "model_config.attn_kernel")


@dataclasses.dataclass
class PackedIndex(BatchCache):
    """Per-batch layout of packed documents, computed once and passed to every attention layer.

    Empty documents (zero length in `cu_seqlens`) are dropped: they hold no tokens, and a padded row
    without any real key would make SDPA produce NaN.
    """

    cu_seqlens: torch.Tensor  # (B+1,) int32 boundaries of the non-empty documents
    lengths: list[int]  # B document lengths
    max_seqlen: int  # S: the padded length
    doc_ids: torch.Tensor  # (T,) int64 document of each token
    positions: torch.Tensor  # (T,) int64 position of each token inside its document
    scatter_index: torch.Tensor  # (T,) int64 slot of each token in the flat padded batch: doc * S + position
    gather_index: torch.Tensor  # (B*S,) int64 token read into each padded slot (padding repeats its doc's last token)
    key_padding_mask: Optional[torch.Tensor]  # (B, 1, 1, S) bool, True = real key; None when nothing is padded
    cache: dict = dataclasses.field(default_factory=dict, repr=False)  # masks shared by the layers of one window

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, max_seqlen: Optional[int] = None) -> "PackedIndex":
        device = cu_seqlens.device
        all_lengths = torch.diff(cu_seqlens.long())
        if bool((all_lengths < 0).any()):
            raise ValueError(f"cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
        lengths_t = all_lengths[all_lengths > 0]  # (B,)
        lengths = lengths_t.tolist()  # one host sync per batch, not per layer
        longest = max(lengths, default=0)
        if max_seqlen is not None and max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest document ({longest})")
        S = longest  # pad to the true longest, not a caller's upper bound, to waste nothing
        B = len(lengths)
        starts = torch.cumsum(lengths_t, 0) - lengths_t  # (B,)
        doc_ids = torch.repeat_interleave(torch.arange(B, device=device), lengths_t)  # (T,)
        positions = torch.arange(doc_ids.numel(), device=device) - starts[doc_ids]  # (T,)
        slot_pos = torch.arange(S, device=device)  # (S,)
        gather = starts[:, None] + torch.minimum(slot_pos[None, :], lengths_t[:, None] - 1)  # (B, S)
        padded = any(n != S for n in lengths)
        kpm = (slot_pos[None, :] < lengths_t[:, None]).view(B, 1, 1, S) if padded else None
        cu = F.pad(torch.cumsum(lengths_t, 0), (1, 0)).to(torch.int32)
        return cls(cu, lengths, S, doc_ids, positions, doc_ids * S + positions, gather.reshape(-1), kpm)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return self.doc_ids.numel()

    @property
    def is_padded(self) -> bool:
        return self.key_padding_mask is not None



def _index_for(index: Optional[PackedIndex], cu_seqlens: torch.Tensor, max_seqlen: int) -> PackedIndex:
    return index if index is not None else PackedIndex.from_cu_seqlens(cu_seqlens, max_seqlen)


def _check_window(window: Optional[int]) -> None:
    if window is not None and (not isinstance(window, int) or window < 0):
        raise ValueError(f"window must be None (global) or a non-negative int half-width, got {window!r}")


# --------------------------------------------------------------------------------------------- eager
@ATTENTION_KERNELS.register("eager", "naive per-document softmax(QK^T)V with masks; the reference, slow")
def eager_attention(q, k, v, cu_seqlens, max_seqlen, window, dropout_p=0.0, *, index=None):
    _check_window(window)
    scale = 1.0 / math.sqrt(q.shape[-1])
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qd, kd, vd = (x[start:end].transpose(0, 1) for x in (q, k, v))  # (H, L, D)
        scores = (qd @ kd.transpose(1, 2)) * scale  # (H, L, L)
        if window is not None:
            pos = torch.arange(end - start, device=q.device)
            scores = scores.masked_fill((pos[:, None] - pos[None, :]).abs() > window, float("-inf"))
        probs = F.dropout(scores.softmax(-1), dropout_p) if dropout_p > 0 else scores.softmax(-1)
        outs.append((probs @ vd).transpose(0, 1))  # (L, H, D)
    return torch.cat(outs, 0) if outs else torch.zeros_like(q)


# --------------------------------------------------------------------------------------------- sdpa
def _band_mask(index: PackedIndex, window: int) -> torch.Tensor:  # (B, 1, S, S) bool
    S = index.max_seqlen
    pos = torch.arange(S, device=index.doc_ids.device)
    band = ((pos[:, None] - pos[None, :]).abs() <= window).view(1, 1, S, S)
    return band & index.key_padding_mask if index.is_padded else band


# Above this many calls (runs of equal-length documents), one padded call with a key-padding mask is cheaper
# than a Python loop of small SDPA calls (and, on GPU, of kernel launches).
MAX_SDPA_CALLS = 64


def _equal_length_runs(lengths: list[int]) -> list[tuple[int, int]]:
    """(length, count) of each run of consecutive documents with the same length: [5, 5, 3] -> [(5, 2), (3, 1)]."""
    runs: list[tuple[int, int]] = []
    for n in lengths:
        if runs and runs[-1][0] == n:
            runs[-1] = (n, runs[-1][1] + 1)
        else:
            runs.append((n, 1))
    return runs


def _sdpa_by_runs(q, k, v, runs: list[tuple[int, int]], dropout_p: float) -> torch.Tensor:
    """Global attention with one unmasked SDPA call per run of equal-length documents: nothing padded is computed,
    and without a mask PyTorch takes its flash kernel. Inputs are strided views (no copies); one cat assembles
    the output, and the backward of `split` is one cat too (slicing would zero-fill a full tensor per document)."""
    sizes = [n * count for n, count in runs]
    outs = []
    for (n, count), qr, kr, vr in zip(runs, q.split(sizes), k.split(sizes), v.split(sizes)):
        H, D = qr.shape[1:]
        qb, kb, vb = (x.view(count, n, H, D).transpose(1, 2) for x in (qr, kr, vr))  # (count, H, n, D)
        out = F.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout_p)  # (count, H, n, D)
        outs.extend(out.transpose(1, 2).unbind(0))  # count x (n, H, D) views
    return torch.cat(outs) if len(outs) > 1 else outs[0].contiguous()


@ATTENTION_KERNELS.register(
    "sdpa", "torch SDPA per run of equal-length documents (global), or padded with a dense band mask (local, slow)")
def sdpa_attention(q, k, v, cu_seqlens, max_seqlen, window, dropout_p=0.0, *, index=None):
    _check_window(window)
    index = _index_for(index, cu_seqlens, max_seqlen)
    T, H, D = q.shape
    compiling = torch.compiler.is_compiling()
    if compiling:  # sizes from tensor shapes, which the compiler keeps symbolic (Python ints it specializes on)
        B = index.cu_seqlens.shape[0] - 1
        S = index.gather_index.shape[0] // max(B, 1)
    else:
        B, S = index.batch_size, index.max_seqlen
    if window is not None and window >= S - 1:
        window = None  # the band covers every document: global attention, without the S x S mask
    if B == 0:
        return torch.zeros_like(q)
    if window is None:
        runs = None if compiling else index.cached("runs", lambda: _equal_length_runs(index.lengths))
        if runs is not None and len(runs) <= MAX_SDPA_CALLS:
            return _sdpa_by_runs(q, k, v, runs, dropout_p)
        # Many short documents, or under torch.compile: one padded call. The run list is Python data the compiler
        # would specialize on -- a new graph for every new mix of lengths -- while the padded call's sizes come
        # from tensor shapes.
        mask = index.key_padding_mask
    else:
        mask = index.cached(("band", window), lambda: _band_mask(index, window))

    def to_padded(x):  # (T, H, D) -> (B, H, S, D)
        x = x.index_select(0, index.gather_index) if index.is_padded else x
        return x.reshape(B, S, H, D).transpose(1, 2)

    out = F.scaled_dot_product_attention(to_padded(q), to_padded(k), to_padded(v), attn_mask=mask,
                                         dropout_p=dropout_p)  # (B, H, S, D)
    out = out.transpose(1, 2).reshape(B * S, H, D)
    return out.index_select(0, index.scatter_index) if index.is_padded else out


# --------------------------------------------------------------------------------------------- sliding window
def default_block_size(window: int) -> int:
    """Query block: the window rounded up to a multiple of 32 (>= 32). Measured on 2 CPU threads at T=8192,
    window 64: blocks of 32..128 all within 15% (fwd+bwd ~0.24 s); 64 is the sweet spot."""
    return max(32, -(-window // 32) * 32)


def _sliding_mask(index: PackedIndex, window: int, block: int) -> torch.Tensor:  # (nb, 1, block, block+2w) bool
    T = index.num_tokens
    nb = -(-T // block)
    span = block + 2 * window
    # Padding tokens get document -1: real queries never see them, and a padding query sees at least itself
    # (a fully masked row would be NaN, and NaN * 0 still poisons the backward pass).
    doc_q = F.pad(index.doc_ids, (0, nb * block - T), value=-1).view(nb, block)  # (nb, b)
    doc_k = F.pad(index.doc_ids, (window, nb * block - T + window), value=-1).unfold(0, span, block)  # (nb, span)
    i = torch.arange(block, device=doc_q.device)[:, None]
    j = torch.arange(span, device=doc_q.device)[None, :]
    band = (j - i >= 0) & (j - i <= 2 * window)  # key slot j of query i is token i - window + (j - i)
    return ((doc_q[:, :, None] == doc_k[:, None, :]) & band).unsqueeze(1)


def _pad_rows(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero rows around x along dim 0 by one cat (F.pad fills the whole output, then copies x over it)."""
    if before == after == 0:
        return x
    parts = [x.new_zeros(before, *x.shape[1:])] if before else []
    parts += [x] + ([x.new_zeros(after, *x.shape[1:])] if after else [])
    return torch.cat(parts)


@ATTENTION_KERNELS.register("sliding_window", "blocked local attention in PyTorch SDPA, cost linear in tokens (local layers)")
def sliding_window_attention(q, k, v, cu_seqlens, max_seqlen, window, dropout_p=0.0, *, index=None,
                             block_size: Optional[int] = None):
    """Query block n (tokens [n*b, (n+1)*b)) attends to the key span [n*b - w, (n+1)*b + w): b + 2w keys that hold
    every key any of its queries may see; a (b, b + 2w) mask keeps |i - j| <= w and the same document.
    Work per query is b + 2w keys instead of T (dense); no T x T tensor is ever built."""
    _check_window(window)
    index = _index_for(index, cu_seqlens, max_seqlen)
    if window is None or window >= index.max_seqlen - 1:
        return sdpa_attention(q, k, v, cu_seqlens, max_seqlen, None, dropout_p, index=index)
    T, H, D = q.shape
    b = block_size or default_block_size(window)
    nb = -(-T // b)
    span = b + 2 * window
    mask = index.cached(("sliding", window, b), lambda: _sliding_mask(index, window, b))
    qb = _pad_rows(q, 0, nb * b - T).view(nb, b, H, D).transpose(1, 2)  # (nb, H, b, D)

    def key_blocks(x):  # (T, H, D) -> (nb, H, span, D), overlapping spans of the zero-padded sequence
        x = _pad_rows(x, window, nb * b - T + window)  # (w + nb*b + w, H, D)
        return x.unfold(0, span, b).permute(0, 1, 3, 2)  # unfold: (nb, H, D, span)

    out = F.scaled_dot_product_attention(qb, key_blocks(k), key_blocks(v), attn_mask=mask,
                                         dropout_p=dropout_p)  # (nb, H, b, D)
    return out.transpose(1, 2).reshape(nb * b, H, D)[:T]


# --------------------------------------------------------------------------------------------- flash-attn
flash_attn2 = ATTENTION_KERNELS.add("flash_attn2", FlashAttnAdapter(2), "flash-attn 2 varlen (CUDA; sliding window, dropout)")
flash_attn3 = ATTENTION_KERNELS.add("flash_attn3", FlashAttnAdapter(3), "flash-attn 3 varlen (Hopper; no dropout)")


# --------------------------------------------------------------------------------------------- FlexAttention
def _flex_block_mask(index: PackedIndex, window: Optional[int]):
    """The batch's BlockMask for `window`, cached on `index` under the window the layer asked for: a window that
    covers every document shares the global layers' mask."""
    if window is not None and window >= index.max_seqlen - 1:
        return index.cached(("flex", None), lambda: _flex_block_mask(index, None))
    return index.cached(("flex", window), lambda: packed_block_mask(index.doc_ids, index.batch_size, window))


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention() -> Callable:
    # FlexAttention is fast only compiled (its eager form materializes every T x T score); compiled once per process.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex_function(device: torch.device) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda" or torch.compiler.is_compiling():  # CPU: eager; inside a compiled layer: traced there
        return flex_attention
    return _compiled_flex_attention()


@ATTENTION_KERNELS.register(
    "flex_attention", "PyTorch FlexAttention, document and sliding-window block masks (compiled on CUDA; no dropout)")
def flex_attention_kernel(q, k, v, cu_seqlens, max_seqlen, window, dropout_p=0.0, *, index=None):
    """All documents of the batch in one FlexAttention call over the packed sequence (padded to whole blocks,
    heads to a power of two), visiting only the tiles the batch's block mask lists."""
    _check_window(window)
    if dropout_p > 0.0:
        raise ValueError(f"attn_kernel flex_attention has no attention dropout (got dropout_p={dropout_p}); set "
                         "model_config.attention_probs_dropout_prob: 0.0 or attn_kernel: sdpa")
    index = _index_for(index, cu_seqlens, max_seqlen)
    T, H, D = q.shape
    if T == 0:
        return torch.zeros_like(q)
    block_mask = index.cached(("flex", window), lambda: _flex_block_mask(index, window))
    padded = block_mask.kv_num_blocks.shape[-1] * FLEX_BLOCK  # from a tensor shape: symbolic under torch.compile
    head_dim = flex_head_dim(D)

    def to_flex(x):  # (T, H, D) -> (1, H, padded, head_dim), zeros in the padding
        return F.pad(x, (0, head_dim - D, 0, 0, 0, padded - T)).transpose(0, 1).unsqueeze(0)

    out = _flex_function(q.device)(to_flex(q), to_flex(k), to_flex(v), block_mask=block_mask,
                                   scale=1.0 / math.sqrt(D))  # (1, H, padded, head_dim)
    return out[0, :, :T, :D].transpose(0, 1)


def prepare_kernel_cache(kernel: Callable, index: PackedIndex, window: Optional[int]) -> None:
    """Build, eagerly, the per-batch masks `kernel` will read from `index` for `window` -- the same cache entries,
    by the same rules, as the kernel itself -- so a compiled or recomputed layer only reads them."""
    if kernel is flex_attention_kernel and index.num_tokens:
        index.cached(("flex", window), lambda: _flex_block_mask(index, window))
    elif kernel is sliding_window_attention and window is not None and window < index.max_seqlen - 1:
        block = default_block_size(window)
        index.cached(("sliding", window, block), lambda: _sliding_mask(index, window, block))
    elif kernel in (sdpa_attention, sliding_window_attention) and index.batch_size:
        if window is not None and window < index.max_seqlen - 1:
            index.cached(("band", window), lambda: _band_mask(index, window))
        else:
            index.cached("runs", lambda: _equal_length_runs(index.lengths))


# --------------------------------------------------------------------------------------------- selection
def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9


def _has_gpu_kernels(device: torch.device) -> bool:
    return device.type == "cuda"


def flex_attention_usable(device: torch.device) -> bool:
    """FlexAttention compiles to Triton kernels on CUDA (torch's CUDA wheels bring Triton along)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def _select(name, device: torch.device, dtype: torch.dtype, is_global: bool, dropout: bool, deterministic: bool):
    kernel = None
    if name not in (None, "auto"):
        kernel = ATTENTION_KERNELS.get(name)
    elif _has_gpu_kernels(device) and dtype in (torch.float16, torch.bfloat16):
        if is_global and not dropout and _is_hopper(device) and flash_attn_available(3):
            kernel = flash_attn3
        elif flash_attn_available(2):
            kernel = flash_attn2
    if kernel is None:  # auto without flash-attn, or FA3 alone where it does not apply (dropout, local layers)
        if _has_gpu_kernels(device) and not dropout and flex_attention_usable(device):
            kernel = flex_attention_kernel
        else:
            kernel = sdpa_attention if is_global else sliding_window_attention
    if kernel is flex_attention_kernel and dropout:
        raise ValueError("model_config.attn_kernel: flex_attention has no attention dropout; set "
                         "model_config.attention_probs_dropout_prob: 0.0, or attn_kernel to 'auto' or 'sdpa'")
    if isinstance(kernel, FlashAttnAdapter):
        if not flash_attn_available(kernel.version):
            raise RuntimeError(
                f"model_config.attn_kernel: {name} needs flash-attn {kernel.version}, but "
                f"{unavailable_reason(kernel.version)}; install it (CUDA only) or set attn_kernel to 'auto' or 'sdpa'")
        # imported and inspected here, once, not in every (possibly compiled) forward
        kernel = dataclasses.replace(kernel.resolved(), deterministic=kernel.deterministic or deterministic)
    return kernel


def select_kernel(name: Optional[str], device, dtype: torch.dtype, window: Optional[int], *,
                  dropout_p: float = 0.0, deterministic: bool = False) -> Callable:
    """The kernel for `model_config.attn_kernel` = `name` (None/'auto' or a registered name).

    auto: flash_attn3 on global layers on Hopper when installed (and no attention dropout), else flash_attn2 when
    installed on CUDA (fp16/bf16), else flex_attention on CUDA (no attention dropout), else sdpa for global and
    sliding_window for local layers. Call it with the tensors' real device and dtype (under AMP the autocast
    dtype): flash-attn is only chosen for fp16/bf16 so that fp32 runs stay fp32 (FlexAttention computes in the
    input dtype). Results are cached, so calling it in every forward is cheap.
    """
    _check_window(window)
    return _select(name, torch.device(device), dtype, window is None, dropout_p > 0.0, bool(deterministic))


# --------------------------------------------------------------------------------------------- FLOPs
def lengths_from_cu_seqlens(cu_seqlens) -> list[int]:
    return torch.diff(torch.as_tensor(cu_seqlens).long()).tolist()
