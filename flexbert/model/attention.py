"""The one attention module. Variants are settings, kernels are a registry.

The schema's `attention_layer` names parse into two orthogonal settings (`AttentionSpec`):
- `rope`:        rotate queries and keys with RoPE (else no positional signal here);
- `fused_input`: Wqkv is part of the layer's fused `Wqkvff` projection (parallel layers).
Whether a layer is global or local (sliding window) and its RoPE theta come from the layer index
(`FlexBertConfig.is_global_layer`, `rope_theta`). The kernel (flash-attn varlen, SDPA, pure-PyTorch sliding
window, ...) is looked up in `attention_kernels` from the config's `attn_kernel`, the device, the compute dtype and
the window, so the same weights run anywhere.

`prepare(packed, device, dtype)` runs eagerly before the layers of every forward (the encoder calls it): it decides
the kernel and puts everything `forward` reads from the batch into the batch's cache -- RoPE tables, the kernel's
packed index and masks. `forward` itself then only reads: under torch.compile the kernel choice (imports, a
cached lookup) is never traced, and a layer recomputed by activation checkpointing sees exactly what its first run
saw, so it traces the same graph (a cache filled by the first run would change it).

Parameters: `Wqkv` [3H, H] laid out [Q | K | V], each head-major; `Wo` [H, H].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from flexbert.model.attention_kernels import PackedIndex, prepare_kernel_cache, select_kernel
from flexbert.model.norms import normed_linear
from flexbert.model.packed import PackedSequences
from flexbert.model.registries import ATTENTION
from flexbert.model.rotary import apply_rope, rope_tables, rotate_qk_, xpos_scale


@dataclass(frozen=True)
class AttentionSpec:
    rope: bool
    fused_input: bool


ATTENTION.add("base", AttentionSpec(rope=False, fused_input=False), "softmax attention, no positional signal")
ATTENTION.add("rope", AttentionSpec(rope=True, fused_input=False), "attention with rotary positions (ModernBERT)")
ATTENTION.add("parallel", AttentionSpec(rope=False, fused_input=True), "attention fed by the parallel layer's fused projection")
ATTENTION.add("rope_parallel", AttentionSpec(rope=True, fused_input=True), "rotary attention fed by the fused projection")


class FlexBertAttention(nn.Module):
    def __init__(self, config, layer_id: int, attention_layer: str):
        super().__init__()
        self.spec: AttentionSpec = ATTENTION.get(attention_layer)
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.window = None if config.is_global_layer(layer_id) else config.local_window
        self.rope_theta = config.rope_theta(layer_id)
        self.rope_dim = config.rope_dim(layer_id)
        self.rope_interleaved = config.rotary_emb_interleaved
        self.rope_scale_base = config.rotary_emb_scale_base
        self.kernel_name = config.attn_kernel
        self.probs_dropout = config.attention_probs_dropout_prob
        # A plain bool, fixed at build: torch >= 2.9 traces float attributes as symbolic values under
        # torch.compile(dynamic=True), and a decision taken from one ("dropout on") crashes the trace.
        self.has_probs_dropout = config.attention_probs_dropout_prob > 0.0
        self.deterministic = config.deterministic_fa2
        if not self.spec.fused_input:
            self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attn_qkv_bias)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attn_out_bias)
        self.out_drop = nn.Dropout(config.attn_out_dropout_prob) if config.attn_out_dropout_prob > 0 else nn.Identity()
        self._prepared: tuple | None = None  # (device, dtype, dropout on, kernel) decided by `prepare`

    def prepare(self, packed: PackedSequences, device: torch.device, dtype: torch.dtype) -> None:
        """Eager, before the layer runs on this batch: the kernel for (device, dtype, dropout) and the batch's cache
        entries `forward` will read. `dtype` is what q and k will be (the autocast dtype under autocast)."""
        dropout_on = self.training and self.has_probs_dropout
        if self._prepared is None or self._prepared[:3] != (device, dtype, dropout_on):
            kernel = select_kernel(self.kernel_name, device, dtype, self.window,
                                   dropout_p=self.probs_dropout if dropout_on else 0.0, deterministic=self.deterministic)
            self._prepared = (device, dtype, dropout_on, kernel)
        kernel = self._prepared[3]
        if self.spec.rope:
            self._rope_tables(packed, dtype)
            if self.rope_scale_base is not None:
                self._xpos_scale(packed, dtype)
        if getattr(kernel, "uses_packed_index", True):
            prepare_kernel_cache(kernel, self._index(packed), self.window)

    def _index(self, packed: PackedSequences) -> PackedIndex:
        return packed.cached("attn_index", lambda: PackedIndex.from_cu_seqlens(packed.cu_seqlens, packed.max_seqlen))

    def _xpos_scale(self, packed: PackedSequences, dtype: torch.dtype) -> torch.Tensor:
        return packed.cached(
            ("xpos", self.rope_dim, self.rope_scale_base, dtype),
            lambda: xpos_scale(packed.position_ids, self.rope_dim, self.rope_scale_base, dtype),
        )

    def _rope_tables(self, packed: PackedSequences, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, rope_dim/2), once per batch for each (rope_dim, theta)."""
        key = ("rope", self.rope_dim, self.rope_theta, dtype)
        return packed.cached(key, lambda: rope_tables(packed.position_ids, self.rope_dim, self.rope_theta, dtype))

    def _rotate(self, qk: torch.Tensor, packed: PackedSequences) -> tuple[torch.Tensor, torch.Tensor]:
        """qk: (T, 2, heads, head_dim) queries and keys -> rotated q, k (T, heads, head_dim) each."""
        cos, sin = self._rope_tables(packed, qk.dtype)
        if self.rope_scale_base is None:
            return apply_rope(qk, cos, sin, self.rope_interleaved).unbind(1)  # queries and keys in one op
        scale = self._xpos_scale(packed, qk.dtype)
        q, k = qk.unbind(1)
        return (
            apply_rope(q, cos, sin, self.rope_interleaved, scale),
            apply_rope(k, cos, sin, self.rope_interleaved, 1.0 / scale),
        )

    def forward(self, x: torch.Tensor, packed: PackedSequences, norm: nn.Module | None = None) -> torch.Tensor:
        """x: (T, H) hidden states, or (T, 3H) projected qkv when the layer fuses the input projection.
        `norm`: the pre-norm of x, applied here together with Wqkv (see norms.normed_linear)."""
        if not self.spec.fused_input:
            x = self.Wqkv(x) if norm is None else normed_linear(x, norm, self.Wqkv)  # (T, 3H)
        elif norm is not None:
            raise ValueError("a fused-input attention gets projected qkv; its layer applies the norm")
        in_place_rope = self.spec.rope and self.rope_scale_base is None and not self.rope_interleaved
        if in_place_rope and not self.spec.fused_input and not torch.compiler.is_compiling():
            # ModernBERT's case: rotate q and k inside the fresh Wqkv output, in place (no rotated copy). Not under
            # torch.compile, which fuses the plain ops itself and breaks its graph on the in-place writes.
            cos, sin = self._rope_tables(packed, x.dtype)
            qkv = rotate_qk_(x, cos, sin, self.num_heads).view(-1, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.unbind(1)  # (T, heads, head_dim) views
        else:
            qkv = x.view(-1, 3, self.num_heads, self.head_dim)
            # split/unbind, not indexing: their backward is one cat; each slice's backward zero-fills a full tensor
            qk, v = qkv.split([2, 1], dim=1)  # (T, 2, heads, head_dim), (T, 1, heads, head_dim) views
            q, k = self._rotate(qk, packed) if self.spec.rope else qk.unbind(1)
            v = v.squeeze(1)
        dropout_on = self.training and self.has_probs_dropout
        dropout_p = self.probs_dropout if dropout_on else 0.0
        prepared = self._prepared
        if prepared is not None and prepared[:3] == (q.device, q.dtype, dropout_on):
            kernel = prepared[3]
        else:  # called without `prepare` (a layer on its own): decide here
            kernel = select_kernel(
                self.kernel_name, q.device, q.dtype, self.window, dropout_p=dropout_p, deterministic=self.deterministic
            )
        index = self._index(packed) if getattr(kernel, "uses_packed_index", True) else None
        out = kernel(q, k, v, packed.cu_seqlens, packed.max_seqlen, self.window, dropout_p, index=index)  # (T, heads, head_dim)
        return self.out_drop(self.Wo(out.reshape(out.shape[0], -1)))
