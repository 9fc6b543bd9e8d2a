"""Embedding blocks (`embedding_layer`): token embeddings, optional learned positions, norm, dropout.

Parameter names match released checkpoints: `tok_embeddings`, `position_embeddings`, `norm`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from flexbert.model.norms import build_norm
from flexbert.model.registries import EMBEDDINGS


class _Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.norm = build_norm(config) if config.embed_norm else nn.Identity()
        self.drop = nn.Dropout(config.embed_dropout_prob) if config.embed_dropout_prob > 0 else nn.Identity()

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(input_ids)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """(T,) ids and positions -> (T, hidden)."""
        return self.drop(self.norm(self.embed(input_ids, position_ids)))


@EMBEDDINGS.register("sans_pos", "token embeddings only; positions come from RoPE in attention (ModernBERT)")
class SansPositionEmbeddings(_Embeddings):
    pass


@EMBEDDINGS.register("absolute_pos", "token + learned absolute position embeddings (BERT)")
class AbsolutePositionEmbeddings(_Embeddings):
    def __init__(self, config):
        super().__init__(config)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(input_ids) + self.position_embeddings(position_ids)
