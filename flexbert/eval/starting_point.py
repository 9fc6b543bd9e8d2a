"""The pretrained model a fine-tuning run starts from: weights, architecture and tokenizer.

Sources: a Composer checkpoint of ours or of the released layout (weights `model.bert...`, architecture and
tokenizer embedded by Composer's HuggingFaceModel), or a Hugging Face ModernBERT folder. The classification
model takes the encoder (`bert.*`) and, when it has the same parameters, the MLM head (`head.*`, as
transformers does); `classifier` starts from its initialization and the MLM decoder is not used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from flexbert.checkpoints.loading import CheckpointError

log = logging.getLogger(__name__)


def load_tokenizer(spec, scratch: Path):
    """The eval file's tokenizer, else the one the starting checkpoint carries, else the HF folder's."""
    from flexbert.tokenizer_source import TokenizerSourceError, load_tokenizer

    if spec.tokenizer_name:
        name = spec.tokenizer_name
    elif spec.starting_point and Path(spec.starting_point).is_dir():
        name = spec.starting_point
    elif spec.starting_point:
        from flexbert.checkpoints.loading import huggingface_state, load_checkpoint_file
        from flexbert.checkpoints.embedded_tokenizer import EmbeddedTokenizerError, restore_embedded_tokenizer

        try:  # only allow-listed plain file names become files, never code
            tokenizer = restore_embedded_tokenizer(huggingface_state(load_checkpoint_file(spec.starting_point)),
                                                   str(scratch), spec.starting_point)
        except EmbeddedTokenizerError as err:
            raise CheckpointError(str(err)) from None
        if tokenizer is None:
            raise CheckpointError(f"{spec.starting_point}: carries no tokenizer; set `tokenizer_name`")
        return tokenizer
    else:
        raise CheckpointError("`tokenizer_name` is required when there is no starting checkpoint")
    try:
        return load_tokenizer(name)
    except TokenizerSourceError as err:
        raise CheckpointError(str(err)) from None


def pretrained_weights(spec, pad_token_id: int) -> tuple[Optional[dict[str, torch.Tensor]], dict[str, Any]]:
    """(FlexBERT-named state or None, model_config of the starting model or {})."""
    from flexbert.checkpoints.loading import read_model_weights

    if not spec.starting_point:
        return None, {}
    state, config = read_model_weights(spec.starting_point, pad_token_id=pad_token_id)
    if config is None:
        raise CheckpointError(f"{spec.starting_point}: has no embedded model config; give `model.model_config`")
    return state, config


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy the encoder (every `bert.*` tensor, required) and the head (all of `head.*` or none) into `model`;
    returns the names that kept their initialization."""
    from flexbert.checkpoints.loading import mismatch_message

    expected = model.state_dict()
    encoder = {k: v for k, v in state.items() if k.startswith("bert.")}
    missing = sorted(k for k in expected if k.startswith("bert.") and k not in encoder)
    unexpected = sorted(k for k in encoder if k not in expected)
    misshaped = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                       for k, v in encoder.items() if k in expected and v.shape != expected[k].shape)
    if missing or unexpected or misshaped:
        raise CheckpointError(mismatch_message(source, missing, unexpected, misshaped,
                                               "model_config overrides changed the encoder's architecture"))
    head_names = [k for k in expected if k.startswith("head.")]
    head = {k: state[k] for k in head_names if k in state and state[k].shape == expected[k].shape}
    chosen = dict(encoder)
    if head_names and len(head) == len(head_names):
        chosen.update(head)
    with torch.no_grad():
        model.load_state_dict(chosen, strict=False)
    fresh = sorted(k for k in expected if k not in chosen)
    log.info("%s: loaded %d tensors; initialized: %s", source, len(chosen), ", ".join(fresh))
    return fresh
