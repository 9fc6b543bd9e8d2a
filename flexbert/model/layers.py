"""Encoder layers (`bert_layer`): how attention and MLP are wired with norms and residuals.

- `prenorm`:          h = h + attn(attn_norm(h));  h = h + mlp(mlp_norm(h))        (ModernBERT)
- `postnorm`:         h = attn_norm(h + attn(h));  h = mlp_norm(h + mlp(h))        (original BERT)
- `parallel_prenorm`: x = norm(h); [qkv | ff] = Wqkvff(x); h = h + attn(qkv) + mlp(ff)

With `skip_first_prenorm` (and an embedding norm), layer 0 has no attention pre-norm: the embedding norm
serves, and the checkpoint has no `layers.0.attn_norm`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from flexbert.model.attention import FlexBertAttention
from flexbert.model.norms import build_norm, normed_linear
from flexbert.model.packed import PackedSequences
from flexbert.model.registries import LAYERS, MLPS


class _Layer(nn.Module):
    parallel = False

    def __init__(self, config, layer_id: int, attention_layer: str, mlp_layer: str):
        super().__init__()
        self.attn = FlexBertAttention(config, layer_id, attention_layer)
        self.mlp = MLPS.get(mlp_layer)(config)


@LAYERS.register("prenorm", "pre-norm residual layer (ModernBERT)")
class PreNormLayer(_Layer):
    def __init__(self, config, layer_id: int, attention_layer: str, mlp_layer: str):
        super().__init__(config, layer_id, attention_layer, mlp_layer)
        skip = layer_id == 0 and config.skip_first_prenorm and config.embed_norm
        self.attn_norm = nn.Identity() if skip else build_norm(config)
        self.mlp_norm = build_norm(config)

    def forward(self, h: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        # the norms are applied inside attn / mlp, fused with their input projection (see norms.normed_linear)
        h = h + self.attn(h, packed, norm=self.attn_norm)
        return h + self.mlp(h, norm=self.mlp_norm)


@LAYERS.register("postnorm", "post-norm residual layer (original BERT)")
class PostNormLayer(_Layer):
    def __init__(self, config, layer_id: int, attention_layer: str, mlp_layer: str):
        super().__init__(config, layer_id, attention_layer, mlp_layer)
        self.attn_norm = build_norm(config)
        self.mlp_norm = build_norm(config)

    def forward(self, h: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        h = self.attn_norm(h + self.attn(h, packed))
        return self.mlp_norm(h + self.mlp(h))


@LAYERS.register("parallel_prenorm", "attention and MLP in parallel from one norm and one fused projection Wqkvff")
class ParallelPreNormLayer(_Layer):
    parallel = True

    def __init__(self, config, layer_id: int, attention_layer: str, mlp_layer: str):
        super().__init__(config, layer_id, attention_layer, mlp_layer)
        self.attn_size = 3 * config.hidden_size
        mlp_size = config.intermediate_size * (2 if self.mlp.gated else 1)
        self.Wqkvff = nn.Linear(config.hidden_size, self.attn_size + mlp_size, bias=config.attn_qkv_bias)
        skip = layer_id == 0 and config.skip_first_prenorm and config.embed_norm
        self.norm = nn.Identity() if skip else build_norm(config)

    def forward(self, h: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        qkv, ff = normed_linear(h, self.norm, self.Wqkvff).split(
            [self.attn_size, self.Wqkvff.out_features - self.attn_size], dim=-1)
        return h + self.attn(qkv, packed) + self.mlp(ff)


def build_layer(config, layer_id: int) -> nn.Module:
    bert_layer, attention_layer, mlp_layer = config.layer_blocks(layer_id)
    return LAYERS.get(bert_layer)(config, layer_id, attention_layer, mlp_layer)
