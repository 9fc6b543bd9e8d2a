"""Weight initialization schemes (`init_method`), in one place, keyed by module role.

Every Linear/Embedding of the model has one role:
- `embedding`: token and position embeddings;
- `in`:        input-side projections (Wqkv, Wqkvff, mlp.Wi, head.dense);
- `out`:       output-side projections that write into the residual stream (attn.Wo, mlp.Wo);
- `final_out`: the MLM decoder when it is not tied to the embeddings.
A scheme maps (role, fan_in, layer_id) -> std; weights are drawn from a normal truncated at
`init_cutoff_factor` std (no truncation when the factor is 0 or None). Biases are zero, norms one.

| scheme         | embedding   | in            | out                         | final_out |
|----------------|-------------|---------------|-----------------------------|-----------|
| default        | init_std    | init_std      | init_std                    | init_std  |
| normal         | init_std    | init_std      | init_std / sqrt(2 L)        | init_std  |
| mitchell       | 1/sqrt(H)   | 1/sqrt(fan_in)| 1/sqrt(2 fan_in (layer+1))  | 1/sqrt(H) |
| kaiming_normal | kaiming fan_in (gain for linear), no truncation                        |
| fan_in         | 1/sqrt(fan_in) everywhere                                              |
| full_megatron  | init_std    | init_std      | init_std / sqrt(2 L)        | H^-0.5    |

full_megatron is ModernBERT's. `init_small_embedding` draws embeddings from
U(-1e-4, 1e-4) instead (Small-Init Embedding).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from flexbert.model.registries import INITS

StdFn = Callable[[str, int, Optional[int], object], Optional[float]]  # (role, fan_in, layer_id, config) -> std


def _depth_scaled(config) -> float:
    return config.init_std / math.sqrt(2.0 * config.num_hidden_layers)


INITS.add("default", lambda role, fan_in, layer, c: c.init_std, "truncated normal with init_std everywhere (BERT)")
INITS.add(
    "normal",
    lambda role, fan_in, layer, c: _depth_scaled(c) if role == "out" else c.init_std,
    "truncated normal init_std; residual-writing projections scaled by 1/sqrt(2 * num_layers)",
)
INITS.add(
    "mitchell",
    lambda role, fan_in, layer, c: {
        "embedding": c.hidden_size**-0.5,
        "final_out": c.hidden_size**-0.5,
        "in": fan_in**-0.5,
        "out": (2.0 * fan_in * ((layer or 0) + 1)) ** -0.5,
    }[role],
    "OLMo's Mitchell init: 1/sqrt(fan_in), outputs scaled by depth 1/sqrt(2 (layer+1))",
)
INITS.add("kaiming_normal", lambda role, fan_in, layer, c: None, "torch kaiming_normal_ (fan_in, linear gain), untruncated")
INITS.add("fan_in", lambda role, fan_in, layer, c: fan_in**-0.5, "truncated normal with std 1/sqrt(fan_in)")
INITS.add(
    "full_megatron",
    lambda role, fan_in, layer, c: {
        "embedding": c.init_std,
        "in": c.init_std,
        "out": _depth_scaled(c),
        "final_out": c.hidden_size**-0.5,
    }[role],
    "Megatron: init_std, residual outputs init_std/sqrt(2L), untied decoder H^-0.5 (ModernBERT)",
)


def init_weight(weight: torch.Tensor, role: str, layer_id: Optional[int], config) -> None:
    if role == "embedding" and config.init_small_embedding:
        nn.init.uniform_(weight, -1e-4, 1e-4)
        return
    fan_in = weight.shape[1]
    std = INITS.get(config.init_method)(role, fan_in, layer_id, config)
    if std is None:
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="linear")
        return
    cutoff = config.init_cutoff_factor
    if cutoff:
        nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)
    else:
        nn.init.normal_(weight, mean=0.0, std=std)


def module_role(name: str) -> str:
    """Role of a Linear/Embedding from its parameter path (names are fixed by the checkpoint layout)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("tok_embeddings", "position_embeddings"):
        return "embedding"
    if leaf == "decoder":
        return "final_out"
    if leaf == "Wo":
        return "out"
    return "in"


def initialize(model: nn.Module, config) -> None:
    """Initialize every parameter of a FlexBERT model according to `config.init_method`."""
    with torch.no_grad():
        for name, module in model.named_modules():
            layer_id = _layer_index(name)
            if isinstance(module, nn.Embedding):
                init_weight(module.weight, module_role(name), layer_id, config)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.Linear):
                if module_role(name) == "final_out" and config.tie_word_embeddings:
                    pass  # the tied decoder weight is the embedding, already initialized
                else:
                    init_weight(module.weight, module_role(name), layer_id, config)
                if module.bias is not None:
                    module.bias.zero_()
            elif hasattr(module, "weight") and isinstance(getattr(module, "weight"), torch.nn.Parameter) and module.weight.dim() == 1:
                module.weight.fill_(1.0)  # norms
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def _layer_index(name: str) -> Optional[int]:
    parts = name.split(".")
    if "layers" in parts:
        idx = parts.index("layers")
        if idx + 1 < len(parts) and parts[idx + 1].isdigit():
            return int(parts[idx + 1])
    return None
