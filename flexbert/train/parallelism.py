"""What is applied to a built model before Composer's Trainer takes it, in this order -- model code itself runs on
one device and knows nothing of it:

1. FSDP units and activation-checkpointing marks (only with `fsdp_config`). Composer wraps, inside the root FSDP
   unit, every module marked `_fsdp_wrap = True`, and -- when `fsdp_config.activation_checkpointing` is on --
   checkpoints every module marked `_activation_checkpointing = True`. Without marks it would make the whole model
   one unit: all weights gathered at once, no overlap of communication with compute, nothing checkpointed. Each
   encoder layer is one unit (gathered just before it runs, freed after) and one checkpointed block; embeddings,
   final norm, head and decoder stay in the root unit (the decoder weight is tied to the token embeddings, and tied
   weights must live in one unit).
2. `model_config.compile_model`: each encoder layer is compiled on its own (dynamic shapes: packed batches change
   length every step), on CUDA only -- inductor's CPU path is not reliable on the machines this runs on. The loss
   and the packing metadata stay eager.
3. Inside Trainer(): Composer applies precision, then FSDP (or DDP) and activation checkpointing around the
   compiled layers.
"""

from __future__ import annotations

import warnings


import torch
import torch.nn as nn


def mark_fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Mark the encoder layers of a FlexBERT model (FlexBertForMaskedLM or FlexBertModel); returns them."""
    layers = list(model.bert.encoder.layers)
    for layer in layers:
        layer._fsdp_wrap = True
        layer._activation_checkpointing = True
    return layers


def compile_layers(model: nn.Module, backend: str = "inductor") -> bool:
    """Compile each encoder layer (CUDA only); returns whether it did.

    All layers share one forward, so the compiler keeps one graph per kind of layer (global / local window, with
    or without the first layer's skipped pre-norm) and per mode it runs in: training with gradients, the first pass
    of reentrant activation checkpointing (no gradients), evaluation. torch's default limit of 8 graphs per
    function is below that for ModernBERT (3 kinds x 3 modes), and past it a layer silently falls back to eager
    mode; the limit is raised to 4 graphs per kind."""
    if not torch.cuda.is_available():
        warnings.warn("model_config.compile_model is ignored on CPU (inductor's CPU path is not reliable here)")
        return False
    from torch._dynamo import config as dynamo_config

    layers = list(model.bert.encoder.layers)
    kinds = {(layer.attn.window is None, tuple(type(child).__name__ for child in layer.children())) for layer in layers}
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4 * len(kinds))
    for layer in layers:
        layer.compile(dynamic=True, backend=backend)
    return True


def prepare_model(model: nn.Module, cfg) -> None:
    """Steps 1 and 2 above for the run config `cfg` (the model is the Hugging Face module, not the Composer one),
    and `model.gradient_checkpointing` (layers recomputed in the backward pass without FSDP)."""
    if cfg.model.gradient_checkpointing:
        if cfg.fsdp_config:
            raise ValueError("model.gradient_checkpointing with fsdp_config: set fsdp_config.activation_checkpointing: "
                             "true instead (FSDP checkpoints the same layers)")
        model.gradient_checkpointing_enable()
    if cfg.fsdp_config:
        mark_fsdp_units(model)
    if model.config.compile_model:
        compile_layers(model)
