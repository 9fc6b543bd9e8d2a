"""How a built model is sharded and checkpointed under FSDP. Applied by the trainer, after the model is built, so
model code never knows about distribution.

Composer wraps, inside the root FSDP unit, every module marked `_fsdp_wrap = True`, and -- when
`fsdp_config.activation_checkpointing` is on -- checkpoints every module marked `_activation_checkpointing = True`.
Without marks it would make the whole model one unit: all weights gathered at once, no overlap of communication
with compute, and nothing checkpointed. Here:
- each encoder layer is one FSDP unit (gathered just before it runs, freed after), and the unit whose activations
  are recomputed in the backward pass when activation checkpointing is on;
- embeddings, final norm, head and decoder stay in the root unit: the decoder weight is tied to the token
  embeddings, and tied weights must live in one unit.
"""

from __future__ import annotations

import torch.nn as nn


def mark_fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Mark the encoder layers of a FlexBERT model (FlexBertForMaskedLM or FlexBertModel); returns them."""
    layers = list(model.bert.encoder.layers)
    for layer in layers:
        layer._fsdp_wrap = True
        layer._activation_checkpointing = True
    return layers
