"""Loading a state dict into a model with a report that says exactly what does not fit.

torch's own error stops at the first size mismatch and mixes categories; a researcher pointing `load_path` at
the wrong file needs the whole picture: missing keys, unexpected keys and mis-shaped keys, each listed.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model; the message says which."""


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {i}" for i in items[:limit]) + more


def mismatch_message(source: str, missing: list[str], unexpected: list[str], misshaped: list[str], hint: str) -> str:
    """`source: the checkpoint's tensors do not fit the model`, then each non-empty list, then the hint."""
    parts = [f"{source}: the checkpoint's tensors do not fit the model"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            parts.append(_listing(title, items))
    parts.append(f"  {hint}")
    return "\n".join(parts)


def state_dict_mismatches(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], allow_missing: Iterable[str] = ()
) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    allowed = set(allow_missing)
    missing = sorted(k for k in expected if k not in state and k not in allowed)
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    return missing, unexpected, misshaped


def load_state_dict_checked(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, allow_missing: Iterable[str] = ()
) -> None:
    missing, unexpected, misshaped = state_dict_mismatches(model, state, allow_missing)
    if missing or unexpected or misshaped:
        raise CheckpointError(mismatch_message(source, missing, unexpected, misshaped,
                                               "check that model_config matches the checkpoint's architecture"))
    model.load_state_dict(state, strict=False)
