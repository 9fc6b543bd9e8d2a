"""Optimizer parameter groups: `filter_bias_norm_wd` exempts biases, norm weights and 1-D tensors from weight decay.

ModernBERT trains with no weight decay on biases and norms; the schema's `optimizer.filter_bias_norm_wd` turns it on.
The rule is optimi's `param_groups_weight_decay` (which built the released runs' groups) plus a name test, so a
norm weight is exempt even if it is not 1-D. Embeddings and the tied decoder weight are 2-D and decay.

Each group keeps its parameters' names under `param_names`, torch's own key for them (torch >= 2.6 carries it
through `Optimizer.state_dict()` / `load_state_dict()`): `optimizer.param_groups[i]["param_names"]`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["filter_bias_norm_wd", "is_no_decay"]

# A module path component that names a normalization layer: norm, attn_norm, final_norm, LayerNorm, ln_f, ...
_NORM_COMPONENT = re.compile(r"(^|_)(norm|layernorm|rmsnorm|ln(_\w+)?)$", re.IGNORECASE)


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True for biases, norm-layer parameters and every parameter with fewer than 2 dimensions."""
    if param.ndim <= 1 or name.endswith(".bias") or name == "bias":
        return True
    modules = name.split(".")[:-1]  # drop the attribute name ("weight")
    return any(_NORM_COMPONENT.search(part) for part in modules)


def filter_bias_norm_wd(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two torch param groups: `[{no-decay params, weight_decay: 0.0}, {the rest, weight_decay}]`.

    Frozen parameters (`requires_grad=False`) are left out; an empty group is dropped (torch's distributed
    checkpoint loader rejects more than one empty group). Group order matches optimi's helper.
    """
    no_decay: dict[str, list] = {"params": [], "param_names": []}
    decay: dict[str, list] = {"params": [], "param_names": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        target = no_decay if is_no_decay(name, param) else decay
        target["params"].append(param)
        target["param_names"].append(name)
    groups = [{**no_decay, "weight_decay": 0.0}, {**decay, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]
